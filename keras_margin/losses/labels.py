"""Label conversions shared by the losses."""

import keras
from keras import ops


def class_ids(labels, name="y_true"):
    """Returns integer class ids, never routed through a float dtype.

    Integer labels keep their dtype. Float labels (which Keras accepts) are truncated straight to
    int64, so an id such as 257 cannot be rounded by a bfloat16 loss dtype on the way.

    Args:
        labels: Integer (or integral float) class ids.
        name: Argument name used in error messages.
    """
    labels = ops.convert_to_tensor(labels)
    dtype = keras.backend.standardize_dtype(labels.dtype)
    if dtype == "bool" or "complex" in dtype or dtype == "string":
        raise TypeError(f"Argument `{name}` must hold integer class ids; received dtype {dtype}.")
    if "int" not in dtype:
        labels = ops.cast(labels, "int64")
    return labels


def squeeze_class_axis(labels, y_pred):
    """Drops a trailing unit axis from sparse labels that have the rank of the predictions.

    Labels of shape ``(N, 1)`` against predictions ``(N, C)`` are one id per row; Keras 3.15's
    GCE treats them as ``N`` ids per row and broadcasts to ``N x N`` instead.
    """
    if len(labels.shape) == len(y_pred.shape) and labels.shape[-1] == 1:
        return ops.squeeze(labels, -1)
    return labels
