"""The fused Circle op against keras.losses.circle: values, gradients, dtypes, errors."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_margin
from keras_margin import ops as km_ops
from keras_margin.losses.circle_composite import pairwise_circle_loss
from keras_margin.ops import circle_loss

from .helpers import (
    blocked_hlo_forced,
    loss_and_gradients,
    make_case,
    make_embeddings,
    make_labels,
)


def test_custom_op_is_available():
    # Must fail, not skip, when the library was not built: the op is part of the package.
    assert km_ops.custom_op_available(), km_ops.custom_op_unavailable_reason()
    assert km_ops.custom_op_unavailable_reason() is None


# The op eagerly (its CPU kernel) and under XLA through both CPU lowerings.
EXECUTIONS = ["eager", "jit", "jit-hlo"]


def _in_mode(mode, fn):
    """fn as it runs in `mode`: eagerly, or compiled by XLA, "jit" (the custom call into the
    CPU engine) or "jit-hlo" (the blocked HLO lowering)."""
    if mode == "eager":
        return fn
    compiled = tf.function(fn, jit_compile=True)

    def call(*args):
        with blocked_hlo_forced(mode == "jit-hlo"):
            return compiled(*args)

    return call


def _keras_fn(labels, ref_labels, gamma, margin, remove_diagonal):
    def fn(x, ref):
        return keras.losses.circle(
            labels,
            x,
            ref_labels=ref_labels,
            ref_embeddings=ref,
            remove_diagonal=remove_diagonal,
            gamma=gamma,
            margin=margin,
        )

    return fn


def _op_fn(implementation, labels, ref_labels, gamma, margin, remove_diagonal):
    """keras_margin's circle through ``implementation``; no reference set when ref is None."""

    def fn(x, ref):
        return keras_margin.losses.circle(
            labels,
            x,
            ref_labels=None if ref is None else ref_labels,
            ref_embeddings=ref,
            remove_diagonal=remove_diagonal,
            gamma=gamma,
            margin=margin,
            implementation=implementation,
        )

    return fn


def _assert_close_f32(got, want, gamma):
    """float32 tolerance. Values: rounding of O(gamma) logits. Gradients: the softmax weights
    exp(L - lse) carry a relative error ~ gamma * eps32, so the bound scales with gamma."""
    loss, grads = got
    ref_loss, ref_grads = want
    np.testing.assert_allclose(
        loss, ref_loss, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(ref_loss).max(initial=0))
    )
    for g, rg in zip(grads, ref_grads, strict=True):
        scale = max(np.abs(rg).max(initial=0), 1e-3)
        np.testing.assert_allclose(g, rg, rtol=1e-4, atol=4e-7 * max(gamma, 50) * scale)


def _assert_close_f64(got, want):
    loss, grads = got
    ref_loss, ref_grads = want
    np.testing.assert_allclose(
        loss, ref_loss, rtol=1e-10, atol=1e-10 * max(1.0, np.abs(ref_loss).max(initial=0))
    )
    for g, rg in zip(grads, ref_grads, strict=True):
        np.testing.assert_allclose(
            g, rg, rtol=1e-9, atol=1e-10 * max(np.abs(rg).max(initial=0), 1.0)
        )


# (n, m, d, layout): m=None means no reference set (self-reference mode).
SHAPES = [
    (1, None, 3, "random"),
    (2, None, 1, "random"),
    (3, None, 2, "mixed"),
    (37, None, 5, "mixed"),
    (129, None, 17, "random"),
    (300, None, 64, "mixed"),
    (1100, None, 8, "random"),  # 256-row tiles with a ragged last block
    (40, None, 6, "singletons"),
    (40, None, 6, "one_class"),
    (1, 1, 3, "random"),
    (3, 2, 2, "random"),
    (37, 53, 9, "mixed"),
    (200, 70, 33, "random"),
    (70, 300, 16, "mixed"),
    (33, 20, 4, "singletons"),
    (30, 30, 4, "one_class"),
]


