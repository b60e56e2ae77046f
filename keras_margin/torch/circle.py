"""Circle's blocked implementation on PyTorch: nothing N x M is ever live.

The reference set is cut into column tiles of width B (``keras_margin.losses.circle_tiling``,
the JAX path's budget, following the device of the embeddings). The forward pass walks the
tiles; each forms one [N, B] tile of similarities with a single product, folds it into a
running maximum and sum per row and set (an online log-sum-exp), and drops it. The backward
pass walks the tiles again, recomputing each from the saved per-row maxima and sums, and
applies the composite path's element-wise derivatives by hand, with PyTorch's conventions at
the kinks (``torch.maximum`` gives half the gradient to each side of a tie; ``softplus`` is the
identity above 20), simplified: each logit's derivative in its distance is one product. Only
O(N + M) state passes from the forward to the backward.

Both passes are PyTorch operators (``keras_margin::circle_forward`` and
``keras_margin::circle_backward``, ``torch.library.custom_op``) with fake implementations and a
registered autograd formula, so ``torch.compile`` sees one opaque operator of known shape. They
are written in plain tensor operations and run on any device. float16 and bfloat16 accumulate
in float32, as TensorFlow's fused op does.

Without a reference set (or with the embeddings themselves as the reference set) the operator
takes no reference tensor at all: the embeddings are never passed to it twice, which would
alias two inputs of one operator (a ``torch.compile`` gradient hazard), and the gradients of
both roles are summed inside the backward operator.
"""

import torch

from keras_margin.losses.circle_tiling import tile_width

# torch.nn.functional.softplus's default: above it, softplus(x) = x and its derivative is 1.
_SOFTPLUS_THRESHOLD = 20.0


def _width(x, ref_rows):
    return tile_width(x.shape[0], ref_rows, x.element_size(), x.device.type)


def _tile_logits(x, ref_tile, gamma, margin, keep_unclamped=True):
    """1 - similarity (None unless ``keep_unclamped``), the distances, and the positive-set and
    negative-set logits of every anchor against one reference tile, in the composite path's
    arithmetic and order (in place where it can: nothing here is differentiated by autograd)."""
    unclamped = torch.mm(x, ref_tile.T).neg_().add_(1.0)
    if not keep_unclamped:
        distance, unclamped = unclamped.clamp_min_(0.0), None
    else:
        distance = torch.clamp_min(unclamped, 0.0)
    pos = torch.add(distance, margin).clamp_min_(0.0).mul_(-gamma).mul_(margin - distance)
    neg = torch.rsub(distance, 1.0 + margin).clamp_min_(0.0).mul_(gamma)
    neg.mul_(torch.rsub(distance, 1.0 - margin))
    return unclamped, distance, pos, neg


def _max_slope(a):
    """The derivative of max(a, 0) as torch.maximum's backward has it: 1 above 0, 0 below,
    and 1/2 at a tie."""
    return torch.sign(a).add_(1.0).mul_(0.5)


def _tile_exclusions(labels, ref_labels_tile, first_column, remove_diagonal, offset):
    """Which entries of a tile are not positive pairs, and which are not negative pairs."""
    not_positive = labels[:, None] != ref_labels_tile[None, :]
    not_negative = labels[:, None] == ref_labels_tile[None, :]
    if remove_diagonal:
        # Pair (i, i + offset): in this tile, column c is row c + first_column - offset's.
        columns = torch.arange(ref_labels_tile.shape[0], device=labels.device)
        rows = columns + first_column - offset
        inside = (rows >= 0) & (rows < labels.shape[0])
        rows = rows.clamp(0, max(labels.shape[0] - 1, 0))
        if labels.shape[0] > 0:
            not_positive.index_put_((rows, columns), not_positive[rows, columns] | inside)
    return not_positive, not_negative


def _shift(top):
    """A row maximum as the shift of its exponentials; a set with no member yet (max -inf)
    shifts by 0, so that its exp(-inf - shift) is 0 rather than NaN."""
    return torch.where(torch.isfinite(top), top, torch.zeros_like(top))


def _online_lse(top, total, logits, excluded):
    """Folds one tile into a running (max, sum of exp(logit - max)) per row."""
    masked = logits.masked_fill_(excluded, float("-inf"))
    new_top = torch.maximum(top, masked.amax(dim=1))
    shift = _shift(new_top)
    total = total * torch.exp(top - shift) + torch.exp_(masked.sub_(shift[:, None])).sum(dim=1)
    return new_top, total


def _finish_lse(top, total):
    return torch.where(total > 0, top + torch.log(total), torch.full_like(top, float("-inf")))


