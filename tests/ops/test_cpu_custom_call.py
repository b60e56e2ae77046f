"""Under jit on CPU the fused op is an XLA custom call into the blocked CPU engine.

Checked here: the compiled HLO names the FFI targets (and does not with
KERAS_MARGIN_XLA_BLOCKED_HLO=1, which keeps the HLO lowering); values and gradients match
the CPU kernel and Keras; odd runtime values the CPU kernel rejects (negative offsets, an
offset with self_reference) get what the HLO lowering computes, since a custom call cannot
raise. Determinism across runs and thread counts is in test_determinism.py.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_margin.ops import circle_loss

from .helpers import make_case, make_embeddings, make_labels

FORWARD, BACKWARD = "keras_margin_circle_loss", "keras_margin_circle_loss_grad"
KWARGS = dict(gamma=80.0, margin=0.4, remove_diagonal=True)


def _loss_and_grads(x, labels, ref=None, ref_labels=None, upstream=None, **kwargs):
    """circle_loss and the gradients of sum(loss * upstream) wrt x (and ref)."""
    kwargs = {**KWARGS, **kwargs}
    with tf.GradientTape() as tape:
        tape.watch(x)
        if ref is not None:
            tape.watch(ref)
        loss = circle_loss(x, labels, ref, ref_labels, **kwargs)
        weights = tf.ones_like(loss) if upstream is None else tf.cast(upstream, loss.dtype)
        total = tf.reduce_sum(loss * weights)
    return loss, tape.gradient(total, [x] if ref is None else [x, ref])


def _compiled(fn, jit=True):
    """A fresh tf.function: tracing, hence the lowering's choice, happens at its first call."""
    return tf.function(fn, jit_compile=jit)


def _hlo(fn, *args):
    return _compiled(fn).experimental_get_compiler_ir(*args)(stage="hlo")


def _numpy(outputs):
    loss, grads = outputs
    return np.asarray(loss), [np.asarray(g) for g in grads]


@pytest.mark.parametrize("with_ref", [False, True])
def test_hlo_calls_the_engine_on_cpu(rng, with_ref):
    x = tf.constant(make_embeddings(rng, 16, 4))
    labels = tf.constant(make_labels(rng, 16, "random"))
    ref = tf.constant(make_embeddings(rng, 9, 4)) if with_ref else None
    ref_labels = tf.constant(make_labels(rng, 9, "random")) if with_ref else None
    hlo = _hlo(lambda x: _loss_and_grads(x, labels, ref, ref_labels), x)
    assert f'custom_call_target="{FORWARD}"' in hlo
    assert f'custom_call_target="{BACKWARD}"' in hlo
    assert "API_VERSION_TYPED_FFI" in hlo
    # The similarity matrix is the engine's business: no N x M product in the HLO.
    assert "dot(" not in hlo


def test_env_var_forces_the_hlo_lowering(rng, monkeypatch):
    x = tf.constant(make_embeddings(rng, 16, 4))
    labels = tf.constant(make_labels(rng, 16, "random"))

    def fn(x):
        return _loss_and_grads(x, labels)

    monkeypatch.setenv("KERAS_MARGIN_XLA_BLOCKED_HLO", "1")
    hlo = _hlo(fn, x)
    assert "keras_margin_circle_loss" not in hlo
    assert "dot(" in hlo
    # Read at each compilation: a fresh function sees the change.
    monkeypatch.setenv("KERAS_MARGIN_XLA_BLOCKED_HLO", "0")
    assert f'custom_call_target="{FORWARD}"' in _hlo(fn, x)


def test_hyperparameters_reach_the_call_exactly(rng):
    """gamma and margin travel as the bits of the double: 0.1 + 0.2 is no float32 number and
    no short decimal."""
    x = tf.constant(make_embeddings(rng, 8, 3, np.float64))
    labels = tf.constant(make_labels(rng, 8, "random"))
    margin = 0.1 + 0.2
    hlo = _hlo(lambda x: circle_loss(x, labels, gamma=80.0, margin=margin, remove_diagonal=True), x)
    bits = np.array(margin, np.float64).view(np.uint64)
    assert f"margin = 0x{int(bits):016X} : f64" in hlo


