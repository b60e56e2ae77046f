"""The hinge family: `hinge`, `squared_hinge` and `categorical_hinge`."""

from keras import ops

from keras_margin.losses.base import REDUCTION_DOC, MarginLoss
from keras_margin.losses.checks import require_broadcastable
from keras_margin.losses.reduction import match_rank
from keras_margin.registry import export_loss


def _labels_and_predictions(y_true, y_pred):
    """Both as tensors of the prediction dtype, checked to broadcast against each other."""
    y_pred = ops.convert_to_tensor(y_pred)
    y_true = ops.cast(y_true, y_pred.dtype)
    require_broadcastable(y_true, "y_true", y_pred, "y_pred")
    return y_true, y_pred


def _signed_labels(y_true):
    """Maps {0, 1} labels to {-1, 1}.

    As in Keras, the decision is made for the whole tensor: only if every label is 0 or 1.
    """
    is_binary = ops.all(ops.logical_or(ops.equal(y_true, 0), ops.equal(y_true, 1)))
    return ops.where(is_binary, 2.0 * y_true - 1.0, y_true)


def _margin_violation(y_true, y_pred):
    y_true, y_pred = _labels_and_predictions(y_true, y_pred)
    return ops.maximum(1.0 - _signed_labels(y_true) * y_pred, 0.0)


def hinge(y_true, y_pred):
    """Computes the hinge loss between `y_true` and `y_pred`.

    Formula:

    ```python
    loss = mean(maximum(1 - y_true * y_pred, 0), axis=-1)
    ```

    Args:
        y_true: Labels in {-1, 1}, shape `[batch_size, d0, .. dN]`. Binary {0, 1} labels are
            converted to {-1, 1}.
        y_pred: Predicted values, shape `[batch_size, d0, .. dN]`.

    Returns:
        Hinge loss values, shape `[batch_size, d0, .. dN-1]`.

    Example:

    >>> y_true = np.array([[0.0, 1.0], [0.0, 0.0]])
    >>> y_pred = np.array([[0.6, 0.4], [0.4, 0.6]])
    >>> keras_margin.losses.hinge(y_true, y_pred)
    array([1.1, 1.5], dtype=float32)
    """
    return ops.mean(_margin_violation(y_true, y_pred), axis=-1)


def squared_hinge(y_true, y_pred):
    """Computes the squared hinge loss between `y_true` and `y_pred`.

    Formula:

    ```python
    loss = mean(square(maximum(1 - y_true * y_pred, 0)), axis=-1)
    ```

    Args:
        y_true: Labels in {-1, 1}, shape `[batch_size, d0, .. dN]`. Binary {0, 1} labels are
            converted to {-1, 1}.
        y_pred: Predicted values, shape `[batch_size, d0, .. dN]`.

    Returns:
        Squared hinge loss values, shape `[batch_size, d0, .. dN-1]`.

    Example:

    >>> y_true = np.array([[0.0, 1.0], [0.0, 0.0]])
    >>> y_pred = np.array([[0.6, 0.4], [0.4, 0.6]])
    >>> keras_margin.losses.squared_hinge(y_true, y_pred)
    array([1.46, 2.26], dtype=float32)
    """
    return ops.mean(ops.square(_margin_violation(y_true, y_pred)), axis=-1)


def categorical_hinge(y_true, y_pred):
    """Computes the categorical hinge loss between `y_true` and `y_pred`.

    Formula:

    ```python
    loss = maximum(neg - pos + 1, 0)
    ```

    where `neg = max((1 - y_true) * y_pred)` and `pos = sum(y_true * y_pred)`.

    Args:
        y_true: One-hot labels, shape `[batch_size, d0, .. dN]`.
        y_pred: Predicted scores, shape `[batch_size, d0, .. dN]`.

    Returns:
        Categorical hinge loss values, shape `[batch_size, d0, .. dN-1]`.

    Example:

    >>> y_true = np.array([[0.0, 1.0], [0.0, 0.0]])
    >>> y_pred = np.array([[0.6, 0.4], [0.4, 0.6]])
    >>> keras_margin.losses.categorical_hinge(y_true, y_pred)
    array([1.2, 1.6], dtype=float32)
    """
    y_true, y_pred = _labels_and_predictions(y_true, y_pred)
    pos = ops.sum(y_true * y_pred, axis=-1)
    scores = (1.0 - y_true) * y_pred
    if 0 in scores.shape:
        # `initial` lets an empty batch through: keras.ops.max raises on any empty tensor.
        neg = ops.max(scores, axis=-1, initial=float("-inf"))
    else:
        # The same values (NaN included) without `initial`, whose handling in Keras's torch
        # backend breaks a `torch.compile` graph.
        neg = ops.amax(scores, axis=-1)
    return ops.maximum(neg - pos + 1.0, ops.zeros((), y_pred.dtype))


class _ElementwiseMarginLoss(MarginLoss):
    """A hinge-family loss: labels and predictions are matched in rank as Keras does."""

    def call(self, y_true, y_pred):
        y_true, y_pred = match_rank(y_true, y_pred)
        return self.fn(y_true, y_pred)


@export_loss(function=hinge)
class Hinge(_ElementwiseMarginLoss):
    __doc__ = f"""Computes the hinge loss between `y_true` and `y_pred`.

    Formula:

    ```python
    loss = maximum(1 - y_true * y_pred, 0)
    ```

    `y_true` values are expected to be -1 or 1. If binary (0 or 1) labels are provided they are
    converted to -1 or 1.

    Args:
        {REDUCTION_DOC}

    Example:

    >>> loss = keras_margin.losses.Hinge()
    >>> loss([[0.0, 1.0], [0.0, 0.0]], [[0.6, 0.4], [0.4, 0.6]])
    1.3
    """

    def __init__(self, reduction="sum_over_batch_size", name="hinge", dtype=None):
        super().__init__(hinge, reduction=reduction, name=name, dtype=dtype)


@export_loss(function=squared_hinge)
class SquaredHinge(_ElementwiseMarginLoss):
    __doc__ = f"""Computes the squared hinge loss between `y_true` and `y_pred`.

    Formula:

    ```python
    loss = square(maximum(1 - y_true * y_pred, 0))
    ```

    `y_true` values are expected to be -1 or 1. If binary (0 or 1) labels are provided they are
    converted to -1 or 1.

    Args:
        {REDUCTION_DOC}

    Example:

    >>> loss = keras_margin.losses.SquaredHinge()
    >>> loss([[0.0, 1.0], [0.0, 0.0]], [[0.6, 0.4], [0.4, 0.6]])
    1.86
    """

    def __init__(self, reduction="sum_over_batch_size", name="squared_hinge", dtype=None):
        super().__init__(squared_hinge, reduction=reduction, name=name, dtype=dtype)


@export_loss(function=categorical_hinge)
class CategoricalHinge(_ElementwiseMarginLoss):
    __doc__ = f"""Computes the categorical hinge loss between `y_true` and `y_pred`.

    Formula:

    ```python
    loss = maximum(neg - pos + 1, 0)
    ```

    where `neg = max((1 - y_true) * y_pred)` and `pos = sum(y_true * y_pred)`.

    Args:
        {REDUCTION_DOC}

    Example:

    >>> loss = keras_margin.losses.CategoricalHinge()
    >>> loss([[0.0, 1.0], [0.0, 0.0]], [[0.6, 0.4], [0.4, 0.6]])
    1.4
    """

    def __init__(self, reduction="sum_over_batch_size", name="categorical_hinge", dtype=None):
        super().__init__(categorical_hinge, reduction=reduction, name=name, dtype=dtype)