def _softmax_weights(top, total, logits, excluded):
    """exp(logit - lse) as exp(logit - max) / sum, with logit - max capped at 0 as the JAX path
    does (a recomputed logit may round an ulp above the forward pass's maximum); 0 outside the
    set, also for a set with no member (sum 0)."""
    below_max = torch.clamp_max_(logits - _shift(top)[:, None], 0.0)
    weights = torch.exp_(below_max) / total[:, None]
    return weights.masked_fill_(excluded, 0.0)


def _tiles(ref_rows, width):
    return [(start, min(start + width, ref_rows)) for start in range(0, ref_rows, width)]


def _forward(x, labels, ref, ref_labels, offset, gamma, margin, remove_diagonal):
    """Per-row losses [N] and the per-row state [4, N]: the positive set's running maximum and
    sum, then the negative set's."""
    ref = x if ref is None else ref
    ref_labels = labels if ref_labels is None else ref_labels
    rows = x.shape[0]
    pos_top = torch.full((rows,), float("-inf"), dtype=x.dtype, device=x.device)
    neg_top = pos_top.clone()
    pos_total = torch.zeros_like(pos_top)
    neg_total = torch.zeros_like(pos_top)
    for start, stop in _tiles(ref.shape[0], _width(x, ref.shape[0])):
        _, _, pos, neg = _tile_logits(x, ref[start:stop], gamma, margin, keep_unclamped=False)
        not_positive, not_negative = _tile_exclusions(
            labels, ref_labels[start:stop], start, remove_diagonal, offset
        )
        pos_top, pos_total = _online_lse(pos_top, pos_total, pos, not_positive)
        neg_top, neg_total = _online_lse(neg_top, neg_total, neg, not_negative)
    z = _finish_lse(pos_top, pos_total) + _finish_lse(neg_top, neg_total)
    losses = torch.nn.functional.softplus(z, threshold=_SOFTPLUS_THRESHOLD)
    return losses, torch.stack([pos_top, pos_total, neg_top, neg_total])


def _backward(
    grad_losses, x, labels, ref, ref_labels, offset, state, gamma, margin, remove_diagonal
):
    """The gradients of sum(grad_losses * losses) for the embeddings and the reference set (an
    empty [0, D] one without a reference set, whose gradient is summed into the embeddings')."""
    self_reference = ref is None
    ref = x if self_reference else ref
    ref_labels = labels if ref_labels is None else ref_labels
    pos_top, pos_total, neg_top, neg_total = state.unbind(0)
    z = _finish_lse(pos_top, pos_total) + _finish_lse(neg_top, neg_total)
    slope = torch.where(z > _SOFTPLUS_THRESHOLD, torch.ones_like(z), torch.sigmoid(z))
    scale = (grad_losses.to(x.dtype) * slope * (-2.0 * gamma))[:, None]
    grad_x = torch.zeros_like(x)
    grad_ref = torch.empty_like(ref)
    for start, stop in _tiles(ref.shape[0], _width(x, ref.shape[0])):
        ref_tile = ref[start:stop]
        unclamped, distance, pos, neg = _tile_logits(x, ref_tile, gamma, margin)
        not_positive, not_negative = _tile_exclusions(
            labels, ref_labels[start:stop], start, remove_diagonal, offset
        )
        grad_pos = _softmax_weights(pos_top, pos_total, pos, not_positive)
        grad_neg = _softmax_weights(neg_top, neg_total, neg, not_negative)
        del pos, neg, not_positive, not_negative
        # pos = -gamma * max(margin + d, 0) * (margin - d) has the derivative in d
        # gamma * (max'(margin + d) * (d - margin) + max(margin + d, 0)), which is
        # 2 gamma d max'(margin + d) on both sides of the kink and at it; likewise
        # neg = gamma * max(1 + margin - d, 0) * (1 - margin - d) has 2 gamma (d - 1)
        # max'(1 + margin - d); and d = max(1 - s, 0) has -max'(1 - s) in s.
        grad_pos.mul_(distance)
        if margin < 0:  # else margin + d > 0 or d = 0: max'(margin + d) d = d
            grad_pos.mul_(_max_slope(torch.add(distance, margin)))
        neg_slope = _max_slope(torch.rsub(distance, 1.0 + margin))
        grad_similarity = grad_pos.add_(grad_neg.mul_(distance.sub_(1.0)).mul_(neg_slope))
        grad_similarity.mul_(_max_slope(unclamped)).mul_(scale)
        del grad_neg, neg_slope, distance, unclamped
        grad_x.addmm_(grad_similarity, ref_tile)
        grad_ref[start:stop] = grad_similarity.T @ x
    if self_reference:
        return grad_x.add_(grad_ref), x.new_empty((0, x.shape[1]))
    return grad_x, grad_ref