@pytest.mark.parametrize("n,m,d,layout", SHAPES)
@pytest.mark.parametrize(
    "gamma,margin,remove_diagonal",
    [(80.0, 0.4, True), (1.0, 0.0, False), (256.0, 0.25, True), (1024.0, 0.4, False)],
)
def test_matches_keras_float32_eager(
    rng, implementation, n, m, d, layout, gamma, margin, remove_diagonal
):
    margin = float(np.float32(margin))  # the op's attrs are float32
    x, labels, ref, ref_labels = make_case(rng, n, m, d, layout)
    upstream = rng.random(n)
    want = loss_and_gradients(
        _keras_fn(labels, ref_labels, gamma, margin, remove_diagonal), x, ref, upstream
    )
    got = loss_and_gradients(
        _op_fn(implementation, labels, ref_labels, gamma, margin, remove_diagonal), x, ref, upstream
    )
    _assert_close_f32(got, want, gamma)


@pytest.mark.parametrize("n,m,d,layout", SHAPES[::2])
@pytest.mark.parametrize("gamma", [1.0, 80.0, 256.0, 1024.0])
@pytest.mark.parametrize("margin", [0.0, 0.25, 0.4])
def test_matches_keras_float64(rng, implementation, n, m, d, layout, gamma, margin):
    """In float64 both sides are exact to ~1e-12: this pins the math, including the gradient
    of the clamped weights and the distance clamp. gamma and margin reach the op exactly (0.4
    is no float32 number)."""
    remove_diagonal = bool(rng.integers(0, 2))
    x, labels, ref, ref_labels = make_case(rng, n, m, d, layout, np.float64)
    upstream = rng.random(n)
    want = loss_and_gradients(
        _keras_fn(labels, ref_labels, gamma, margin, remove_diagonal), x, ref, upstream
    )
    got = loss_and_gradients(
        _op_fn(implementation, labels, ref_labels, gamma, margin, remove_diagonal), x, ref, upstream
    )
    _assert_close_f64(got, want)


@pytest.mark.parametrize("mode", ["function", "jit", "jit-hlo"])
@pytest.mark.parametrize(
    "n,m,d,layout,gamma,margin,remove_diagonal",
    [
        (37, None, 5, "mixed", 80.0, 0.4, True),
        (3, None, 2, "random", 1024.0, 0.0, False),
        (64, 45, 7, "mixed", 256.0, 0.25, True),
        (20, None, 4, "singletons", 80.0, 0.4, True),
        (20, 11, 4, "one_class", 80.0, 0.4, False),
    ],
)
def test_matches_keras_compiled(
    rng, implementation, mode, n, m, d, layout, gamma, margin, remove_diagonal
):
    x, labels, ref, ref_labels = make_case(rng, n, m, d, layout)
    upstream = rng.random(n)
    want = loss_and_gradients(
        _keras_fn(labels, ref_labels, gamma, margin, remove_diagonal), x, ref, upstream
    )
    got = loss_and_gradients(
        _op_fn(implementation, labels, ref_labels, gamma, margin, remove_diagonal),
        x,
        ref,
        upstream,
        mode,
    )
    _assert_close_f32(got, want, gamma)


@pytest.mark.parametrize("mode", ["eager", "function", "jit", "jit-hlo"])
@pytest.mark.parametrize("offset", [0, 1, 5, 12, 19, 20, 1000])
def test_diagonal_offset_matches_composite(rng, mode, offset):
    """Anchors that are rows offset, offset + 1, ... of a batch the 20 references are aligned
    with: with remove_diagonal, anchor i drops reference i + offset (none beyond 20)."""
    x, labels, ref, ref_labels = make_case(rng, 8, 20, 6, "random", np.float64)
    upstream = rng.random(8)
    kwargs = dict(gamma=80.0, margin=0.4, remove_diagonal=True)

    def fused(x, ref):
        return circle_loss(x, labels, ref, ref_labels, diagonal_offset=offset, **kwargs)

    def composite(x, ref):
        return pairwise_circle_loss(x, labels, ref, ref_labels, diagonal_offset=offset, **kwargs)

    got = loss_and_gradients(fused, x, ref, upstream, mode)
    _assert_close_f64(got, loss_and_gradients(composite, x, ref, upstream))


