"""The one place that asks which Keras backend is active.

The losses are written against ``keras.ops``. What ``keras.ops`` cannot express the same way
on every backend (raising on a bad value at run time, sizes unknown while tracing, the widest
integer type) lives in a runtime module per backend, and ``runtime()`` picks it. TensorFlow,
JAX and PyTorch are imported only by those modules and by their backends' folders
(``keras_margin.tensorflow``, ``keras_margin.ops``, ``keras_margin.jax``,
``keras_margin.torch``), so ``import keras_margin`` on JAX or PyTorch never imports
TensorFlow.
"""

import importlib

import keras


def name():
    """The active Keras backend: ``"tensorflow"``, ``"jax"``, ``"torch"`` or ``"numpy"``."""
    return keras.backend.backend()


def is_tensorflow():
    return name() == "tensorflow"


# TensorFlow and JAX trace without concrete values, and PyTorch compiles under
# `torch.compile`, so each needs its own runtime; NumPy computes eagerly.
_RUNTIMES = {
    "tensorflow": "keras_margin.tensorflow.runtime",
    "jax": "keras_margin.jax.runtime",
    "torch": "keras_margin.torch.runtime",
}

# Imported here rather than on first use: the first use is often inside a user's tf.function,
# where AutoGraph converts `importlib.import_module` and logs a warning into their program for
# the import machinery it cannot convert. Keras fixes its backend when it is imported, and the
# active backend's module needs only that backend, which Keras has already imported.
_runtime = importlib.import_module(_RUNTIMES.get(name(), "keras_margin.eager_runtime"))


def runtime():
    """The runtime module of the active backend; ``keras_margin.eager_runtime`` lists its
    functions."""
    return _runtime
