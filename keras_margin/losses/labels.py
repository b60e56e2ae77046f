"""Label conversions shared by the losses."""

import keras
import numpy as np
from keras import ops

from keras_margin import backend
from keras_margin.losses.checks import with_known_rank


def _host_integers(labels):
    """``labels`` as a NumPy integer array if they are integers still on the host (a NumPy
    array or scalar, a Python int, a list of them), else None."""
    if isinstance(labels, (list, tuple)):
        if not all(isinstance(v, (int, np.generic)) for v in keras.tree.flatten(labels)):
            return None
    elif not isinstance(labels, (np.ndarray, np.generic, int)):
        return None
    values = np.asarray(labels)
    return values if values.dtype.kind in "iu" else None


def _require_ids_fit(values, name):
    """Raises if the backend would narrow the integer ``values`` onto each other.

    JAX without ``jax_enable_x64`` has no 64-bit integers: it converts int64 and uint64 arrays
    to int32 and uint32, keeping the low 32 bits, which merges ids 2**32 apart.
    """
    bits = np.iinfo(backend.runtime().index_dtype()).bits
    if values.dtype.itemsize * 8 <= bits or values.size == 0:
        return
    stored = np.iinfo(f"{'u' if values.dtype.kind == 'u' else ''}int{bits}")
    low, high = values.min(), values.max()
    if low < stored.min or high > stored.max:
        raise ValueError(
            f"Argument `{name}` must hold class ids that fit {stored.dtype} ({stored.min} to "
            f"{stored.max}) on this backend: JAX without `jax_enable_x64` has no 64-bit "
            f"integers and would merge ids that differ by a multiple of 2**{bits}. Enable it "
            '(`jax.config.update("jax_enable_x64", True)` before creating any array) or map the '
            "ids to a dense range (for example `numpy.unique(ids, return_inverse=True)[1]`); "
            f"received ids from {low} to {high}."
        )


def class_id_tensor(labels, name):
    """``labels`` as a tensor, host integer ids first checked to stay distinct in it.

    Only ids still on the host can be checked: an array JAX has converted (in ``fit``, under
    ``jax.jit``) is int32 already. Python ints become NumPy's int64, as on every backend.
    """
    values = _host_integers(labels)
    if values is not None:
        _require_ids_fit(values, name)
        labels = values
    return ops.convert_to_tensor(labels)


def signed_ids(labels):
    """Integer ``labels`` as int32 or int64, every two distinct ids still distinct.

    Unsigned ids are widened to int64, except uint64, which is reinterpreted bit for bit: a
    one-to-one map, under which ids of 2**63 and more become negative (invalid GCE classes,
    still distinct Circle classes). Keras compares uint64 through uint32, merging ids 2**32
    apart. On JAX without ``jax_enable_x64``, which has no 64-bit integers, int32 takes the
    place of int64 (uint32 ids are then reinterpreted bit for bit, still one-to-one).
    """
    dtype = keras.backend.standardize_dtype(labels.dtype)
    if dtype == "uint64":
        return ops.view(labels, "int64")
    if dtype.startswith("uint") or dtype in ("int8", "int16"):
        return ops.cast(labels, backend.runtime().index_dtype())
    return labels


def class_ids(labels, name="y_true"):
    """Integer class ids from ``labels``, and which of them are valid (None if all are).

    Integer labels are used as they are, int64 included, so that no id wraps around; other
    integer dtypes become int64 (see ``signed_ids``). Ids still on the host that the backend
    cannot hold apart (beyond int32 on JAX without ``jax_enable_x64``) raise. Float
    labels, which Keras accepts, must hold whole numbers: they are converted straight to int64,
    never through the loss's float dtype (which could round an id such as 257 in bfloat16),
    and a fractional or non-finite one is marked invalid.

    Args:
        labels: Integer (or whole-valued float) class ids.
        name: Argument name used in error messages.
    """
    labels = class_id_tensor(labels, name)
    dtype = keras.backend.standardize_dtype(labels.dtype)
    if "int" in dtype:
        return signed_ids(labels), None
    if "float" not in dtype:
        raise TypeError(f"Argument `{name}` must hold integer class ids; received dtype {dtype}.")
    whole = ops.logical_and(ops.isfinite(labels), ops.equal(labels, ops.floor(labels)))
    safe = ops.where(whole, labels, ops.zeros_like(labels))
    return ops.cast(safe, backend.runtime().index_dtype()), whole


def squeeze_class_axis(labels, y_pred):
    """Drops a trailing unit axis from sparse labels that have the rank of the predictions.

    Labels of shape ``(N, 1)`` against predictions ``(N, C)`` are one id per row; Keras 3.15's
    GCE treats them as ``N`` ids per row and broadcasts to ``N x N`` instead.
    """
    if len(labels.shape) == len(y_pred.shape) and labels.shape[-1] == 1:
        return ops.squeeze(labels, -1)
    return labels


def class_ids_per_row(labels, name, y_pred, y_pred_name):
    """``class_ids`` shaped as one id per row of ``y_pred``, with their validity shaped alike.

    Labels of unknown static rank are reshaped to the rows of ``y_pred`` (all its axes but the
    last) and a trailing unit axis is dropped; the caller checks what remains.
    """
    labels, whole = class_ids(labels, name)

    def per_row(tensor):
        return squeeze_class_axis(with_known_rank(tensor, name, y_pred, y_pred_name), y_pred)

    return per_row(labels), None if whole is None else per_row(whole)
