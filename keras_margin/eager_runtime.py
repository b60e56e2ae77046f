"""What the losses need beyond ``keras.ops`` on a backend that computes eagerly (NumPy, and
PyTorch outside ``torch.compile``), and the functions every backend's runtime module has.

On an eager backend every static shape is known, so ``assert_same_size`` and
``reshape_to_rows``, which exist for TensorFlow's graphs, are never reached.
"""

from keras import ops


def assert_all(valid, message, tensor):
    """Returns ``tensor``, first raising ``ValueError(message)`` if not all of ``valid``."""
    if not bool(ops.all(valid)):
        raise ValueError(f"{message}.")
    return tensor


def assert_same_size(a, b, axis, message):
    """Returns ``b``, gated on ``a`` and ``b`` having the same size along ``axis``."""
    raise AssertionError("an eager backend has no unknown sizes")


def reshape_to_rows(labels, y_pred, message):
    """``labels`` of unknown rank reshaped to the rows of ``y_pred``, checked to fit."""
    raise AssertionError("an eager backend has no unknown ranks")


def to_tensor(x):
    """``x`` as a tensor of the backend, never a variable."""
    return ops.convert_to_tensor(x)


def index_dtype():
    """The widest integer type of the backend's tensors."""
    return "int64"
