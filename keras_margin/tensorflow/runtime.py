"""What the losses need beyond ``keras.ops`` on the TensorFlow backend.

In a ``tf.function`` a static size or rank can be unknown, and a bad label value is only seen
when the graph runs. These checks become graph assertions that raise
``tf.errors.InvalidArgumentError`` before any op reads the checked tensor. XLA drops
assertions, so under ``jit_compile`` the losses' NaN rows are what reports a bad value.
"""

import tensorflow as tf
from keras import ops


def assert_all(valid, message, tensor):
    """Returns ``tensor``, first raising ``InvalidArgumentError(message)`` if not all ``valid``."""
    check = tf.debugging.Assert(ops.all(valid), [message])
    with tf.control_dependencies([check]):
        return tf.identity(tensor)


def assert_same_size(a, b, axis, message):
    """Returns ``b``, gated on ``a`` and ``b`` having the same size along ``axis``."""
    check = tf.debugging.assert_equal(tf.shape(a)[axis], tf.shape(b)[axis], message=message)
    with tf.control_dependencies([check]):
        return tf.identity(b)


def reshape_to_rows(labels, y_pred, message):
    """``labels`` of unknown rank reshaped to the rows of ``y_pred`` (all axes but the last),
    checking first that they hold one entry per row."""
    rows = tf.shape(y_pred)[:-1]
    flat = tf.reshape(labels, [-1])
    check = tf.debugging.assert_equal(
        tf.size(flat, out_type=rows.dtype), tf.reduce_prod(rows), message=message
    )
    with tf.control_dependencies([check]):
        return tf.reshape(flat, rows)


def to_tensor(x):
    """``x`` as a tensor, a ``tf.Variable`` included: ``keras.ops.convert_to_tensor`` passes
    variables through, and ``keras.ops.take_along_axis`` then fails on them."""
    return tf.convert_to_tensor(x)


def index_dtype():
    """The widest integer type of the backend's tensors."""
    return "int64"
