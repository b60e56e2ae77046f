"""Values and gradients of a loss on the active Keras backend, eagerly and compiled.

The backend tests run on TensorFlow (in the main run) and on JAX and PyTorch (each in its own
process, with ``KERAS_BACKEND`` set). This module is the only place where they differ: how a
gradient is taken (``tf.GradientTape``, ``jax.grad``, torch autograd) and how a function is
compiled (``tf.function(jit_compile=True)``, ``jax.jit``, ``torch.compile(fullgraph=True)``:
one graph, no break, or the call fails).
"""

import keras
import numpy as np

BACKEND = keras.backend.backend()
MODES = ["eager", "jit"]
# Circle's implementations that run on this backend; "fused" is TensorFlow's op or the blocked
# path of JAX or PyTorch.
CIRCLE_IMPLEMENTATIONS = ["composite", "fused"]


def tensor(x):
    return keras.ops.convert_to_tensor(x)


def numpy(x):
    return keras.ops.convert_to_numpy(x)


def compiled(fn):
    """``fn`` under ``torch.compile`` as one graph: any graph break raises. Dynamo's caches are
    cleared first, so that earlier cases count towards no recompilation limit.

    An error that ``fn`` raises while it is traced (a shape or dtype error, raised when the
    loss is traced on every backend) reaches the caller as itself, as it does under Keras's
    ``jit_compile=True`` (``torch.compile`` without ``fullgraph``), not as dynamo's
    ``Unsupported``."""
    import torch

    torch._dynamo.reset()
    graph = torch.compile(fn, fullgraph=True)

    def call(*args):
        try:
            return graph(*args)
        except torch._dynamo.exc.Unsupported as error:
            if not str(error).startswith("Observed exception"):
                raise
        torch._dynamo.reset()
        return torch.compile(fn)(*args)

    return call


def evaluate(fn, mode, *args):
    """``fn(*args)`` as NumPy, every argument a backend tensor (traced under ``jit``)."""
    args = [tensor(a) for a in args]
    if mode == "eager":
        return numpy(fn(*args))
    if BACKEND == "jax":
        import jax

        return numpy(jax.jit(fn)(*args))
    if BACKEND == "torch":
        return numpy(compiled(fn)(*args))
    import tensorflow as tf

    return numpy(tf.function(fn, jit_compile=True)(*args))


def value_and_gradient(fn, mode, x, *args, cotangent=None):
    """``fn(x, *args)`` and the gradient of ``sum(fn(x, *args) * cotangent)`` with respect to
    ``x`` (a float array), both as NumPy. ``cotangent`` defaults to ones."""
    args = [tensor(a) for a in args]
    x = np.asarray(x)

    def weighted(value):
        if cotangent is None:
            return keras.ops.sum(value)
        return keras.ops.sum(value * keras.ops.cast(tensor(cotangent), value.dtype))

    if BACKEND == "jax":
        import jax

        def both(x, *args):
            value = fn(x, *args)
            return weighted(value), value

        step = jax.value_and_grad(both, has_aux=True)
        if mode == "jit":
            step = jax.jit(step)
        (_, value), grad = step(tensor(x), *args)
        return numpy(value), numpy(grad)
    if BACKEND == "torch":
        import torch

        x = torch.tensor(x, requires_grad=True)
        value = (fn if mode == "eager" else compiled(fn))(x, *args)
        weighted(value).backward()
        return numpy(value.detach()), x.grad.numpy()
    import tensorflow as tf

    def step(x, *args):
        with tf.GradientTape() as tape:
            tape.watch(x)
            value = fn(x, *args)
            total = weighted(value)
        return value, tape.gradient(total, x)

    if mode == "jit":
        step = tf.function(step, jit_compile=True)
    value, grad = step(tf.constant(x), *args)
    return numpy(value), numpy(grad)
