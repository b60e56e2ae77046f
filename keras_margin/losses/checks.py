"""Input checks that name the argument at fault and say what was expected.

Shapes and dtypes are checked when a loss is traced, as ``ValueError`` or ``TypeError``.
Label values can only be checked when the loss runs: eagerly and under ``tf.function`` a bad
value raises ``tf.errors.InvalidArgumentError`` before any op reads it. XLA has no way to
raise at run time and drops assertions, so under ``jit_compile`` the rows with a bad label get
a NaN loss instead: loud in every training log, never a silently wrong number.
"""

import keras
import tensorflow as tf
from keras import ops


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

    Unknown static sizes are compared when the loss runs, and ``b`` is returned gated on that
    comparison, so that no op reads mismatched tensors first and fails with a vaguer error.
    """
    size_a, size_b = a.shape[axis], b.shape[axis]
    message = f"Arguments `{a_name}` and `{b_name}` must have the same number of {what}"
    if size_a is not None and size_b is not None:
        if size_a != size_b:
            raise ValueError(f"{message}; received {size_a} and {size_b}.")
        return b
    check = tf.debugging.assert_equal(tf.shape(a)[axis], tf.shape(b)[axis], message=message)
    with tf.control_dependencies([check]):
        return tf.identity(b)


def require_broadcastable(a, a_name, b, b_name):
    try:
        tf.broadcast_static_shape(tf.TensorShape(a.shape), tf.TensorShape(b.shape))
    except ValueError:
        raise ValueError(
            f"Arguments `{a_name}` and `{b_name}` must have broadcastable shapes; "
            f"received {a.shape} and {b.shape}."
        ) from None


def with_known_rank(labels, name, y_pred, y_pred_name):
    """``labels`` reshaped to one per row of ``y_pred`` (all axes but the last) if their static
    rank is unknown.

    ``tf.function(reduce_retracing=True)``, which Keras's train step uses, relaxes labels to
    an unknown rank once it has seen both (N,) and (N, 1). Their size is checked when the
    loss runs.
    """
    if labels.shape.rank is not None:
        return labels
    rows = tf.shape(y_pred)[:-1]
    flat = tf.reshape(labels, [-1])
    check = tf.debugging.assert_equal(
        tf.size(flat, out_type=rows.dtype),
        tf.reduce_prod(rows),
        message=f"Argument `{name}` must hold one class id per row of `{y_pred_name}`",
    )
    with tf.control_dependencies([check]):
        return tf.reshape(flat, rows)


def guard(valid, message, tensor):
    """Returns ``tensor``, first raising ``InvalidArgumentError(message)`` if not all ``valid``.

    ``valid`` may be None (nothing to check) or a boolean tensor of any shape.
    """
    if valid is None:
        return tensor
    check = tf.debugging.Assert(ops.all(valid), [message])
    with tf.control_dependencies([check]):
        return tf.identity(tensor)


def all_finite(*tensors):
    """A scalar bool tensor: whether every entry of the given tensors (None skipped) is finite."""
    checks = [ops.all(ops.isfinite(tensor)) for tensor in tensors if tensor is not None]
    return checks[0] if len(checks) == 1 else ops.all(ops.stack(checks))


def nan_where_invalid(losses, valid):
    """Replaces the losses where ``valid`` is False by NaN; ``valid`` may be None (all are)."""
    if valid is None:
        return losses
    return ops.where(valid, losses, ops.cast(float("nan"), losses.dtype))
