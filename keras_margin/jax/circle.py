"""Circle's blocked implementation on JAX: nothing N x M is ever live.

The reference set is cut into column tiles of width B. ``lax.scan`` walks the tiles; each step
forms one [N, B] tile of similarities with a single product, folds it into a running maximum
and sum per row and set (an online log-sum-exp), and drops it. The backward pass is a custom
VJP that walks the tiles again, recomputing each from the saved per-row maxima and sums, and
differentiates the tile with ``jax.vjp``: the element-wise derivatives are JAX's own, so
gradients equal those of the composite ``keras.ops`` path on JAX, ties included. Only O(N + M)
state passes from the forward to the backward.

float16 and bfloat16 accumulate in float32, as TensorFlow's fused op does. Everything
compiles under ``jax.jit`` on any device; on TPUs this is the route to large Circle batches.
"""

import functools
import math

import jax
import jax.numpy as jnp

from keras_margin.losses.checks import all_finite, nan_where_invalid
from keras_margin.losses.circle_tiling import tile_width


def _tile_logits(x, ref_tile, gamma, margin):
    """The positive-set and negative-set logits of every anchor against one reference tile,
    in the composite path's arithmetic."""
    distance = jnp.maximum(1.0 - x @ ref_tile.T, 0.0)
    pos = -gamma * jnp.maximum(margin + distance, 0.0) * (margin - distance)
    neg = gamma * jnp.maximum(1.0 + margin - distance, 0.0) * (1.0 - margin - distance)
    return pos, neg


def _tile_masks(labels, ref_labels_tile, first_column, ref_rows, remove_diagonal, offset):
    """Which entries of a tile are positive and negative pairs; padding columns are neither."""
    columns = first_column + jnp.arange(ref_labels_tile.shape[0])
    real = (columns < ref_rows)[None, :]
    same = labels[:, None] == ref_labels_tile[None, :]
    positive = same & real
    if remove_diagonal:
        rows = jnp.arange(labels.shape[0]) + offset
        positive = positive & (rows[:, None] != columns[None, :])
    return positive, ~same & real


def _tiles(ref, ref_labels, width):
    """The reference set padded to whole tiles: [T, B, D] and [T, B]."""
    ref_rows = ref.shape[0]
    tiles = max(1, math.ceil(ref_rows / width))
    pad = tiles * width - ref_rows
    ref = jnp.pad(ref, ((0, pad), (0, 0))).reshape(tiles, width, ref.shape[1])
    ref_labels = jnp.pad(ref_labels, (0, pad)).reshape(tiles, width)
    return ref, ref_labels, jnp.arange(tiles) * width


def _shift(top):
    """A row maximum as the shift of its exponentials; a set with no member yet (max -inf)
    shifts by 0, so that its exp(-inf - shift) is 0 rather than NaN."""
    return jnp.where(jnp.isfinite(top), top, 0.0)


def _online_lse(state, logits, mask):
    """Folds one tile into a running (max, sum of exp(logit - max)) per row."""
    top, total = state
    masked = jnp.where(mask, logits, -jnp.inf)
    new_top = jnp.maximum(top, jnp.max(masked, axis=1))
    shift = _shift(new_top)
    total = total * jnp.exp(top - shift) + jnp.sum(jnp.exp(masked - shift[:, None]), axis=1)
    return new_top, total


def _finish_lse(state):
    top, total = state
    return jnp.where(total > 0, top + jnp.log(total), -jnp.inf)


def _softmax_weights(state, logits, mask):
    """exp(logit - lse) as exp(logit - max) / sum, Keras's own form: a rounded lse would put
    its rounding error, up to ulp(lse) / 2, into every weight.

    XLA compiles the backward pass apart from the forward, and may round a recomputed logit an
    ulp differently (its dot kernel and fusions are chosen per program), so logit - max can
    come out above 0; it is capped there, as no weight exceeds 1 / sum. Where the logits reach
    1e11 (norms of 100, gamma 1024) an ulp is 8e3, and the weight would overflow."""
    top, total = state
    shift = _shift(top)
    below_max = jnp.minimum(logits - shift[:, None], 0.0)
    return jnp.where(mask, jnp.exp(below_max) / total[:, None], 0.0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7, 8))
def _blocked_losses(x, ref, labels, ref_labels, offset, gamma, margin, remove_diagonal, width):
    return _forward(x, ref, labels, ref_labels, offset, gamma, margin, remove_diagonal, width)[0]


