"""Input checks that name the argument at fault and say what was expected.

Shapes and dtypes are checked when a loss is traced, as ``ValueError`` or ``TypeError``, with
the same message on every backend. Label values can only be checked when the loss runs: on
TensorFlow (eagerly and under ``tf.function``) a bad value raises
``tf.errors.InvalidArgumentError`` before any op reads it; on PyTorch and on JAX outside
``jax.jit`` it raises ``ValueError``. XLA has no way to raise at run time, so under
``jit_compile`` and ``jax.jit`` the rows with a bad label get a NaN loss instead: loud in every
training log, never a silently wrong number. The backend-specific parts are in
``keras_margin.backend.runtime()``.
"""

import keras
from keras import ops

from keras_margin import backend


def require_float(x, name):
    dtype = keras.backend.standardize_dtype(x.dtype)
    if "float" not in dtype:
        raise TypeError(f"Argument `{name}` must have a floating-point dtype; received {dtype}.")


def require_rank(x, name, rank, layout):
    if len(x.shape) != rank:
        raise ValueError(
            f"Argument `{name}` must have rank {rank}, {layout}; received shape {x.shape}."
        )


def require_columns(x, name):
    if x.shape[-1] == 0:
        raise ValueError(f"Argument `{name}` must have at least one column; received {x.shape}.")


def require_same_size(a, a_name, b, b_name, axis=0, what="rows"):
    """Checks that ``a`` and ``b`` have the same size along ``axis``; returns ``b``.

    Sizes unknown while tracing (TensorFlow only) are compared when the loss runs, and ``b`` is
    returned gated on that comparison, so that no op reads mismatched tensors first and fails
    with a vaguer error.
    """
    size_a, size_b = a.shape[axis], b.shape[axis]
    message = f"Arguments `{a_name}` and `{b_name}` must have the same number of {what}"
    if size_a is not None and size_b is not None:
        if size_a != size_b:
            raise ValueError(f"{message}; received {size_a} and {size_b}.")
        return b
    return backend.runtime().assert_same_size(a, b, axis, message)


def _conflict(size_a, size_b):
    """Whether two sizes of one axis cannot broadcast (an unknown size can)."""
    return None not in (size_a, size_b) and size_a != size_b and 1 not in (size_a, size_b)


def require_broadcastable(a, a_name, b, b_name):
    """Checks, as far as the static shapes tell, that ``a`` and ``b`` broadcast together."""
    sizes = zip(reversed(tuple(a.shape)), reversed(tuple(b.shape)), strict=False)
    if any(_conflict(x, y) for x, y in sizes):
        raise ValueError(
            f"Arguments `{a_name}` and `{b_name}` must have broadcastable shapes; "
            f"received {a.shape} and {b.shape}."
        )


def has_known_rank(x):
    """False only for a TensorFlow tensor of unknown static rank."""
    return getattr(x.shape, "rank", 0) is not None


def with_known_rank(labels, name, y_pred, y_pred_name):
    """``labels`` reshaped to one per row of ``y_pred`` (all axes but the last) if their static
    rank is unknown.

    ``tf.function(reduce_retracing=True)``, which Keras's TensorFlow train step uses, relaxes
    labels to an unknown rank once it has seen both (N,) and (N, 1). Their size is checked
    when the loss runs.
    """
    if has_known_rank(labels):
        return labels
    message = f"Argument `{name}` must hold one class id per row of `{y_pred_name}`"
    return backend.runtime().reshape_to_rows(labels, y_pred, message)


def guard(valid, message, tensor):
    """Returns ``tensor``, first raising ``message`` if not all ``valid`` where the backend can
    raise at run time (see the module docstring).

    ``valid`` may be None (nothing to check) or a boolean tensor of any shape.
    """
    if valid is None:
        return tensor
    return backend.runtime().assert_all(valid, message, tensor)


def to_tensor(x):
    """``x`` as a tensor of the active backend, never a variable."""
    return backend.runtime().to_tensor(x)


def all_finite(*tensors):
    """A scalar bool tensor: whether every entry of the given tensors (None skipped) is finite."""
    checks = [ops.all(ops.isfinite(tensor)) for tensor in tensors if tensor is not None]
    return checks[0] if len(checks) == 1 else ops.all(ops.stack(checks))


def nan_where_invalid(losses, valid):
    """Replaces the losses where ``valid`` is False by NaN; ``valid`` may be None (all are)."""
    if valid is None:
        return losses
    return ops.where(valid, losses, ops.cast(float("nan"), losses.dtype))
