"""Circle loss (Sun et al., 2020) for embedding and retrieval models."""

from keras import ops

from keras_margin._keras_internals import set_keras_mask
from keras_margin.distribute import (
    gather_replicas,
    multi_replica_context,
    rows_before_this_replica,
)
from keras_margin.losses.base import REDUCTION_DOC, ClassIdLoss, validate_bool, validate_finite
from keras_margin.losses.checks import (
    guard,
    nan_where_invalid,
    require_columns,
    require_float,
    require_rank,
    require_same_size,
)
from keras_margin.losses.circle_dispatch import circle_loss_function, validate_implementation
from keras_margin.losses.labels import class_ids_per_row
from keras_margin.registry import export_loss

# Beyond these the loss is meaningless and overflows: a similarity logit is up to about
# gamma * (1 + |margin|)**2, and float16 ends at 65504.
MIN_GAMMA = 0.001
MAX_GAMMA = 10_000.0
MAX_ABS_MARGIN = 1.0


def validate_circle_args(gamma, margin, remove_diagonal):
    """Checks Circle's hyper-parameters and returns them as Python floats and bool."""
    gamma = validate_finite("gamma", gamma)
    if not MIN_GAMMA <= gamma <= MAX_GAMMA:
        raise ValueError(
            f"Argument `gamma` must be in [{MIN_GAMMA:g}, {MAX_GAMMA:g}]; received gamma={gamma!r}."
        )
    margin = validate_finite("margin", margin)
    if abs(margin) > MAX_ABS_MARGIN:
        raise ValueError(f"Argument `margin` must be in [-1, 1]; received margin={margin!r}.")
    return gamma, margin, validate_bool("remove_diagonal", remove_diagonal)


def _embeddings(x, name, dtype=None):
    x = ops.convert_to_tensor(x, dtype=dtype)
    require_float(x, name)
    require_rank(x, name, 2, "(rows, embedding size)")
    require_columns(x, name)
    return x


def _class_ids_per_row(labels, name, embeddings, embeddings_name):
    """Flat class ids, one per row of ``embeddings``, and which are whole numbers.

    Any integer is a valid id, negative or beyond int32 included: ids are only compared.
    """
    labels, whole = class_ids_per_row(labels, name, embeddings, embeddings_name)
    if len(labels.shape) != 1:
        raise ValueError(
            f"Argument `{name}` must have shape (N,) or (N, 1); received shape {labels.shape}."
        )
    labels = require_same_size(embeddings, embeddings_name, labels, name)
    return guard(whole, f"Argument `{name}` must hold whole-number class ids", labels), whole


def circle(
    y_true,
    y_pred,
    ref_labels=None,
    ref_embeddings=None,
    remove_diagonal=True,
    gamma=80,
    margin=0.4,
    implementation="auto",
    cross_replica=True,
):
    """Computes the Circle loss of each embedding.

    Circle loss pulls same-class embeddings together and pushes other classes apart, weighting
    each pair by how far it is from its optimum. Embeddings are expected to be L2-normalised
    (for example by a `keras.layers.UnitNormalization` layer).

    Formula, for anchor `i`, with `d_ij = max(1 - x_i . r_j, 0)`:

    ```python
    lse_p = logsumexp_{j positive}(-gamma * max(margin + d_ij, 0) * (margin - d_ij))
    lse_n = logsumexp_{j negative}(gamma * max(1 + margin - d_ij, 0) * (1 - margin - d_ij))
    loss_i = softplus(lse_p + lse_n)
    ```

    Rows with no positive or no negative have loss 0, and are masked out of the mean.

    Args:
        y_true: Integer class ids, shape `[batch_size]` or `[batch_size, 1]`. They are never
            cast through a float dtype. On JAX without `jax_enable_x64` they must fit int32: a
            `ValueError` says so where they are still NumPy arrays or Python ints.
        y_pred: L2-normalised embeddings, shape `[batch_size, dim]`.
        ref_labels: Optional integer class ids of the reference set. Defaults to `y_true`.
        ref_embeddings: Optional reference embeddings, shape `[num_refs, dim]`. Defaults to
            `y_pred`.
        remove_diagonal: Whether to exclude pair (i, i) from the positives: each anchor with
            itself or, given a reference set, anchor `i` with reference `i` (as in Keras).
            Under several replicas, `i` is the anchor's row in the global batch, as on one
            device. Defaults to `True`.
        gamma: Positive float, the scale of the logits. Defaults to 80.
        margin: Float, the relaxation margin. Defaults to 0.4.
        implementation: `"auto"` (the default) picks the fastest that runs: on TensorFlow the
            fused C++/XLA op when it is built (else the composite `keras.ops` path, with a
            one-time warning), on JAX the blocked `lax.scan` path from 2048 x 2048 pairs, on
            PyTorch the blocked `keras_margin::circle_forward` operator from 1024 x 1024 pairs
            (the composite path below), elsewhere the composite path. `"fused"` requires the
            op on TensorFlow and the blocked path on JAX and PyTorch, and raises on other
            backends or if the op is unavailable; `"composite"` always uses the composite
            path.
        cross_replica: Under a `tf.distribute` strategy with several replicas, and with no
            explicit reference set, whether each replica's anchors are paired with the
            embeddings of all replicas (gathered, with gradients flowing back to their owners),
            which gives the single-device loss of the global batch. With an explicit
            `ref_embeddings`, whether the pair `remove_diagonal` drops is found by the anchor's
            global row, as on one device. With `False`, pairs are formed only inside each
            replica's slice, and row indices are the slice's, as Keras does. A no-op without a
            strategy or with one replica. Defaults to `True`.

    Returns:
        Circle loss values, shape `[batch_size]`, with a Keras mask of the non-zero entries.

    Example:

    >>> y_true = np.array([0, 0, 1, 1])
    >>> y_pred = keras.ops.normalize(np.random.normal(size=(4, 8)))
    >>> keras_margin.losses.circle(y_true, y_pred).shape
    TensorShape([4])
    """
    gamma, margin, remove_diagonal = validate_circle_args(gamma, margin, remove_diagonal)
    implementation = validate_implementation(implementation)
    embeddings = _embeddings(y_pred, "y_pred")
    labels, valid = _class_ids_per_row(y_true, "y_true", embeddings, "y_pred")
    if ref_embeddings is not None:
        ref_embeddings = _embeddings(ref_embeddings, "ref_embeddings", embeddings.dtype)
        ref_embeddings = require_same_size(
            embeddings, "y_pred", ref_embeddings, "ref_embeddings", axis=1, what="columns"
        )
    if ref_labels is not None:
        references, name = (
            (embeddings, "y_pred") if ref_embeddings is None else (ref_embeddings, "ref_embeddings")
        )
        ref_labels, ref_valid = _class_ids_per_row(ref_labels, "ref_labels", references, name)
        if ref_valid is not None:
            every_ref = ops.all(ref_valid)
            valid = every_ref if valid is None else ops.logical_and(valid, every_ref)
    context = multi_replica_context() if validate_bool("cross_replica", cross_replica) else None
    # Under several replicas the anchors are rows `diagonal_offset, ...` of the global batch:
    # without a reference set, the references are that global batch, gathered; an explicit
    # reference set is aligned with the global rows too, as on one device.
    diagonal_offset = 0
    if context is not None and ref_embeddings is None and ref_labels is None:
        ref_embeddings, ref_labels = gather_replicas(context, embeddings, labels)
    if context is not None and ref_embeddings is not None and remove_diagonal:
        diagonal_offset = rows_before_this_replica(context, embeddings)
    ref_rows = (embeddings if ref_embeddings is None else ref_embeddings).shape[0]
    circle_loss = circle_loss_function(implementation, embeddings.shape[0], ref_rows)
    # No reference set (None) lets an implementation exploit the symmetric similarity matrix.
    losses = circle_loss(
        embeddings,
        labels,
        ref_embeddings,
        ref_labels,
        gamma=gamma,
        margin=margin,
        remove_diagonal=remove_diagonal,
        diagonal_offset=diagonal_offset,
    )
    losses = nan_where_invalid(losses, valid)
    # Keras masks with `losses > 0`; `!= 0` is the same on the loss's range [0, inf) but keeps
    # NaN rows, which a zero mask weight would erase under XLA (it folds NaN * 0 to 0).
    set_keras_mask(losses, ops.not_equal(losses, 0))
    return losses