@pytest.mark.parametrize("implementation", ["fused", "composite"])
@pytest.mark.parametrize("offset", [0, 5, 12])
def test_diagonal_offset_is_the_global_row(rng, implementation, offset):
    """Rows offset..offset+7 of a batch, against the whole batch as the reference set, lose
    what Keras gives those rows of the whole batch: the offset is their global row."""
    batch, labels = make_embeddings(rng, 20, 6, np.float64), make_labels(rng, 20, "random")
    kwargs = dict(gamma=80.0, margin=0.4, remove_diagonal=True)
    whole = keras.losses.circle(labels, batch, ref_labels=labels, ref_embeddings=batch, **kwargs)
    rows = slice(offset, offset + 8)
    path = circle_loss if implementation == "fused" else pairwise_circle_loss
    sliced = path(batch[rows], labels[rows], batch, labels, diagonal_offset=offset, **kwargs)
    np.testing.assert_allclose(sliced, np.asarray(whole)[rows], rtol=1e-12)


def test_jit_hlo_contains_lowering(rng, monkeypatch):
    # On CPU jit is a custom call into the CPU engine (test_cpu_custom_call.py); the variable
    # keeps the HLO lowering that the other XLA backends get.
    monkeypatch.setenv("KERAS_MARGIN_XLA_BLOCKED_HLO", "1")
    x = tf.constant(make_embeddings(rng, 16, 4))
    labels = tf.constant(make_labels(rng, 16, "random"))
    fn = tf.function(
        lambda x: circle_loss(x, labels, gamma=80.0, margin=0.4, remove_diagonal=True),
        jit_compile=True,
    )
    hlo = fn.experimental_get_compiler_ir(x)(stage="hlo")
    assert "dot(" in hlo and "exponential" in hlo


@pytest.mark.parametrize("mode", EXECUTIONS)
@pytest.mark.parametrize("self_reference", [True, False])
def test_compute_gradient_float64(rng, mode, self_reference):
    n, m, d = 9, 7, 4
    x = make_embeddings(rng, n, d, np.float64)
    labels = np.array([0, 1, 0, 2, 1, 3, 0, 2, 4])
    ref = make_embeddings(rng, m, d, np.float64)
    ref_labels = np.array([1, 0, 2, 5, 0, 1, 3])
    kwargs = dict(gamma=80.0, margin=0.25, remove_diagonal=True)
    if self_reference:
        args = [x]

        def fn(x):
            return circle_loss(x, labels, **kwargs)
    else:
        args = [x, ref]

        def fn(x, ref):
            return circle_loss(x, labels, ref, ref_labels, **kwargs)

    theoretical, numerical = tf.test.compute_gradient(_in_mode(mode, fn), args, delta=1e-6)
    for t, nm in zip(theoretical, numerical, strict=True):
        np.testing.assert_allclose(t, nm, rtol=1e-5, atol=1e-5 * np.abs(nm).max())