def _forward(x, ref, labels, ref_labels, offset, gamma, margin, remove_diagonal, width):
    ref_tiles, ref_label_tiles, first_columns = _tiles(ref, ref_labels, width)
    empty = (jnp.full(x.shape[:1], -jnp.inf, x.dtype), jnp.zeros(x.shape[:1], x.dtype))

    def step(carry, tile):
        pos_state, neg_state = carry
        ref_tile, ref_label_tile, first_column = tile
        pos, neg = _tile_logits(x, ref_tile, gamma, margin)
        positive, negative = _tile_masks(
            labels, ref_label_tile, first_column, ref.shape[0], remove_diagonal, offset
        )
        return (_online_lse(pos_state, pos, positive), _online_lse(neg_state, neg, negative)), None

    (pos_state, neg_state), _ = jax.lax.scan(
        step, (empty, empty), (ref_tiles, ref_label_tiles, first_columns)
    )
    lse_pos, lse_neg = _finish_lse(pos_state), _finish_lse(neg_state)
    return jax.nn.softplus(lse_pos + lse_neg), (pos_state, neg_state)


def _forward_with_residuals(x, ref, labels, ref_labels, offset, *static):
    losses, (pos_state, neg_state) = _forward(x, ref, labels, ref_labels, offset, *static)
    return losses, (x, ref, labels, ref_labels, offset, pos_state, neg_state)


def _backward(gamma, margin, remove_diagonal, width, residuals, grad_losses):
    x, ref, labels, ref_labels, offset, pos_state, neg_state = residuals
    ref_tiles, ref_label_tiles, first_columns = _tiles(ref, ref_labels, width)
    # d softplus(lse_pos + lse_neg) = sigmoid(...), then each set's softmax weights.
    z = _finish_lse(pos_state) + _finish_lse(neg_state)
    scale = (grad_losses * jax.nn.sigmoid(z))[:, None]

    def step(grad_x, tile):
        ref_tile, ref_label_tile, first_column = tile
        (pos, neg), pullback = jax.vjp(lambda x, r: _tile_logits(x, r, gamma, margin), x, ref_tile)
        positive, negative = _tile_masks(
            labels, ref_label_tile, first_column, ref.shape[0], remove_diagonal, offset
        )
        grad_pos = _softmax_weights(pos_state, pos, positive) * scale
        grad_neg = _softmax_weights(neg_state, neg, negative) * scale
        tile_grad_x, grad_ref_tile = pullback((grad_pos, grad_neg))
        return grad_x + tile_grad_x, grad_ref_tile

    grad_x, grad_ref_tiles = jax.lax.scan(
        step, jnp.zeros_like(x), (ref_tiles, ref_label_tiles, first_columns)
    )
    grad_ref = grad_ref_tiles.reshape(-1, ref.shape[1])[: ref.shape[0]]
    return grad_x, grad_ref, None, None, None


_blocked_losses.defvjp(_forward_with_residuals, _backward)


@functools.partial(jax.jit, static_argnames=("gamma", "margin", "remove_diagonal"))
def _circle_loss(x, labels, ref, ref_labels, offset, *, gamma, margin, remove_diagonal):
    accumulate = jnp.promote_types(x.dtype, jnp.float32)
    width = tile_width(
        x.shape[0], ref.shape[0], jnp.dtype(accumulate).itemsize, jax.default_backend()
    )
    losses = _blocked_losses(
        x.astype(accumulate),
        ref.astype(accumulate),
        labels,
        ref_labels,
        offset,
        gamma,
        margin,
        remove_diagonal,
        width,
    )
    return losses.astype(x.dtype)


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
    """Per-row Circle loss [N], equal in value and gradient to the composite path.

    Args are those of ``keras_margin.losses.circle_composite.circle_loss``: [N, D] embeddings
    and [N] integer labels, an optional [M, D] reference set and its [M] labels (defaults: the
    embeddings and labels), and the hyper-parameters. Non-finite embeddings make every row NaN.
    """
    ref = embeddings if ref_embeddings is None else ref_embeddings
    ref_labels = labels if ref_labels is None else ref_labels
    common = jnp.promote_types(labels.dtype, ref_labels.dtype)
    losses = _circle_loss(
        embeddings,
        labels.astype(common),
        ref,
        ref_labels.astype(common),
        jnp.asarray(diagonal_offset, common),
        gamma=gamma,
        margin=margin,
        remove_diagonal=remove_diagonal,
    )
    return nan_where_invalid(losses, all_finite(embeddings, ref_embeddings))
