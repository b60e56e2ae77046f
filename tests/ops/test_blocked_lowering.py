"""The fused op's blocked XLA lowering (tf_ops/xla/circle_loss_blocked_hlo.cc) under jit.

The lowering loops over column tiles of the reference set, at most 1024 wide and multiples of
128, padding the last one. The sizes here span several tiles with a padded last tile, so the
online log-sum-exp, the padding mask and the tile offsets of remove_diagonal are all exercised.
Every case is checked against the composite keras.ops path and against the CPU kernel (the op
run eagerly).
"""

import re

import numpy as np
import pytest
import tensorflow as tf

from keras_margin.losses.circle_composite import pairwise_circle_loss
from keras_margin.ops import circle_loss

from .helpers import loss_and_gradients, make_embeddings, make_labels


@pytest.fixture(autouse=True)
def _blocked_hlo(monkeypatch):
    # XLA:CPU would otherwise compile the op as a custom call into the CPU engine.
    monkeypatch.setenv("KERAS_MARGIN_XLA_BLOCKED_HLO", "1")


def _paths(labels, ref_labels, offset, **kwargs):
    """(fused, composite) per-row loss functions of (x, ref); ref None is self-reference."""

    def fused(x, ref):
        return circle_loss(x, labels, ref, ref_labels, diagonal_offset=offset, **kwargs)

    def composite(x, ref):
        if ref is None:
            return pairwise_circle_loss(x, labels, x, labels, diagonal_offset=offset, **kwargs)
        return pairwise_circle_loss(x, labels, ref, ref_labels, diagonal_offset=offset, **kwargs)

    return fused, composite


def _assert_close(got, want, rtol, grad_atol):
    loss, grads = got
    want_loss, want_grads = want
    np.testing.assert_allclose(
        loss, want_loss, rtol=rtol, atol=rtol * max(1.0, np.abs(want_loss).max(initial=0))
    )
    for g, wg in zip(grads, want_grads, strict=True):
        scale = max(np.abs(wg).max(initial=0), 1e-3)
        np.testing.assert_allclose(g, wg, rtol=10 * rtol, atol=grad_atol * scale)


def _tolerances(dtype, gamma):
    if dtype == np.float64:
        return 1e-10, 1e-10
    # As test_circle_op's float32 bound: the softmax weights carry a relative error ~gamma*eps.
    return 1e-5, 4e-7 * max(gamma, 50)


def _inputs(rng, n, m, d, layout, dtype):
    x = make_embeddings(rng, n, d, dtype)
    labels = make_labels(rng, n, layout, classes=6)
    if m is None:
        return x, labels, None, None
    ref = make_embeddings(rng, m, d, dtype)
    ref_labels = make_labels(rng, m, layout, classes=6)
    return x, labels, ref, ref_labels