@pytest.mark.parametrize("dtype,rtol", [(tf.float16, 2e-3), (tf.bfloat16, 1.6e-2)])
@pytest.mark.parametrize("with_ref", [False, True])
@pytest.mark.parametrize("mode", EXECUTIONS)
def test_low_precision_inputs(rng, dtype, rtol, with_ref, mode):
    """half/bfloat16 are widened and accumulated in float32: the only extra error is the
    rounding of the outputs to the input dtype."""
    n, m, d = 50, 30, 16
    x = tf.cast(make_embeddings(rng, n, d), dtype)
    labels = make_labels(rng, n, "mixed")
    ref = tf.cast(make_embeddings(rng, m, d), dtype) if with_ref else None
    ref_labels = make_labels(rng, m, "random") if with_ref else None
    upstream = rng.random(n)
    kwargs = dict(gamma=80.0, margin=0.25, remove_diagonal=True)
    loss, grads = loss_and_gradients(
        lambda x, ref: circle_loss(x, labels, ref, ref_labels, **kwargs), x, ref, upstream, mode
    )
    as32 = None if ref is None else tf.cast(ref, tf.float32)
    want_loss, want_grads = loss_and_gradients(
        _keras_fn(labels, ref_labels, kwargs["gamma"], kwargs["margin"], True),
        tf.cast(x, tf.float32),
        as32,
        upstream,
    )
    np.testing.assert_allclose(loss, want_loss, rtol=rtol, atol=rtol)
    for g, wg in zip(grads, want_grads, strict=True):
        np.testing.assert_allclose(g, wg, rtol=rtol, atol=rtol * np.abs(wg).max())


