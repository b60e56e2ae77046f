"""Generalized cross entropy (Zhang & Sabuncu, 2018) for noisy labels."""

import keras
from keras import ops

from keras_margin.losses.base import REDUCTION_DOC, ClassIdLoss, validate_bool, validate_finite
from keras_margin.losses.checks import (
    guard,
    nan_where_invalid,
    require_float,
    require_same_size,
    to_tensor,
)
from keras_margin.losses.labels import class_ids_per_row
from keras_margin.registry import export_loss

# Where the true-class probability is below this floor, the gradient is taken at the floor:
# Keras's -p**(q - 1) is infinite at p = 0. float16 cannot hold 1e-7 as a normal number, and
# 1/1e-7 overflows it, so it gets its smallest normal number instead.
_PROBABILITY_FLOOR = 1e-7
_FLOAT16_PROBABILITY_FLOOR = 2.0**-14


# Smaller q is cross-entropy for every practical purpose, and far smaller would round to 0 in
# float16 (below 2**-25) and make the loss (1 - p**0) / 0 = NaN.
MIN_Q = 0.001


def validate_q(q):
    """Returns ``q`` if it is a finite number in [MIN_Q, 1), else raises."""
    q = validate_finite("q", q)
    if not MIN_Q <= q < 1:
        raise ValueError(f"Argument `q` must be in [{MIN_Q:g}, 1); received q={q!r}.")
    return q


def _probability_floor(dtype):
    if keras.backend.standardize_dtype(dtype) == "float16":
        return _FLOAT16_PROBABILITY_FLOOR
    return _PROBABILITY_FLOOR


def _checked_labels(y_true, y_pred):
    """Class ids with one per row of ``y_pred``, and which are valid ids of its columns."""
    labels, whole = class_ids_per_row(y_true, "y_true", y_pred, "y_pred")
    rows = y_pred.shape[:-1]
    if len(y_pred.shape) < 1 or len(labels.shape) != len(rows):
        raise ValueError(
            f"Argument `y_true` must hold one class id per row of `y_pred` {y_pred.shape}, shape "
            f"{rows} or {rows + (1,)}; received shape {y_true.shape}."
        )
    for axis in range(len(rows)):
        what = "rows" if axis == 0 else f"entries on axis {axis}"
        labels = require_same_size(y_pred, "y_pred", labels, "y_true", axis, what)
    num_classes = y_pred.shape[-1] or ops.shape(y_pred)[-1]
    valid = ops.logical_and(labels >= 0, labels < ops.cast(num_classes, labels.dtype))
    if whole is not None:
        valid = ops.logical_and(valid, whole)
    columns = y_pred.shape[-1] if y_pred.shape[-1] is not None else "the columns of `y_pred`"
    message = f"Argument `y_true` must hold whole-number class ids in [0, {columns})"
    return guard(valid, message, labels), valid


@ops.custom_gradient
def _true_class_entry(y_pred, labels):
    """Gathers ``y_pred[..., labels]``; its gradient is one dense one-hot product.

    A gather reads one entry per row where Keras's one-hot product reads all of them. Its
    default gradient (a scatter of the gathered slices) is several times slower than the
    forward pass it saves, so the gradient is written out directly.
    """

    def grad(*args, upstream=None):
        if upstream is None:
            (upstream,) = args
        # A select, not one_hot * upstream: with an empty batch, TF 2.21's grappler rewrites
        # that product (ReplaceMulWithBroadcastByTile) and divides by zero, killing the process.
        is_label = ops.one_hot(labels, ops.shape(y_pred)[-1], dtype="bool")
        return ops.where(is_label, ops.expand_dims(upstream, -1), ops.zeros((), y_pred.dtype)), None

    picked = ops.take_along_axis(y_pred, ops.expand_dims(labels, -1), axis=-1)
    return ops.squeeze(picked, -1), grad


def _gce_of_probability(p, q):
    """``(1 - p**q) / q``, Keras's exact value, with a gradient that is finite at ``p = 0``.

    The value is never floored, so a row with ``p = 0`` gives Keras's ``1 / q``; only the
    derivative ``-p**(q - 1)`` is taken at the floor for ``p`` in [0, floor). A negative or NaN
    probability gives NaN, in the value and the gradient.
    """
    floor = ops.convert_to_tensor(_probability_floor(p.dtype), dtype=p.dtype)

    @ops.custom_gradient
    def gce(p):
        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            tiny = ops.logical_and(p >= 0, p < floor)
            return -upstream * ops.power(ops.where(tiny, floor, p), q - 1.0)

        return (1.0 - ops.power(p, q)) / q, grad

    return gce(p)


