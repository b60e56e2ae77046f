"""Weighting, masking and reduction of per-sample losses, numerically identical to Keras 3.

Keras's ``Loss.__call__`` reduces with private helpers whose exact arithmetic (mask rescaling,
divide-no-nan, the 1/replicas scale under ``tf.distribute``) defines the values users see.
keras_margin owns that step so that it can keep integer labels out of the float dtype while
producing the same numbers, and so that distributed reductions can be extended in one place.
"""

from keras import ops

from keras_margin.distribute import multi_replica_context, replica_share, replicas_in_sync

REDUCTIONS = ("sum", "sum_over_batch_size", "mean", "mean_with_sample_weight", "none", None)


def validate_reduction(reduction):
    """Returns ``reduction`` if Keras supports it, else raises Keras's ``ValueError``.

    The wording is Keras's own, which code written against ``keras.losses`` (Keras's test suite
    included) matches on.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(
            f"Invalid value for argument `reduction`. Expected one of {REDUCTIONS}. "
            f"Received: reduction={reduction!r}"
        )
    return reduction


def match_rank(x, y):
    """Squeezes or expands a trailing unit axis so that ``x`` and ``y`` have the same rank.

    Mirrors the rule Keras applies between labels and predictions (and between losses and
    sample weights): only a rank difference of exactly one is resolved, and only across a
    trailing axis of size 1. A rank-1 tensor is expanded rather than its partner squeezed.
    """
    x_rank, y_rank = len(x.shape), len(y.shape)
    if x_rank == y_rank + 1 and x.shape[-1] == 1:
        if y_rank == 1:
            return x, ops.expand_dims(y, -1)
        return ops.squeeze(x, -1), y
    if y_rank == x_rank + 1 and y.shape[-1] == 1:
        if x_rank == 1:
            return ops.expand_dims(x, -1), y
        return x, ops.squeeze(y, -1)
    return x, y


def _element_count(values, dtype):
    return ops.cast(ops.prod(ops.convert_to_tensor(ops.shape(values), dtype="int32")), dtype)


def _mask_as_weights(mask, reduction, dtype, rescale):
    """Turns a boolean mask into weights.

    With ``rescale`` (Keras's way), mean reductions weight valid entries by total/valid, so
    that dividing by the element count averages over the valid entries only.
    """
    if rescale and reduction in ("sum_over_batch_size", "mean"):
        valid = ops.sum(ops.cast(mask, dtype))
        scale = ops.divide_no_nan(_element_count(mask, dtype), valid)
        return ops.where(ops.cast(mask, "bool"), scale, ops.zeros((), dtype))
    return ops.cast(mask, dtype)


def _scale_for_replicas(value):
    """Divides by the replica count, as Keras does, so summed replica gradients average."""
    replicas = replicas_in_sync()
    if replicas > 1:
        value = value * ops.cast(1.0 / replicas, value.dtype)
    return value


def reduce_losses(values, sample_weight=None, mask=None, reduction="sum_over_batch_size"):
    """Applies ``mask`` and ``sample_weight`` to per-sample ``values`` and reduces them.

    Args:
        values: Per-sample losses, already in the loss dtype.
        sample_weight: Optional weights, broadcastable to ``values`` after rank matching.
        mask: Optional boolean mask of valid entries (a Keras mask).
        reduction: One of ``REDUCTIONS``.

    Inside a ``tf.distribute`` replica context with several replicas, the mean reductions
    divide this replica's sum by the global count (elements, valid entries, or sum of
    weights), so that the replicas' summed gradients are the single-device ones, uneven
    batches included; ``replica_share`` makes the reported loss the single-device one too.

    Returns:
        The reduced loss, or the weighted per-sample losses for ``"none"``/``None``.
    """
    dtype = values.dtype
    context = multi_replica_context()
    if sample_weight is not None:
        sample_weight = ops.convert_to_tensor(sample_weight, dtype=dtype)
    if mask is not None:
        mask_weights = _mask_as_weights(mask, reduction, dtype, rescale=context is None)
        if sample_weight is None:
            sample_weight = mask_weights
        else:
            mask_weights, sample_weight = match_rank(mask_weights, sample_weight)
            sample_weight = sample_weight * mask_weights
    if sample_weight is not None:
        values, sample_weight = match_rank(values, sample_weight)
        values = values * sample_weight

    # An empty batch reduces to 0 (Keras 3.15 returns the empty per-sample tensor, which is no
    # scalar loss); under several replicas an empty slice must also join the sums below.
    if reduction in (None, "none") or tuple(values.shape) == ():
        return values
    total = ops.sum(values)
    if reduction == "sum":
        divisor = None
    elif reduction == "mean_with_sample_weight" and sample_weight is not None:
        divisor = ops.cast(ops.sum(sample_weight), dtype)
    elif context is not None and mask is not None:
        divisor = ops.sum(ops.cast(mask, dtype))
    else:
        divisor = _element_count(values, dtype)
    if context is not None:
        return replica_share(context, total, divisor, ops.shape(values)[0])
    if divisor is None:
        return total
    return _scale_for_replicas(ops.divide_no_nan(total, divisor))