@pytest.mark.parametrize("mode", EXECUTIONS)
@pytest.mark.parametrize("label_dtype", [np.int32, np.int64, np.float32])
def test_label_dtypes_and_shapes(rng, mode, label_dtype):
    x = tf.constant(make_embeddings(rng, 30, 5))
    labels = make_labels(rng, 30, "mixed")
    kwargs = dict(gamma=80.0, margin=0.4, remove_diagonal=True)
    want = circle_loss(x, labels.astype(np.int32), **kwargs)
    # Large int64 values must stay distinct (no float round trip).
    big = labels.astype(np.int64) * (2**40) if label_dtype == np.int64 else labels
    got = _in_mode(
        mode, lambda x: circle_loss(x, big.astype(label_dtype).reshape(-1, 1), **kwargs)
    )(x)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    mixed = _in_mode(
        mode,
        lambda x: circle_loss(x, labels.astype(np.int32), x, labels.astype(np.int64), **kwargs),
    )(x)
    np.testing.assert_allclose(mixed, want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("mode", EXECUTIONS)
def test_int64_labels_beyond_float_precision(rng, mode):
    x = tf.constant(make_embeddings(rng, 4, 3))
    # Distinct int64 labels that collide once cast to float32.
    labels = np.array([2**40, 2**40 + 1, 2**40, 2**40 + 1], np.int64)
    loss = _in_mode(
        mode, lambda x: circle_loss(x, labels, gamma=80.0, margin=0.4, remove_diagonal=True)
    )(x)
    want = keras.losses.circle(np.array([0, 1, 0, 1]), x, gamma=80.0, margin=0.4)
    np.testing.assert_allclose(loss, want, rtol=1e-5)


@pytest.mark.parametrize("mode", EXECUTIONS)
@pytest.mark.parametrize("with_ref", [False, True])
def test_empty_batch(mode, with_ref):
    labels = tf.zeros([0], tf.int32)
    ref = tf.random.normal([5, 8]) if with_ref else None
    ref_labels = tf.range(5) if with_ref else None

    def loss_and_grad(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = circle_loss(
                x, labels, ref, ref_labels, gamma=80.0, margin=0.4, remove_diagonal=True
            )
        return loss, tape.gradient(loss, x)

    loss, grad = _in_mode(mode, loss_and_grad)(tf.zeros([0, 8]))
    assert loss.shape == (0,)
    assert grad.shape == (0, 8)


@pytest.mark.parametrize("mode", EXECUTIONS)
def test_empty_reference_and_zero_dim(rng, mode):
    x = tf.constant(make_embeddings(rng, 6, 3))
    labels = tf.constant([0, 1, 0, 1, 2, 2])
    kwargs = dict(gamma=80.0, margin=0.4, remove_diagonal=True)
    no_refs = tf.zeros([0, 3]), tf.zeros([0], tf.int32)
    loss = _in_mode(mode, lambda x: circle_loss(x, labels, *no_refs, **kwargs))(x)
    np.testing.assert_array_equal(loss, np.zeros(6))
    # Embeddings with no column are a caller's bug, refused rather than scored (Keras scores
    # them as if every similarity were 0). Traced with the static shape, the shape function
    # refuses it (ValueError); test_op_validation.py has the compile-time checks.
    error = tf.errors.InvalidArgumentError if mode == "eager" else ValueError
    with pytest.raises(error, match=r"at least one column \(D >= 1\)"):
        _in_mode(mode, lambda x: circle_loss(x, labels, **kwargs))(tf.zeros([6, 0]))


@pytest.mark.parametrize("mode", EXECUTIONS)
def test_degenerate_rows_have_zero_gradient_not_nan(rng, mode):
    x = make_embeddings(rng, 6, 4)
    for labels in ([0, 1, 2, 3, 4, 5], [3] * 6):
        loss, (grad,) = loss_and_gradients(
            lambda x, _, labels=labels: circle_loss(
                x, labels, gamma=1024.0, margin=0.4, remove_diagonal=True
            ),
            x,
            None,
            np.ones(6),
            mode,
        )
        np.testing.assert_array_equal(loss, np.zeros(6))
        np.testing.assert_array_equal(grad, np.zeros((6, 4)))


def _pairs_far_apart_in_logit(rng, n, d):
    """n / 2 classes of two unit rows: in every other class the two are nearly equal
    (similarity 0.99, positive logit -12.8 at gamma 80 and margin 0.4), in the rest orthogonal
    (logit 67.2), so a tile's rows have positive log-sum-exps about 80 apart."""
    x = make_embeddings(rng, n, d)
    for k in range(0, n, 2):
        u = x[k]
        v = rng.normal(size=d)
        v -= v.dot(u) * u
        v /= np.linalg.norm(v)
        x[k + 1] = 0.99 * u + np.sqrt(1 - 0.99**2) * v if k % 4 == 0 else v
    return np.repeat(np.arange(n // 2), 2), x.astype(np.float32)


@pytest.mark.parametrize("mode", EXECUTIONS)
@pytest.mark.parametrize("upstream", [1e-30, 1e30])
def test_gradient_scales_with_a_tiny_or_huge_upstream_gradient(rng, mode, upstream):
    """The backward's weights carry the upstream gradient. Where the CPU engine shares one
    exponential per pair across a tile, a row's weight relative to the tile's reference,
    upstream * exp(ref - lse), can leave float32's normal range although every true weight is
    inside it (1e30 made it overflow to NaN); such a tile must take the exact path. So the
    gradient for an upstream of 1e-30 or 1e30 is that for 1, scaled, row by row (several tiles,
    the diagonal ones included; below about 1e-31 float32's own range blurs the comparison, on
    the composite path too)."""
    labels, x = _pairs_far_apart_in_logit(rng, 300, 16)
    fn = _op_fn("fused", labels, None, 80.0, 0.4, remove_diagonal=True)
    _, (unit,) = loss_and_gradients(fn, x, None, np.ones(300), mode)
    _, (scaled,) = loss_and_gradients(fn, x, None, np.full(300, upstream), mode)
    row_scale = np.abs(unit).max(axis=1, keepdims=True)
    assert np.all(row_scale > 0)
    assert np.all(np.isfinite(scaled))
    assert np.max(np.abs(scaled / upstream - unit) / row_scale) < 1e-4


class TestRawOpValidation:
    """Bad shapes and attributes raise InvalidArgumentError from the kernel; nothing crashes."""

    ATTRS = dict(gamma=80.0, margin=0.4, remove_diagonal=True)

    def _call(self, lib, x, labels, ref, ref_labels, **overrides):
        attrs = {**self.ATTRS, **overrides}
        return lib.keras_margin_circle_loss(x, labels, ref, ref_labels, **attrs)

    @pytest.mark.parametrize(
        "x_shape,labels_shape,ref_shape,ref_labels_shape,match",
        [
            ([4], [4], [4, 3], [4], "embeddings must have rank 2"),
            ([4, 3], [4, 1], [4, 3], [4], "labels must have rank 1"),
            ([4, 3], [5], [4, 3], [4], "labels must have length 4"),
            ([4, 3], [4], [4, 2], [4], "same dimension D"),
            ([4, 3], [4], [5, 3], [4], "ref_labels must have length 5"),
            ([4, 3], [4], [2, 3, 1], [2], "ref_embeddings must have rank 2"),
        ],
    )
    def test_shapes(self, op_lib, x_shape, labels_shape, ref_shape, ref_labels_shape, match):
        with pytest.raises(tf.errors.InvalidArgumentError, match=match):
            self._call(
                op_lib,
                tf.zeros(x_shape),
                tf.zeros(labels_shape, tf.int32),
                tf.zeros(ref_shape),
                tf.zeros(ref_labels_shape, tf.int32),
            )

    def test_self_reference_needs_same_rows(self, op_lib):
        with pytest.raises(tf.errors.InvalidArgumentError, match="self_reference"):
            self._call(
                op_lib,
                tf.zeros([4, 3]),
                tf.zeros([4], tf.int32),
                tf.zeros([5, 3]),
                tf.zeros([5], tf.int32),
                self_reference=True,
            )

    @pytest.mark.parametrize(
        "overrides,match",
        [
            (dict(gamma=0.0), "gamma"),
            (dict(gamma=-1.0), "gamma"),
            (dict(gamma=float("inf")), "gamma"),
            (dict(gamma=float("nan")), "gamma"),
            (dict(margin=float("nan")), "margin"),
            (dict(Tstate=tf.float64), "Tstate"),
        ],
    )
    def test_attrs(self, op_lib, overrides, match):
        with pytest.raises(tf.errors.InvalidArgumentError, match=match):
            self._call(
                op_lib,
                tf.zeros([4, 3]),
                tf.zeros([4], tf.int32),
                tf.zeros([4, 3]),
                tf.zeros([4], tf.int32),
                **overrides,
            )

    def test_grad_op_shapes(self, op_lib):
        x, labels = tf.zeros([4, 3]), tf.zeros([4], tf.int32)
        lse = tf.zeros([4, 2])
        with pytest.raises(tf.errors.InvalidArgumentError, match="grad_loss must have length 4"):
            op_lib.keras_margin_circle_loss_grad(
                tf.zeros([3]), x, labels, x, labels, lse, lse, **self.ATTRS
            )
        with pytest.raises(
            tf.errors.InvalidArgumentError, match=r"lse_neg must have shape \[N, 2\] = \[4, 2\]"
        ):
            op_lib.keras_margin_circle_loss_grad(
                tf.zeros([4]), x, labels, x, labels, lse, tf.zeros([4]), **self.ATTRS
            )

    def test_kernel_checks_unknown_static_shapes(self, op_lib):
        """Inside a graph with unknown shapes only the kernel can catch the mismatch."""

        @tf.function(
            input_signature=[tf.TensorSpec(None, tf.float32), tf.TensorSpec(None, tf.int32)]
        )
        def fn(x, labels):
            return self._call(op_lib, x, labels, x, labels)[0]

        with pytest.raises(tf.errors.InvalidArgumentError, match="labels must have length"):
            fn(tf.zeros([4, 3]), tf.zeros([5], tf.int32))
        with pytest.raises(tf.errors.InvalidArgumentError, match="embeddings must have rank 2"):
            fn(tf.zeros([4, 3, 1]), tf.zeros([4], tf.int32))

    def test_jit_reports_invalid_argument(self, op_lib):
        fn = tf.function(
            lambda x, labels: self._call(op_lib, x, labels, x, labels)[0],
            input_signature=[tf.TensorSpec(None, tf.float32), tf.TensorSpec(None, tf.int32)],
            jit_compile=True,
        )
        with pytest.raises(tf.errors.InvalidArgumentError, match="labels must have length"):
            fn(tf.zeros([4, 3]), tf.zeros([5], tf.int32))