def categorical_generalized_cross_entropy(y_true, y_pred, q=0.5, from_logits=False):
    """Computes the generalized cross entropy (GCE) loss.

    GCE is robust to noisy labels. It interpolates between cross entropy (`q -> 0`) and mean
    absolute error (`q = 1`).

    Formula:

    ```python
    loss = (1 - p**q) / q
    ```

    where `p` is the predicted probability of the true class. Its gradient, `-p**(q - 1)`, is
    infinite at `p = 0`; there (for `p` below 1e-7, or float16's smallest normal number) it is
    taken at that floor, while the value stays exactly Keras's. With `from_logits=True`,
    `p**q` is computed as `exp(q * log_softmax(y_pred))`, which never meets `p = 0`.

    Args:
        y_true: Integer class ids, shape `[batch_size]` or `[batch_size, 1]` (more leading axes
            are allowed, matching `y_pred`'s).
        y_pred: Predicted class probabilities, or logits if `from_logits`, shape
            `[batch_size, num_classes]`.
        q: Float in (0, 1), the noise parameter. Defaults to 0.5 (Keras's function has no
            default; this one has, so that the string name works in `compile`).
        from_logits: Whether `y_pred` holds logits rather than probabilities. Defaults to
            `False`.

    Returns:
        GCE loss values, shape `[batch_size]`.

    Example:

    >>> y_true = np.array([0, 1, 0, 1])
    >>> y_pred = np.array([[0.7, 0.3], [0.2, 0.8], [0.6, 0.4], [0.4, 0.6]])
    >>> keras_margin.losses.categorical_generalized_cross_entropy(y_true, y_pred, q=0.5)
    array([0.32668, 0.21115, 0.45081, 0.45081])
    """
    q = validate_q(q)
    from_logits = validate_bool("from_logits", from_logits)
    y_pred = to_tensor(y_pred)
    require_float(y_pred, "y_pred")
    labels, valid = _checked_labels(y_true, y_pred)
    safe_labels = labels if valid is None else ops.where(valid, labels, ops.zeros_like(labels))
    if from_logits:
        log_p = _true_class_entry(ops.log_softmax(y_pred, axis=-1), safe_labels)
        losses = -ops.expm1(q * log_p) / q
    else:
        losses = _gce_of_probability(_true_class_entry(y_pred, safe_labels), q)
    return nan_where_invalid(losses, valid)


@export_loss(function=categorical_generalized_cross_entropy)
class CategoricalGeneralizedCrossEntropy(ClassIdLoss):
    __doc__ = f"""Computes the generalized cross entropy loss between `y_true` and `y_pred`.

    Generalized cross entropy (GCE) is a noise-robust loss. It generalizes cross entropy and
    mean absolute error through `q`: values closer to 1 make it more robust to noisy labels.

    Formula:

    ```python
    loss = (1 - p**q) / q
    ```

    where `p` is the predicted probability of the true class. The gradient is kept finite where
    `p` is 0 (see `keras_margin.losses.categorical_generalized_cross_entropy`).

    `y_true` holds integer class ids of shape `[batch_size]` or `[batch_size, 1]`; they are never
    cast through a float dtype. `y_pred` holds probabilities of shape
    `[batch_size, num_classes]`.

    Args:
        q: Float in (0, 1), the noise parameter. As `q` approaches 0 the loss behaves like
            cross entropy, as it approaches 1 like mean absolute error. Defaults to 0.5.
        from_logits: Whether `y_pred` holds logits rather than probabilities; then `p**q` is
            computed stably as `exp(q * log_softmax(y_pred))`. Defaults to `False`.
        {REDUCTION_DOC}

    Example:

    >>> y_true = np.array([0, 1, 0, 1])
    >>> y_pred = np.array([[0.7, 0.3], [0.2, 0.8], [0.6, 0.4], [0.4, 0.6]])
    >>> keras_margin.losses.CategoricalGeneralizedCrossEntropy()(y_true, y_pred)
    0.35986

    References:
        - Zhang, Sabuncu, 2018, "Generalized Cross Entropy Loss for Training Deep Neural
          Networks with Noisy Labels" (https://arxiv.org/abs/1805.07836)
    """

    def __init__(
        self,
        q=0.5,
        reduction="sum_over_batch_size",
        name="categorical_generalized_cross_entropy",
        dtype=None,
        from_logits=False,
    ):
        super().__init__(
            categorical_generalized_cross_entropy,
            reduction=reduction,
            name=name,
            dtype=dtype,
            q=validate_q(q),
            from_logits=validate_bool("from_logits", from_logits),
        )
