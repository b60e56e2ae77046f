"""Python wrapper and gradient of the fused ``KerasMargin>CircleLoss`` op."""

from __future__ import annotations

import tensorflow as tf

from keras_margin.losses.checks import all_finite, nan_where_invalid
from keras_margin.losses.labels import signed_ids
from keras_margin.ops import _loader

_FLOAT_TYPES = (tf.float16, tf.bfloat16, tf.float32, tf.float64)


def _labels(labels: tf.Tensor | object) -> tf.Tensor:
    labels = tf.convert_to_tensor(labels)
    # Float labels are cast to int32 as keras.losses.circle casts them.
    labels = signed_ids(labels) if labels.dtype.is_integer else tf.cast(labels, tf.int32)
    return tf.reshape(labels, [-1])


def circle_loss(
    embeddings,
    labels,
    ref_embeddings=None,
    ref_labels=None,
    *,
    gamma: float,
    margin: float,
    remove_diagonal: bool,
    diagonal_offset=0,
) -> tf.Tensor:
    """Per-row Circle loss [N], identical in value and gradient to ``keras.losses.circle``.

    Args:
        embeddings: [N, D] float16, bfloat16, float32 or float64 embeddings (normally
            L2-normalised; no normalisation happens here, as in Keras).
        labels: [N] (or [N, 1]) integer labels. int32 and int64 are used as they are, other
            integer dtypes become int64 with distinct ids kept distinct (uint64 included),
            and float labels are cast to int32 like Keras does.
        ref_embeddings: optional [M, D] reference embeddings; defaults to ``embeddings``.
        ref_labels: optional [M] reference labels; defaults to ``labels``.
        gamma: scale, > 0.
        margin: relaxation margin.
        remove_diagonal: exclude the (i, i) pair from the positives (also with a
            reference set, as Keras does).
        diagonal_offset: a scalar int >= 0: with ``remove_diagonal``, row ``i`` excludes
            reference ``i + diagonal_offset`` instead, for anchors that are rows
            ``diagonal_offset, ...`` of the batch the reference set is aligned with (one
            replica's slice of a global batch). Must be 0 without a reference set.

    When both ``ref_embeddings`` and ``ref_labels`` are None the op runs in self-reference
    mode, which exploits the symmetry of the similarity matrix (about half the work).

    Raises:
        keras_margin.ops.CustomOpUnavailableError: the compiled op is not usable;
            see ``custom_op_unavailable_reason()``.
    """
    lib = _loader.load_library()
    x = tf.convert_to_tensor(embeddings)
    if x.dtype not in _FLOAT_TYPES:
        raise TypeError(f"embeddings must be float16, bfloat16, float32 or float64, got {x.dtype}")
    labels = _labels(labels)
    self_reference = ref_embeddings is None and ref_labels is None
    ref = x if ref_embeddings is None else tf.convert_to_tensor(ref_embeddings, dtype=x.dtype)
    ref_labels = labels if ref_labels is None else _labels(ref_labels)
    if labels.dtype != ref_labels.dtype:
        labels = tf.cast(labels, tf.int64)
        ref_labels = tf.cast(ref_labels, tf.int64)
    loss, _, _ = lib.keras_margin_circle_loss(
        x,
        labels,
        ref,
        ref_labels,
        tf.cast(diagonal_offset, tf.int64),
        gamma=_double_attr(gamma),
        margin=_double_attr(margin),
        remove_diagonal=bool(remove_diagonal),
        self_reference=self_reference,
        Tstate=tf.float64 if x.dtype == tf.float64 else tf.float32,
    )
    # The kernel's max-shifted sums would drop a NaN embedding; every row pairs with it.
    return nan_where_invalid(loss, all_finite(x, None if self_reference else ref))


def _double_attr(value: float) -> str:
    # The op takes gamma and margin as text: repr gives the shortest decimal that reads back as
    # the same double, where a float attribute would round float64 hyper-parameters to float32.
    return repr(float(value))


def _circle_loss_grad(op, grad_loss, _grad_lse_pos, _grad_lse_neg):
    # The log-sum-exp outputs are saved state for this gradient, not differentiable outputs.
    lib = _loader.load_library()
    grad_x, grad_ref = lib.keras_margin_circle_loss_grad(
        grad_loss,
        *op.inputs,
        op.outputs[1],
        op.outputs[2],
        gamma=op.get_attr("gamma"),
        margin=op.get_attr("margin"),
        remove_diagonal=op.get_attr("remove_diagonal"),
        self_reference=op.get_attr("self_reference"),
    )
    return [grad_x, None, grad_ref, None, None]


_gradient_registered = False


def register_gradient() -> None:
    """Registers the op's gradient with TensorFlow once per process."""
    global _gradient_registered
    if not _gradient_registered:
        tf.RegisterGradient("KerasMargin>CircleLoss")(_circle_loss_grad)
        _gradient_registered = True