# (n, m, d, layout): m=None is self-reference. 1100 rows give ragged last blocks.
CASES = [
    (1, None, 3, "random"),
    (37, None, 5, "mixed"),
    (1100, None, 8, "random"),
    (40, None, 6, "singletons"),
    (30, None, 4, "one_class"),
    (37, 53, 9, "mixed"),
    (200, 70, 33, "random"),
    (700, 300, 16, "mixed"),
    (33, 20, 4, "singletons"),
]


@pytest.mark.parametrize("n,m,d,layout", CASES)
@pytest.mark.parametrize("remove_diagonal", [True, False])
def test_matches_cpu_kernel_and_keras(rng, n, m, d, layout, remove_diagonal):
    x, labels, ref, ref_labels = make_case(rng, n, m, d, layout)
    upstream = tf.constant(rng.random(n), tf.float32)
    x = tf.constant(x)
    ref = None if ref is None else tf.constant(ref)
    kwargs = dict(KWARGS, remove_diagonal=remove_diagonal)

    def fused(x, ref):
        return _loss_and_grads(x, labels, ref, ref_labels, upstream, **kwargs)

    jit = _numpy(_compiled(fused)(x, ref))
    kernel = _numpy(fused(x, ref))
    # Same engine, same block plan (the machine's CPU count, the pool's size by default).
    np.testing.assert_allclose(jit[0], kernel[0], rtol=1e-6, atol=1e-6)
    for g, k in zip(jit[1], kernel[1], strict=True):
        np.testing.assert_allclose(g, k, rtol=1e-5, atol=1e-6 * max(np.abs(k).max(), 1.0))

    def reference(x, ref):
        with tf.GradientTape() as tape:
            tape.watch([x] if ref is None else [x, ref])
            loss = keras.losses.circle(
                labels, x, ref_labels=ref_labels, ref_embeddings=ref, **kwargs
            )
            total = tf.reduce_sum(loss * upstream)
        return loss, tape.gradient(total, [x] if ref is None else [x, ref])

    want = _numpy(reference(x, ref))
    np.testing.assert_allclose(jit[0], want[0], rtol=1e-5, atol=1e-5 * max(1, want[0].max()))
    for g, w in zip(jit[1], want[1], strict=True):
        scale = max(np.abs(w).max(), 1e-3)
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=4e-7 * 80 * scale)


@pytest.mark.parametrize("n,m,d,layout", CASES[::2])
def test_float64_matches_keras_exactly(rng, n, m, d, layout):
    x, labels, ref, ref_labels = make_case(rng, n, m, d, layout, np.float64)
    x = tf.constant(x)
    ref = None if ref is None else tf.constant(ref)
    kwargs = dict(gamma=256.0, margin=0.25, remove_diagonal=True)

    def fused(x, ref):
        return _loss_and_grads(x, labels, ref, ref_labels, **kwargs)

    loss, grads = _numpy(_compiled(fused)(x, ref))
    assert loss.dtype == np.float64
    with tf.GradientTape() as tape:
        tape.watch([x] if ref is None else [x, ref])
        want = keras.losses.circle(labels, x, ref_labels=ref_labels, ref_embeddings=ref, **kwargs)
        total = tf.reduce_sum(want)
    want_grads = tape.gradient(total, [x] if ref is None else [x, ref])
    np.testing.assert_allclose(loss, want, rtol=1e-10, atol=1e-10)
    for g, w in zip(grads, want_grads, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-10 * max(np.abs(w).max(), 1.0))


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16])
@pytest.mark.parametrize("with_ref", [False, True])
def test_low_precision_matches_cpu_kernel(rng, dtype, with_ref):
    """Widened to float32 in HLO before the call and rounded back after it, as the CPU kernel
    widens and rounds: the two agree to the rounding of the outputs."""
    n, m, d = 60, 45, 16
    x = tf.cast(make_embeddings(rng, n, d), dtype)
    labels = make_labels(rng, n, "mixed")
    ref = tf.cast(make_embeddings(rng, m, d), dtype) if with_ref else None
    ref_labels = make_labels(rng, m, "random") if with_ref else None

    def fused(x, ref):
        return _loss_and_grads(x, labels, ref, ref_labels)

    jit, kernel = _numpy(_compiled(fused)(x, ref)), _numpy(fused(x, ref))
    assert jit[0].dtype == kernel[0].dtype
    eps = 2e-3 if dtype == tf.float16 else 1.6e-2
    np.testing.assert_allclose(
        jit[0].astype(np.float32), kernel[0].astype(np.float32), rtol=eps, atol=eps
    )
    for g, k in zip(jit[1], kernel[1], strict=True):
        g, k = g.astype(np.float32), k.astype(np.float32)
        np.testing.assert_allclose(g, k, rtol=eps, atol=eps * np.abs(k).max())