@torch.library.custom_op("keras_margin::circle_forward", mutates_args=())
def circle_forward(
    x: torch.Tensor,
    labels: torch.Tensor,
    ref: torch.Tensor | None,
    ref_labels: torch.Tensor | None,
    offset: torch.Tensor,
    gamma: float,
    margin: float,
    remove_diagonal: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Circle's per-row losses [N] of ``x`` [N, D] against ``ref`` [M, D] (``x`` if None), and
    the per-row log-sum-exp state [4, N] that ``circle_backward`` takes."""
    return _forward(x, labels, ref, ref_labels, offset, gamma, margin, remove_diagonal)


@circle_forward.register_fake
def _(x, labels, ref, ref_labels, offset, gamma, margin, remove_diagonal):
    return x.new_empty((x.shape[0],)), x.new_empty((4, x.shape[0]))


@torch.library.custom_op("keras_margin::circle_backward", mutates_args=())
def circle_backward(
    grad_losses: torch.Tensor,
    x: torch.Tensor,
    labels: torch.Tensor,
    ref: torch.Tensor | None,
    ref_labels: torch.Tensor | None,
    offset: torch.Tensor,
    state: torch.Tensor,
    gamma: float,
    margin: float,
    remove_diagonal: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The gradients for ``x`` and ``ref`` of ``sum(grad_losses * losses)``; without ``ref``,
    both roles' gradients are in the first and the second is empty, [0, D]."""
    return _backward(
        grad_losses, x, labels, ref, ref_labels, offset, state, gamma, margin, remove_diagonal
    )


@circle_backward.register_fake
def _(grad_losses, x, labels, ref, ref_labels, offset, state, gamma, margin, remove_diagonal):
    ref_rows = 0 if ref is None else ref.shape[0]
    return torch.empty_like(x), x.new_empty((ref_rows, x.shape[1]))


def _setup_context(ctx, inputs, output):
    x, labels, ref, ref_labels, offset, gamma, margin, remove_diagonal = inputs
    ctx.self_reference = ref is None
    ctx.ref_labels_given = ref_labels is not None
    ctx.hyper = (gamma, margin, remove_diagonal)
    saved = (x, labels, offset, output[1])
    if not ctx.self_reference:
        saved += (ref,)
    if ctx.ref_labels_given:
        saved += (ref_labels,)
    ctx.save_for_backward(*saved)


def _autograd_backward(ctx, grad_losses, grad_state):
    x, labels, offset, state, *rest = ctx.saved_tensors
    ref = None if ctx.self_reference else rest.pop(0)
    ref_labels = rest.pop(0) if ctx.ref_labels_given else None
    grad_x, grad_ref = circle_backward(
        grad_losses, x, labels, ref, ref_labels, offset, state, *ctx.hyper
    )
    return grad_x, None, None if ctx.self_reference else grad_ref, None, None, None, None, None


circle_forward.register_autograd(_autograd_backward, setup_context=_setup_context)


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
    x = torch.as_tensor(embeddings)
    labels = torch.as_tensor(labels, device=x.device)
    ref = None if ref_embeddings is None or ref_embeddings is embeddings else ref_embeddings
    if ref is not None:
        ref = torch.as_tensor(ref, device=x.device)
    if ref_labels is not None and ref_labels is not labels:
        ref_labels = torch.as_tensor(ref_labels, device=x.device)
        common = torch.promote_types(labels.dtype, ref_labels.dtype)
        labels, ref_labels = labels.to(common), ref_labels.to(common)
    else:
        ref_labels = None
    accumulate = torch.promote_types(x.dtype, torch.float32)
    offset = torch.as_tensor(diagonal_offset, device=x.device).to(torch.int64)
    losses, _ = circle_forward(
        x.to(accumulate),
        labels,
        None if ref is None else ref.to(accumulate),
        ref_labels,
        offset,
        float(gamma),
        float(margin),
        bool(remove_diagonal),
    )
    # A non-finite embedding takes part in every row's pairs: every row is NaN, as on the
    # composite path (``checks.nan_where_invalid``), in torch operations that compile.
    finite = torch.isfinite(x).all()
    if ref is not None:
        finite = finite & torch.isfinite(ref).all()
    return torch.where(finite, losses, torch.full_like(losses, float("nan"))).to(x.dtype)