# (n, m, d, layout): m=None is self-reference mode. 5000 references make five 1024-wide tiles,
# the last padded; 3000 self-references make tiles of 128 to 1024 columns depending on the
# backend's budget, the last padded either way.
MULTI_TILE = [
    (64, 5000, 16, "mixed"),
    (64, 5000, 16, "singletons"),  # each row's one positive is its diagonal pair
    (50, 1100, 8, "one_class"),  # no row has a negative
    (3000, None, 8, "mixed"),
    (1100, None, 5, "random"),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n,m,d,layout", MULTI_TILE)
@pytest.mark.parametrize("gamma,margin,remove_diagonal", [(80.0, 0.25, True), (256.0, 0.4, False)])
def test_several_tiles_match_composite_and_kernel(
    rng, dtype, n, m, d, layout, gamma, margin, remove_diagonal
):
    x, labels, ref, ref_labels = _inputs(rng, n, m, d, layout, dtype)
    upstream = rng.random(n)
    kwargs = dict(gamma=gamma, margin=margin, remove_diagonal=remove_diagonal)
    fused, composite = _paths(labels, ref_labels, 0, **kwargs)
    got = loss_and_gradients(fused, x, ref, upstream, "jit")
    rtol, grad_atol = _tolerances(dtype, gamma)
    _assert_close(got, loss_and_gradients(composite, x, ref, upstream, "eager"), rtol, grad_atol)
    _assert_close(got, loss_and_gradients(fused, x, ref, upstream, "eager"), rtol, grad_atol)


@pytest.mark.parametrize("offset", [0, 17, 1000, 1023, 1024, 4950, 4999, 5000, 10**12])
def test_diagonal_offset_across_tiles(rng, offset):
    """Row i drops reference i + offset: in the first tile, across a tile edge (1023/1024), in
    the padded last tile (4950, 4999) and nowhere (5000 and beyond)."""
    x, labels, ref, ref_labels = _inputs(rng, 64, 5000, 6, "random", np.float64)
    # Every row's excluded reference shares its label, so dropping it changes the loss.
    span = np.arange(64) + offset
    inside = span < 5000
    ref_labels[span[inside]] = labels[inside]
    upstream = rng.random(64)
    fused, composite = _paths(
        labels, ref_labels, offset, gamma=80.0, margin=0.4, remove_diagonal=True
    )
    got = loss_and_gradients(fused, x, ref, upstream, "jit")
    _assert_close(got, loss_and_gradients(composite, x, ref, upstream, "eager"), 1e-10, 1e-10)
    _assert_close(got, loss_and_gradients(fused, x, ref, upstream, "eager"), 1e-10, 1e-10)


def test_rows_whose_sets_fill_late_or_never(rng):
    """Rows whose positives all sit in the padded last tile start their online log-sum-exp
    there; rows without positives (their label only on the removed diagonal, or nowhere) have
    loss 0 and zero gradient."""
    n, m, d = 40, 2100, 8
    x = make_embeddings(rng, n, d, np.float64)
    ref = make_embeddings(rng, m, d, np.float64)
    labels = np.arange(n)
    ref_labels = 100 + rng.integers(0, 5, size=m)  # no query label anywhere yet
    ref_labels[2060:2080] = labels[:20]  # rows 0..19: positives only in the last tile
    ref_labels[25] = labels[25]  # row 25: its only positive is its diagonal pair
    upstream = rng.random(n)
    fused, composite = _paths(labels, ref_labels, 0, gamma=256.0, margin=0.25, remove_diagonal=True)
    loss, grads = got = loss_and_gradients(fused, x, ref, upstream, "jit")
    _assert_close(got, loss_and_gradients(composite, x, ref, upstream, "eager"), 1e-10, 1e-10)
    assert np.all(loss[:20] > 0)
    empty = np.arange(20, 40)
    np.testing.assert_array_equal(loss[empty], 0.0)
    np.testing.assert_array_equal(grads[0][empty], 0.0)


@pytest.mark.parametrize("dtype,rtol", [(tf.float16, 2e-3), (tf.bfloat16, 1.6e-2)])
@pytest.mark.parametrize("with_ref", [False, True])
def test_low_precision_several_tiles(rng, dtype, rtol, with_ref):
    """half and bfloat16 accumulate in float32: only the rounding of inputs and outputs
    differs from the float32 composite path on the rounded inputs."""
    n, m, d = (64, 2500, 16) if with_ref else (1500, None, 16)
    x, labels, ref, ref_labels = _inputs(rng, n, m, d, "mixed", np.float32)
    x = tf.cast(x, dtype)
    ref = None if ref is None else tf.cast(ref, dtype)
    upstream = rng.random(n)
    fused, composite = _paths(labels, ref_labels, 0, gamma=80.0, margin=0.25, remove_diagonal=True)
    loss, grads = loss_and_gradients(fused, x, ref, upstream, "jit")
    as32 = [None if v is None else tf.cast(v, tf.float32) for v in (x, ref)]
    want_loss, want_grads = loss_and_gradients(composite, *as32, upstream, "eager")
    np.testing.assert_allclose(loss, want_loss, rtol=rtol, atol=rtol)
    for g, wg in zip(grads, want_grads, strict=True):
        np.testing.assert_allclose(g, wg, rtol=rtol, atol=rtol * np.abs(wg).max())
    kernel_loss, kernel_grads = loss_and_gradients(fused, x, ref, upstream, "eager")
    np.testing.assert_allclose(loss, kernel_loss, rtol=rtol, atol=rtol)
    for g, kg in zip(grads, kernel_grads, strict=True):
        np.testing.assert_allclose(g, kg, rtol=rtol, atol=rtol * np.abs(kg).max())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n,m", [(300, None), (300, 1500), (40, 130)])
def test_bounded_dynamic_rows(rng, dtype, n, m):
    """Rows picked by tf.boolean_mask inside the compiled step have a bounded dynamic size.
    XLA pads them to the bound; the lowering masks the padding, and the outputs keep the
    run-time size. The dropped rows are NaN, so any read of them would show."""
    x, labels, ref, ref_labels = _inputs(rng, n, m, 8, "mixed", dtype)
    keep_x = rng.random(n) < 0.6
    x[~keep_x] = np.nan
    keep_ref = None
    if ref is not None:
        keep_ref = rng.random(m) < 0.5
        ref[~keep_ref] = np.nan
    upstream = rng.random(int(keep_x.sum()))
    offset = 0 if ref is None else 3
    kwargs = dict(gamma=80.0, margin=0.25, remove_diagonal=True, diagonal_offset=offset)

    def step(x, ref):
        with tf.GradientTape() as tape:
            tape.watch([x] if ref is None else [x, ref])
            xs, ls = tf.boolean_mask(x, keep_x), tf.boolean_mask(labels, keep_x)
            rs = rl = None
            if ref is not None:
                rs, rl = tf.boolean_mask(ref, keep_ref), tf.boolean_mask(ref_labels, keep_ref)
            loss = circle_loss(xs, ls, rs, rl, **kwargs)
            total = tf.reduce_sum(loss * upstream)
        grads = tape.gradient(total, [x] if ref is None else [x, ref])
        return loss, [tf.convert_to_tensor(g) for g in grads]  # from IndexedSlices

    args = (tf.constant(x), None if ref is None else tf.constant(ref))
    loss, grads = tf.function(step, jit_compile=True)(*args)
    hlo = tf.function(step, jit_compile=True).experimental_get_compiler_ir(*args)(stage="hlo")
    assert "keras_margin_circle_loss" not in hlo and "while" in hlo
    want_loss, want_grads = step(*args)  # the CPU kernel on the selected rows
    assert loss.shape == want_loss.shape == (keep_x.sum(),)
    tol = 1e-10 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(loss, want_loss, rtol=tol, atol=tol * np.abs(want_loss).max())
    for g, wg in zip(grads, want_grads, strict=True):
        g, wg = np.asarray(g), np.asarray(wg)
        assert np.isfinite(g).all()
        np.testing.assert_allclose(g, wg, rtol=10 * tol, atol=10 * tol * np.abs(wg).max())


def _compiled_hlo(n, m, d):
    rng = np.random.default_rng(0)
    x = tf.constant(make_embeddings(rng, n, d))
    labels = tf.constant(make_labels(rng, n, "random"))
    ref = tf.constant(make_embeddings(rng, m, d))
    ref_labels = tf.constant(make_labels(rng, m, "random"))

    @tf.function(jit_compile=True)
    def step(x, ref):
        with tf.GradientTape() as tape:
            tape.watch([x, ref])
            loss = circle_loss(
                x, labels, ref, ref_labels, gamma=80.0, margin=0.4, remove_diagonal=True
            )
        return tape.gradient(loss, [x, ref])

    return step.experimental_get_compiler_ir(x, ref)(stage="optimized_hlo")


def test_nothing_of_size_n_by_m_is_compiled():
    """Forward and backward are While loops over [N, B] tiles: no N x M value exists."""
    hlo = _compiled_hlo(64, 5000, 16)
    assert len(re.findall(r"\bwhile\(", hlo)) >= 2
    dims = [{int(v) for v in s.split(",")} for s in re.findall(r"\[(\d+(?:,\d+)+)\]", hlo)]
    big = [s for s in dims if 64 in s and s & {5000, 5120}]  # M, and M padded to tiles
    assert not big, f"N x M shaped values in the compiled HLO: {big}"
    assert "64,1024]" in hlo  # five 1024-wide tiles


def test_jit_results_are_bitwise_reproducible(rng):
    """The loop order is fixed: two compilations and repeated calls agree bit for bit."""
    x, labels, ref, ref_labels = _inputs(rng, 300, 2100, 16, "mixed", np.float32)
    upstream = rng.random(300)
    fused, _ = _paths(labels, ref_labels, 3, gamma=80.0, margin=0.25, remove_diagonal=True)
    runs = [loss_and_gradients(fused, x, ref, upstream, "jit") for _ in range(3)]
    for loss, grads in runs[1:]:
        np.testing.assert_array_equal(loss, runs[0][0])
        for g, g0 in zip(grads, runs[0][1], strict=True):
            np.testing.assert_array_equal(g, g0)