@export_loss(function=circle)
class Circle(ClassIdLoss):
    __doc__ = f"""Computes the Circle loss between integer labels and L2-normalised embeddings.

    A metric-learning loss that minimises within-class distances and maximises between-class
    distances, adjusting the penalty on each similarity by how far it is from its optimum.

    The model should output embeddings without an activation (for example a `Dense` layer with
    `activation=None`) followed by a `keras.layers.UnitNormalization` layer. Labels are integer
    class ids and are never cast through a float dtype. Rows whose loss is 0 (no positive or no
    negative in the batch) are masked, so `"sum_over_batch_size"` averages over the others.

    Args:
        gamma: Positive float, the scale of each similarity score. Defaults to 80.
        margin: Float, the relaxation margin: below this distance negatives are up-weighted and
            positives down-weighted, above it the reverse. Defaults to 0.4.
        remove_diagonal: Whether to exclude self-similarities from the positives. Defaults to
            `True`.
        implementation: `"auto"` (the default) uses TensorFlow's fused C++/XLA op or the
            blocked path of JAX or PyTorch where they run and pay, else the composite
            `keras.ops` path;
            `"fused"` requires one of them; `"composite"` never uses them. See
            `keras_margin.losses.circle`.
        cross_replica: Under a `tf.distribute` strategy with several replicas, pair each
            replica's anchors with the embeddings of all replicas, so that the loss and its
            gradients equal the single-device loss of the global batch (the count of non-zero
            rows in the mean is global too). `False` keeps Keras's per-replica pairs.
            Defaults to `True`.
        {REDUCTION_DOC}

    Example:

    ```python
    model = keras.Sequential([
        keras.layers.Input(shape=(64,)),
        keras.layers.Dense(32, activation=None),
        keras.layers.UnitNormalization(),
    ])
    model.compile(optimizer="adam", loss=keras_margin.losses.Circle())
    ```

    References:
        - Sun et al., 2020, "Circle Loss: A Unified Perspective of Pair Similarity
          Optimization" (https://arxiv.org/abs/2002.10857)
    """

    def __init__(
        self,
        gamma=80.0,
        margin=0.4,
        remove_diagonal=True,
        reduction="sum_over_batch_size",
        name="circle",
        dtype=None,
        implementation="auto",
        cross_replica=True,
    ):
        gamma, margin, remove_diagonal = validate_circle_args(gamma, margin, remove_diagonal)
        super().__init__(
            circle,
            reduction=reduction,
            name=name,
            dtype=dtype,
            gamma=gamma,
            margin=margin,
            remove_diagonal=remove_diagonal,
            implementation=validate_implementation(implementation),
            cross_replica=validate_bool("cross_replica", cross_replica),
        )
