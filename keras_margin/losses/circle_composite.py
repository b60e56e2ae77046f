"""Circle's composite path: Keras's arithmetic in ``keras.ops``, on every backend.

It materialises the N x M similarity matrix. It is the fallback where no blocked
implementation runs, the choice for small batches, and the reference every other
implementation is tested against.
"""

from keras import ops

from keras_margin import backend
from keras_margin.losses.checks import all_finite, nan_where_invalid


def circle_loss(
    embeddings,
    labels,
    ref_embeddings=None,
    ref_labels=None,
    *,
    gamma,
    margin,
    remove_diagonal,
    diagonal_offset=0,
):
    """Per-row Circle loss [N]: the contract every implementation keeps.

    Args:
        embeddings: Anchor embeddings, shape [N, D].
        labels: Integer class ids of the anchors, shape [N].
        ref_embeddings: Optional reference embeddings, shape [M, D]; defaults to
            ``embeddings``.
        ref_labels: Optional class ids of the references, shape [M]; defaults to ``labels``.
        gamma, margin, remove_diagonal, diagonal_offset: as in ``pairwise_circle_loss``.

    A non-finite embedding takes part in every row's pairs, so it makes every row NaN (XLA's
    max would otherwise quietly drop a NaN).
    """
    losses = pairwise_circle_loss(
        embeddings,
        labels,
        embeddings if ref_embeddings is None else ref_embeddings,
        labels if ref_labels is None else ref_labels,
        gamma=gamma,
        margin=margin,
        remove_diagonal=remove_diagonal,
        diagonal_offset=diagonal_offset,
    )
    return nan_where_invalid(losses, all_finite(embeddings, ref_embeddings))


def pairwise_circle_loss(
    embeddings,
    labels,
    ref_embeddings,
    ref_labels,
    *,
    gamma,
    margin,
    remove_diagonal,
    diagonal_offset=0,
):
    """Per-anchor Circle loss of ``embeddings`` [N, D] against ``ref_embeddings`` [M, D].

    Its arithmetic follows ``keras.losses.circle`` operation for operation, so values and
    gradients match Keras's on every backend.

    Args:
        embeddings: Anchor embeddings, shape [N, D].
        labels: Integer class ids of the anchors, shape [N].
        ref_embeddings: Reference embeddings, shape [M, D].
        ref_labels: Integer class ids of the references, shape [M].
        gamma: Scale of the logits.
        margin: Relaxation margin.
        remove_diagonal: Whether pair (i, i + diagonal_offset) is excluded from the positives.
        diagonal_offset: The row of the batch that the reference set is aligned with where
            anchor 0 sits: 0, unless the anchors are one replica's slice of a global batch.

    Returns:
        Per-anchor losses, shape [N].
    """
    similarity = ops.matmul(embeddings, ops.transpose(ref_embeddings))
    distance = ops.maximum(1.0 - similarity, 0.0)
    same_class = ops.equal(ops.expand_dims(labels, 1), ops.expand_dims(ref_labels, 0))
    positive = same_class
    if remove_diagonal:
        index = backend.runtime().index_dtype()
        rows = ops.arange(ops.shape(labels)[0], dtype=index) + ops.cast(diagonal_offset, index)
        rows = ops.expand_dims(rows, 1)
        cols = ops.expand_dims(ops.arange(ops.shape(ref_labels)[0], dtype=index), 0)
        positive = ops.logical_and(positive, ops.not_equal(rows, cols))
    negative = ops.logical_not(same_class)

    # The weights are not stop-gradient: Keras differentiates through them, and so do we.
    pos_weights = ops.maximum(margin + distance, 0.0)
    neg_weights = ops.maximum(1.0 + margin - distance, 0.0)
    pos_logits = -gamma * pos_weights * (margin - distance)
    neg_logits = gamma * neg_weights * (1.0 - margin - distance)

    excluded = ops.cast(float("-inf"), pos_logits.dtype)
    lse_pos = ops.logsumexp(ops.where(positive, pos_logits, excluded), axis=1)
    lse_neg = ops.logsumexp(ops.where(negative, neg_logits, excluded), axis=1)
    return ops.softplus(lse_pos + lse_neg)
