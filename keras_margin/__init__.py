"""keras_margin: maximum-margin and metric-learning losses for Keras 3.

Importing the package registers every loss for ``.keras`` serialization and as
``"keras_margin>Name"`` strings for ``model.compile``.
"""

import importlib

from keras_margin import losses
from keras_margin.registry import restore_builtin_names, use_builtin_names

__version__ = "0.1.0"

__all__ = ["export", "losses", "ops", "restore_builtin_names", "use_builtin_names"]


def __getattr__(name):
    # The TensorFlow-only modules are imported on first use, so that importing the package
    # neither loads the op library nor, on the JAX and PyTorch backends, imports TensorFlow.
    if name in ("export", "ops"):
        return importlib.import_module(f"keras_margin.{name}")
    raise AttributeError(f"module 'keras_margin' has no attribute {name!r}")