def test_int64_labels_stay_distinct(rng):
    """Labels that collide in their low 32 bits (or as float32) are different classes."""
    n, m, d = 40, 30, 6
    classes = rng.integers(0, 5, size=n + m)
    big = classes.astype(np.int64) * 2**32 + 7  # equal low halves
    x, ref = tf.constant(make_embeddings(rng, n, d)), tf.constant(make_embeddings(rng, m, d))

    def fused(x, ref, labels, ref_labels):
        return _loss_and_grads(x, labels, ref, ref_labels)

    jit = _numpy(_compiled(fused)(x, ref, tf.constant(big[:n]), tf.constant(big[n:])))
    dense = _numpy(fused(x, ref, classes[:n].astype(np.int32), classes[n:].astype(np.int32)))
    np.testing.assert_allclose(jit[0], dense[0], rtol=1e-6, atol=1e-6)
    for g, w in zip(jit[1], dense[1], strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def _unit(v):
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _dominant_dropped_pairs(rng, n, m, d, offset, self_reference):
    """Embeddings and labels where each pair (i, i + offset) is row i's hardest positive
    (a near-antipodal reference of its class), so that whether it is dropped shows in every
    output; with a random pair the dropped logit is usually lost in the log-sum-exp."""
    x = _unit(rng.normal(size=(n, d)))
    labels = rng.integers(0, 2, size=n).astype(np.int32)
    ref = x if self_reference else _unit(rng.normal(size=(m, d)))
    ref_labels = labels if self_reference else rng.integers(0, 2, size=m).astype(np.int32)
    # With self_reference a row can be both source and target: go in the order in which
    # every source is final before it is copied.
    rows = range(n) if offset >= 0 else range(n - 1, -1, -1)
    for i in rows:
        j = i + offset
        if 0 <= j < m and j != i and abs(offset) < 2**62:
            ref[j] = _unit(-x[i] + 0.1 * rng.normal(size=d))
            ref_labels[j] = labels[i]
    return x, labels, ref, ref_labels


@pytest.mark.parametrize("offset", [0, 3, 19, 20, 1000, 2**62])
def test_reference_set_offsets_match_cpu_kernel(rng, offset):
    """A runtime offset (a tensor argument, not a trace-time constant)."""
    x, labels, ref, ref_labels = _dominant_dropped_pairs(rng, 8, 20, 6, offset, False)
    x, ref = tf.constant(x), tf.constant(ref)

    def fused(x, ref, offset):
        return _loss_and_grads(x, labels, ref, ref_labels, diagonal_offset=offset)

    offset = tf.constant(offset, tf.int64)
    jit, kernel = _numpy(_compiled(fused)(x, ref, offset)), _numpy(fused(x, ref, offset))
    np.testing.assert_allclose(jit[0], kernel[0], rtol=1e-12, atol=1e-12)
    for g, k in zip(jit[1], kernel[1], strict=True):
        np.testing.assert_allclose(g, k, rtol=1e-11, atol=1e-12)


def _raw_forward_and_grad(op_lib, x, labels, ref, ref_labels, offset, self_reference):
    attrs = dict(KWARGS, self_reference=self_reference, diagonal_offset=offset)
    tstate = tf.float64 if x.dtype == tf.float64 else tf.float32
    loss, lse_pos, lse_neg = op_lib.keras_margin_circle_loss(
        x, labels, ref, ref_labels, Tstate=tstate, **attrs
    )
    grads = op_lib.keras_margin_circle_loss_grad(
        tf.ones_like(loss), x, labels, ref, ref_labels, lse_pos, lse_neg, **attrs
    )
    return loss, lse_pos, lse_neg, *grads


@pytest.mark.parametrize(
    "self_reference,offset",
    [
        (False, -1),
        (False, -7),
        (False, -16),
        (False, -(2**63)),
        (True, 3),
        (True, -2),
        (True, 16),
        (True, -(2**63)),
    ],
)
def test_values_the_kernel_rejects_get_the_hlo_lowerings_result(
    op_lib, rng, monkeypatch, self_reference, offset
):
    """The CPU kernel raises for these offsets; under XLA nothing can raise, so the custom
    call computes what the HLO lowering does: row i drops (i, i + offset) where that is a
    reference, and with self_reference the gradient of x sums both of its roles."""
    n, m, d = 16, 16 if self_reference else 24, 5
    x, labels, ref, ref_labels = _dominant_dropped_pairs(rng, n, m, d, offset, self_reference)
    x, ref = tf.constant(x), tf.constant(ref)
    if self_reference:
        ref = x

    def fn(x, ref, offset):
        return _raw_forward_and_grad(op_lib, x, labels, ref, ref_labels, offset, self_reference)

    offset = tf.constant(offset, tf.int64)
    got = [np.asarray(t) for t in _compiled(fn)(x, ref, offset)]
    monkeypatch.setenv("KERAS_MARGIN_XLA_BLOCKED_HLO", "1")
    want = [np.asarray(t) for t in _compiled(fn)(x, ref, offset)]
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("self_reference", [True, False])
def test_any_saved_state_gives_a_result(op_lib, rng, self_reference):
    """NaN, +-inf or inconsistent lse inputs reach the engine unchecked, as in the kernel."""
    n, d = 50, 4
    x = tf.constant(make_embeddings(rng, n, d))
    labels = tf.constant(rng.integers(0, 5, size=n))
    states = [np.nan, np.inf, -np.inf, 1e30, -1e30, 0.0, 3.0]
    lse_pos = tf.constant(rng.choice(states, size=(n, 2)), tf.float32)
    lse_neg = tf.constant(rng.choice(states, size=(n, 2)), tf.float32)

    def fn(x, lse_pos, lse_neg):
        return op_lib.keras_margin_circle_loss_grad(
            tf.ones([n]), x, labels, x, labels, lse_pos, lse_neg,
            **dict(KWARGS, self_reference=self_reference),
        )  # fmt: skip

    jit = [np.asarray(t) for t in _compiled(fn)(x, lse_pos, lse_neg)]
    kernel = [np.asarray(t) for t in fn(x, lse_pos, lse_neg)]
    for g, k in zip(jit, kernel, strict=True):
        assert g.shape == (n, d)
        np.testing.assert_allclose(g, k, rtol=1e-5, atol=1e-6, equal_nan=True)


def test_nan_embeddings_give_nan_rows(rng):
    x = make_embeddings(rng, 12, 4)
    x[3, 1] = np.nan
    labels = make_labels(rng, 12, "random")
    loss = _compiled(lambda x: circle_loss(x, labels, **KWARGS))(tf.constant(x))
    assert np.isnan(np.asarray(loss)).all()


@pytest.mark.parametrize("n,m,self_reference", [(0, 0, True), (0, 5, False), (4, 0, False)])
def test_empty_sets(op_lib, n, m, self_reference):
    d = 3
    x, ref = tf.ones([n, d]), tf.ones([m, d])
    labels, ref_labels = tf.range(n), tf.range(m)
    if self_reference:
        ref, ref_labels = x, labels

    def fn(x, ref):
        return _raw_forward_and_grad(op_lib, x, labels, ref, ref_labels, 0, self_reference)

    loss, lse_pos, lse_neg, grad_x, grad_ref = [np.asarray(t) for t in _compiled(fn)(x, ref)]
    np.testing.assert_array_equal(loss, np.zeros(n))
    np.testing.assert_array_equal(lse_pos, np.tile([-np.inf, 0.0], (n, 1)))
    np.testing.assert_array_equal(grad_x, np.zeros((n, d)))
    np.testing.assert_array_equal(grad_ref, np.zeros((m, d)))


def test_dynamic_shapes_take_the_hlo_lowering(rng):
    """Rows picked by tf.boolean_mask have a bounded dynamic size under XLA, which a custom
    call cannot take: the op compiles to the HLO lowering there, and still matches."""
    x = tf.constant(make_embeddings(rng, 40, 6))
    labels = tf.constant(make_labels(rng, 40, "random"), tf.int32)
    keep = tf.constant(rng.random(40) < 0.6)

    def fn(x, labels, keep):
        return _loss_and_grads(tf.boolean_mask(x, keep), tf.boolean_mask(labels, keep))

    hlo = _hlo(fn, x, labels, keep)
    assert "keras_margin_circle_loss" not in hlo
    got, want = _numpy(_compiled(fn)(x, labels, keep)), _numpy(fn(x, labels, keep))
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(got[1][0], want[1][0], rtol=1e-4, atol=1e-4)
