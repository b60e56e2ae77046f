"""Fuzzing Circle: the fused C++ op against the composite keras.ops path, eager and under XLA.

A case is a ``CircleSpec``: sizes, dtype, label layout and label values, an embedding family,
the hyper-parameters and a NumPy seed, from which ``build`` makes the arrays. Hypothesis prints
the spec of a falsifying case, and ``build(spec)`` reproduces its inputs exactly.

Properties:

- nothing raises, and values and gradients (of ``sum(loss * upstream)`` with respect to the
  embeddings and the reference embeddings) are finite;
- fused and composite agree in value and gradient within the rounding of the compute dtype;
- labels are compared only for equality: any relabelling with the same equality pattern
  (negative ids, int64 ids beyond float precision, (N, 1) labels, mixed int32/int64) gives
  bitwise the same result;
- without a reference set, the fused op's symmetric kernel agrees with the general kernel
  given the batch as its own reference set;
- in float32, over the whole domain (norms from 1e-3 to 100, the same for every row or mixed
  within a tile, D up to 3,000, margins from -1 to 1, ties), the fused op through the CPU
  kernel, the XLA custom call and the blocked HLO lowering meets Circle's accuracy contract
  against a float64 evaluation (``tests/accuracy.py``).

Run: ``python -m pytest -q tests/fuzz`` (the small "ci" profile) or
``KERAS_MARGIN_FUZZ=long python -m pytest -q -m fuzz tests/fuzz --hypothesis-show-statistics``.
"""

import dataclasses
import functools

import numpy as np
import pytest
import tensorflow as tf
from accuracy import assert_meets_contract, float64_circle
from hypothesis import event, example, given, settings
from hypothesis import strategies as st
from inputs import unit_rows
from ops.helpers import blocked_hlo_forced

import keras_margin
from keras_margin.losses.circle import MIN_GAMMA

from . import budget

pytestmark = pytest.mark.fuzz

DTYPES = ("float16", "bfloat16", "float32", "float64")
EMBEDDINGS = ("unit", "over_unit", "duplicated", "identical", "basis")
# Off the unit sphere, where only the accuracy contract is checked: every row of one norm
# between 1e-3 and 100, or each row its own norm in that range (mixed within every tile).
SCALED_EMBEDDINGS = ("one_norm", "mixed_norms")
LAYOUTS = ("one_class", "distinct", "few")
LABEL_DTYPES = ("int32", "int64")
EPS = {"float16": 2.0**-10, "bfloat16": 2.0**-7, "float32": 2.0**-23, "float64": 2.0**-52}
TINY = {"float16": 2.0**-14, "bfloat16": 2.0**-126, "float32": 2.0**-126, "float64": 2.0**-1022}
# Under XLA a case compiles one program per implementation, so its shapes come from a few
# buckets that later cases reuse, and gamma and margin (attributes baked into the program)
# from a few values.
JIT_SIZES = {"n": (0, 1, 9, 300), "d": (1, 16, 64), "m": (None, 0, 7, 200)}
JIT_GAMMAS = (MIN_GAMMA, 1.0, 80.0, 1024.0)
JIT_MARGINS = (-1.0, 0.0, 0.4, 1.0)


@dataclasses.dataclass(frozen=True)
class CircleSpec:
    n: int
    d: int
    m: int | None  # None: no reference set, the batch is its own reference
    dtype: str
    embeddings: str
    layout: str
    classes: int  # for the "few" layout
    label_dtypes: tuple[str, str]  # labels, reference labels
    column_labels: bool  # labels of shape (N, 1) instead of (N,)
    label_offset: int
    label_stride: int
    gamma: float
    margin: float
    remove_diagonal: bool
    seed: int


@dataclasses.dataclass
class CircleInputs:
    """Arrays of a case; the embeddings are float64 holding values exact in the case's dtype."""

    x: np.ndarray
    labels: np.ndarray
    ref: np.ndarray | None
    ref_labels: np.ndarray | None
    upstream: np.ndarray


def compute_dtype(dtype):
    """The dtype the fused op accumulates in: float16 and bfloat16 are widened to float32."""
    return "float64" if dtype == "float64" else "float32"


def underflow(spec):
    """Absolute error from the bottom of the range: a subnormal step of the case's dtype, or
    (with gamma near 2**-126) intermediates that one implementation flushes to zero and the
    other does not, a few of the compute dtype's smallest normal numbers."""
    return max(TINY[spec.dtype] * EPS[spec.dtype], 64 * TINY[compute_dtype(spec.dtype)])


# Any double: the op takes gamma and margin exactly (see
# test_float64_keeps_hyperparameters_exact); gamma starts at validate_circle_args's minimum.
GAMMAS = st.floats(MIN_GAMMA, 1024.0)
MARGINS = st.floats(-1.0, 1.0)


@st.composite
def circle_specs(draw, compiled=False, self_reference=False, scaled=False):
    """Cases of unit-norm families, or with ``scaled`` of every family in float32, with D
    up to 3,000."""
    if compiled:
        n, d = draw(st.sampled_from(JIT_SIZES["n"])), draw(st.sampled_from(JIT_SIZES["d"]))
        m = None if self_reference else draw(st.sampled_from(JIT_SIZES["m"]))
        gamma, margin = draw(st.sampled_from(JIT_GAMMAS)), draw(st.sampled_from(JIT_MARGINS))
    else:
        n = draw(st.integers(0, 300))
        d = draw(
            st.integers(1, 64) | st.sampled_from([512, 3000]) if scaled else st.integers(1, 64)
        )
        m = None if self_reference else draw(st.none() | st.integers(0, 300))
        gamma, margin = draw(GAMMAS), draw(MARGINS)
    label_dtypes = (draw(st.sampled_from(LABEL_DTYPES)), draw(st.sampled_from(LABEL_DTYPES)))
    info = np.iinfo(np.int32 if "int32" in label_dtypes else np.int64)
    # Ids are offset + stride * class for class < n + m + 6 (see build), anywhere in the
    # dtype's range: with stride 1, ids beyond 2**24 collide in float32 and beyond 2**53 in
    # float64, so a float round trip would merge classes.
    span = n + (m or 0) + 6
    stride = draw(st.sampled_from([s for s in (1, 3, 2**20, 2**40) if s * span < info.max]))
    offset = draw(st.integers(int(info.min), int(info.max) - stride * span))
    return CircleSpec(
        n=n,
        d=d,
        m=m,
        dtype="float32" if scaled else draw(st.sampled_from(DTYPES)),
        embeddings=draw(st.sampled_from(EMBEDDINGS + SCALED_EMBEDDINGS if scaled else EMBEDDINGS)),
        layout=draw(st.sampled_from(LAYOUTS)),
        classes=draw(st.integers(2, 5)),
        label_dtypes=label_dtypes,
        column_labels=draw(st.booleans()),
        label_offset=offset,
        label_stride=stride,
        gamma=gamma,
        margin=margin,
        remove_diagonal=draw(st.booleans()),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


def round_to(values, dtype):
    return tf.cast(tf.cast(values, dtype), tf.float64).numpy()


def make_embeddings(rng, kind, n, m, d):
    """[n, d] embeddings and [m, d] reference embeddings of the family ``kind``.

    "over_unit" rows have norms up to 5% above 1, where the distance clamp max(1 - s, 0) is
    active. "duplicated" rows are drawn with replacement from a small pool shared by both sets,
    so that exact copies (similarity 1, the clamp's kink) carry the same and other labels.
    "basis" rows are signed one-hot vectors: every similarity is -1, 0 or 1 exactly in every
    dtype and summation order, so both implementations sit on the kinks themselves.
    """
    if kind == "unit":
        return unit_rows(rng, n, d), unit_rows(rng, m, d)
    if kind == "over_unit":
        x, ref = unit_rows(rng, n, d), unit_rows(rng, m, d)
        return (
            x * (1 + rng.uniform(1e-3, 5e-2, size=(n, 1))),
            ref * (1 + rng.uniform(1e-3, 5e-2, size=(m, 1))),
        )
    if kind == "duplicated":
        pool = unit_rows(rng, 1 + (n + m) // 4, d)
        return pool[rng.integers(len(pool), size=n)], pool[rng.integers(len(pool), size=m)]
    if kind == "identical":
        row = unit_rows(rng, 1, d)
        return np.repeat(row, n, axis=0), np.repeat(row, m, axis=0)
    if kind in SCALED_EMBEDDINGS:
        shape = (1, 1) if kind == "one_norm" else (n + m, 1)
        rows = unit_rows(rng, n + m, d) * 10.0 ** rng.uniform(-3, 2, size=shape)
        return rows[:n], rows[n:]
    if kind == "basis":
        rows = np.zeros((n + m, d))
        rows[np.arange(n + m), rng.integers(d, size=n + m)] = rng.choice([-1.0, 1.0], size=n + m)
        return rows[:n], rows[n:]
    raise AssertionError(kind)


def make_classes(rng, spec):
    """Class indices of the rows and of the reference rows, some of them unseen in the batch."""
    n, m = spec.n, spec.m or 0
    if spec.layout == "one_class":
        return np.zeros(n, int), rng.integers(0, 2, size=m)
    if spec.layout == "distinct":
        return np.arange(n), rng.integers(0, n + m + 1, size=m)
    return rng.integers(0, spec.classes, size=n), rng.integers(0, spec.classes + 1, size=m)


def build(spec):
    rng = np.random.default_rng(spec.seed)
    x, ref = make_embeddings(rng, spec.embeddings, spec.n, spec.m or 0, spec.d)
    classes, ref_classes = make_classes(rng, spec)
    # A shuffled class-to-id table, so that ids are neither sorted nor contiguous.
    table = spec.label_offset + spec.label_stride * rng.permutation(spec.n + (spec.m or 0) + 6)

    def ids(classes, dtype):
        values = table[classes].astype(dtype)
        return values.reshape(-1, 1) if spec.column_labels else values

    upstream = round_to(rng.random(spec.n), spec.dtype)
    labels = ids(classes, spec.label_dtypes[0])
    if spec.m is None:
        return CircleInputs(round_to(x, spec.dtype), labels, None, None, upstream)
    ref_labels = ids(ref_classes, spec.label_dtypes[1])
    return CircleInputs(
        round_to(x, spec.dtype), labels, round_to(ref, spec.dtype), ref_labels, upstream
    )


def loss_and_grads(x, labels, ref, ref_labels, upstream, **circle_kwargs):
    """Per-row losses and the gradients of sum(loss * upstream) for x and, if given, ref."""
    with tf.GradientTape() as tape:
        tape.watch(x)
        if ref is not None:
            tape.watch(ref)
        loss = keras_margin.losses.circle(
            labels, x, ref_labels=ref_labels, ref_embeddings=ref, **circle_kwargs
        )
        total = tf.reduce_sum(loss * tf.cast(upstream, loss.dtype))
    sources = [x] if ref is None else [x, ref]
    return loss, tape.gradient(total, sources, unconnected_gradients="zero")


@functools.cache
def compiled_loss_and_grads(blocked_hlo=False, **circle_kwargs):
    """One XLA function per configuration and lowering, traced once per input signature: the
    shapes come from JIT_SIZES, so the traces are bounded. (reduce_retracing would relax the
    labels to unknown rank once it has seen (N,) and (N, 1): test_labels_of_unknown_rank's
    bug.) With ``blocked_hlo`` the op compiles to the blocked HLO lowering, which
    KERAS_MARGIN_XLA_BLOCKED_HLO selects at compile time, so it needs functions of its own."""
    del blocked_hlo  # Only a part of the cache key.
    return tf.function(functools.partial(loss_and_grads, **circle_kwargs), jit_compile=True)


def evaluate(
    spec, inputs, implementation, dtype=None, compiled=False, labels=None, blocked_hlo=False
):
    """(loss, [grad_x] or [grad_x, grad_ref]) as float64 arrays.

    ``dtype`` overrides the case's dtype (to evaluate a reference in the compute dtype) and
    ``labels`` the case's (labels, ref_labels); ``blocked_hlo`` compiles the blocked HLO
    lowering where XLA on the CPU would call the CPU engine.
    """
    dtype = dtype or spec.dtype
    labels, ref_labels = labels or (inputs.labels, inputs.ref_labels)
    kwargs = dict(
        gamma=spec.gamma,
        margin=spec.margin,
        remove_diagonal=spec.remove_diagonal,
        implementation=implementation,
    )
    fn = (
        compiled_loss_and_grads(blocked_hlo, **kwargs)
        if compiled
        else functools.partial(loss_and_grads, **kwargs)
    )
    with blocked_hlo_forced(blocked_hlo):
        loss, grads = fn(
            tf.constant(inputs.x, dtype),
            tf.constant(labels),
            None if inputs.ref is None else tf.constant(inputs.ref, dtype),
            None if ref_labels is None else tf.constant(ref_labels),
            tf.constant(inputs.upstream, dtype),
        )
    as_f64 = [tf.cast(t, tf.float64).numpy() for t in (loss, *grads)]
    return as_f64[0], as_f64[1:]


def flat(labels):
    return None if labels is None else labels.reshape(-1)


def on_clamp_kink(spec, inputs):
    """Whether a negative pair's similarity is within rounding of 1, the distance clamp's kink.

    There the loss has a corner (the gradient of d = max(1 - s, 0) jumps from -1 to 0, with a
    weight of 2 * gamma), and which side each implementation takes depends on the order of its
    dot product's additions. Values are still compared; gradients are not. Basis rows are exact
    in every order, so they are compared always.
    """
    if spec.embeddings == "basis" or spec.n == 0:
        return False
    ref = inputs.x if inputs.ref is None else inputs.ref
    ref_labels = flat(inputs.labels if inputs.ref_labels is None else inputs.ref_labels)
    similarity = inputs.x @ ref.T
    norms = np.outer(np.linalg.norm(inputs.x, axis=1), np.linalg.norm(ref, axis=1))
    band = 2 * spec.d * EPS[compute_dtype(spec.dtype)] * norms
    negative = flat(inputs.labels)[:, None] != ref_labels[None, :]
    return bool(np.any(negative & (np.abs(1 - similarity) <= band)))


def rounding_tolerance(spec):
    """Relative error allowed between two float32 (or float64) evaluations of Circle.

    A similarity carries a rounding error of about sqrt(d) * eps, and a logit multiplies it by
    up to 2 * gamma * (1 + margin) < 4 * gamma; a loss inherits the logit error, and a gradient
    inherits it as the relative error of its softmax weights. The log-sum-exps add the error of
    a sum of up to n + m terms, about sqrt(n + m) * eps. The factor 8 is headroom over the
    largest ratio seen in a long run.
    """
    eps = EPS[compute_dtype(spec.dtype)]
    terms = 1 + spec.n + (spec.n if spec.m is None else spec.m)
    return 8 * eps * ((1 + 4 * spec.gamma) * np.sqrt(spec.d) + np.sqrt(terms))


def similarity_rounding_floor(spec, inputs):
    """The absolute gradient error that rounding the similarities alone can cause.

    A pair's slope dl/ds changes by 2 * gamma per unit of similarity, a similarity is off by
    about sqrt(d) * eps * |x_i| |x_j|, and a row's weights sum to at most its upstream gradient
    per set (twice with a reference set that is the batch, once per direction). Where the
    true gradient is no larger than that, it is rounding itself: a unit row's pair with itself
    has d = 1 - |x|^2, a few ulps that the two implementations round differently, and with
    every other pair inactive the whole gradient is 2 * gamma * d. The factor 8 is the same
    headroom as in ``rounding_tolerance``.
    """
    ref = inputs.x if inputs.ref is None else inputs.ref
    norm = max(np.max(np.linalg.norm(rows, axis=1), initial=0.0) for rows in (inputs.x, ref))
    upstream = np.max(np.abs(inputs.upstream), initial=0.0)
    eps = EPS[compute_dtype(spec.dtype)]
    return 8 * 4 * spec.gamma * np.sqrt(spec.d) * eps * norm**3 * upstream


def assert_matches(got, want, spec, check_grads, what, grad_floor):
    """``got`` agrees with ``want``, a reference evaluated in the compute dtype.

    A float16 or bfloat16 result is the compute-dtype result rounded once, so it may add an
    ulp of its own dtype (``want`` is rounded too), and it is infinite where the exact value
    is beyond the dtype's range. Gradients may also differ by ``grad_floor``
    (``similarity_rounding_floor``).
    """
    tol = rounding_tolerance(spec)
    own_ulp = 0.0 if spec.dtype == compute_dtype(spec.dtype) else EPS[spec.dtype]
    (loss, grads), (want_loss, want_grads) = got, want
    np.testing.assert_allclose(
        loss,
        round_to(want_loss, spec.dtype),
        rtol=own_ulp + tol,
        atol=tol + underflow(spec),
        err_msg=f"{what}: loss",
    )
    if not check_grads:
        return
    for i, (g, w) in enumerate(zip(grads, want_grads, strict=True)):
        scale = float(np.max(np.abs(w), initial=0.0))
        np.testing.assert_allclose(
            g,
            round_to(w, spec.dtype),
            rtol=own_ulp + tol,
            atol=tol * scale + underflow(spec) + grad_floor,
            err_msg=f"{what}: gradient {i}",
        )


def named(result):
    """(name, array) pairs of a (loss, gradients) result; the last exists with a reference set."""
    names = ("loss", "gradient of the embeddings", "gradient of the reference embeddings")
    loss, grads = result
    return list(zip(names, (loss, *grads), strict=False))


def assert_finite(result, reference, spec, what):
    """The reference, in the compute dtype, is finite, and so is ``result`` wherever the
    reference fits in the case's dtype: only float16 can fall short, as a gradient column sums
    up to n terms of up to ~4 * gamma each."""
    limit = float(tf.as_dtype(spec.dtype).max)
    for (name, got), (_, want) in zip(named(result), named(reference), strict=True):
        assert np.all(np.isfinite(want)), f"reference {name} not finite"
        assert np.all(np.isfinite(got[np.abs(want) < limit])), f"{what}: {name} not finite"


def log_events(spec, kink):
    event(f"dtype={spec.dtype}")
    event(f"embeddings={spec.embeddings}")
    event(f"layout={spec.layout}")
    event("reference set" if spec.m is not None else "self reference")
    event(f"clamp kink: gradients {'not ' if kink else ''}compared")


@settings(max_examples=budget(1.0))
@given(spec=circle_specs())
# Found by the long run: two unit rows of distinct classes, each row's only active pair its
# pair with itself, whose distance 1 - |x|^2 is rounding; gradients of 1e-9, 23% apart.
@example(
    spec=CircleSpec(
        n=2,
        d=2,
        m=None,
        dtype="float32",
        embeddings="unit",
        layout="distinct",
        classes=2,
        label_dtypes=("int32", "int32"),
        column_labels=False,
        label_offset=0,
        label_stride=1,
        gamma=1.0,
        margin=0.5,
        remove_diagonal=False,
        seed=1,
    )
)
def test_fused_matches_composite(spec):
    inputs = build(spec)
    kink = on_clamp_kink(spec, inputs)
    log_events(spec, kink)
    reference = evaluate(spec, inputs, "composite", compute_dtype(spec.dtype))
    fused = evaluate(spec, inputs, "fused")
    assert_finite(fused, reference, spec, "fused")
    if spec.dtype != compute_dtype(spec.dtype):
        assert_finite(evaluate(spec, inputs, "composite"), reference, spec, "composite")
    floor = similarity_rounding_floor(spec, inputs)
    assert_matches(fused, reference, spec, not kink, "fused", floor)


@settings(max_examples=budget(0.25))
@given(spec=circle_specs(compiled=True))
def test_compiled_matches_eager(spec):
    inputs = build(spec)
    kink = on_clamp_kink(spec, inputs)
    log_events(spec, kink)
    reference = evaluate(spec, inputs, "composite", compute_dtype(spec.dtype))
    floor = similarity_rounding_floor(spec, inputs)
    for implementation in ("fused", "composite"):
        result = evaluate(spec, inputs, implementation, compiled=True)
        what = f"{implementation} under XLA"
        assert_finite(result, reference, spec, what)
        # The composite path computes float16 and bfloat16 in that precision, as Keras does; at
        # gamma ~ 1000 its softmax weights are then far from float32's.
        if implementation == "fused" or spec.dtype == compute_dtype(spec.dtype):
            assert_matches(result, reference, spec, not kink, what, floor)


@settings(max_examples=budget(0.5))
@given(spec=circle_specs())
def test_labels_are_compared_only_for_equality(spec):
    """Dense int32 class indices with the same equality pattern give bitwise the same result."""
    inputs = build(spec)
    log_events(spec, kink=False)
    ids = [flat(inputs.labels)] + ([] if spec.m is None else [flat(inputs.ref_labels)])
    _, dense = np.unique(np.concatenate(ids), return_inverse=True)
    dense = dense.astype(np.int32)
    canonical = (dense[: spec.n], None if spec.m is None else dense[spec.n :])
    for implementation in ("fused", "composite"):
        got = evaluate(spec, inputs, implementation)
        want = evaluate(spec, inputs, implementation, labels=canonical)
        for (name, a), (_, b) in zip(named(got), named(want), strict=True):
            np.testing.assert_array_equal(a, b, err_msg=f"{implementation}: {name}")


@settings(max_examples=budget(0.5))
@given(spec=circle_specs(self_reference=True))
# Found by the long run: gradients near 1e-30, where the symmetric kernel's weights relative to
# a tile's shared reference underflowed (now the tile takes the exact path).
@example(
    spec=CircleSpec(
        n=17,
        d=7,
        m=None,
        dtype="bfloat16",
        embeddings="unit",
        layout="distinct",
        classes=2,
        label_dtypes=("int32", "int32"),
        column_labels=False,
        label_offset=0,
        label_stride=1,
        gamma=98.0,
        margin=0.8125,
        remove_diagonal=False,
        seed=0,
    )
)
def test_self_reference_matches_explicit_reference(spec):
    """The fused op's symmetric kernel (no reference set) against its general kernel given the
    batch as the reference set; the general kernel's two gradients add up to the symmetric one.
    """
    inputs = build(spec)
    explicit_inputs = dataclasses.replace(inputs, ref=inputs.x, ref_labels=inputs.labels)
    kink = on_clamp_kink(spec, inputs)
    log_events(spec, kink)
    reference = evaluate(spec, inputs, "composite", compute_dtype(spec.dtype))
    symmetric = evaluate(spec, inputs, "fused")
    loss, (grad_x, grad_ref) = evaluate(spec, explicit_inputs, "fused")
    assert_finite(symmetric, reference, spec, "symmetric kernel")
    assert_finite((loss, [grad_x + grad_ref]), reference, spec, "general kernel")
    tol = rounding_tolerance(spec)
    # Each side is rounded once to a float16 or bfloat16 result, and the general kernel's
    # gradient is the sum of two rounded parts, so allow an ulp of each.
    ulp = 0.0 if spec.dtype == compute_dtype(spec.dtype) else EPS[spec.dtype]
    np.testing.assert_allclose(symmetric[0], loss, rtol=tol + ulp, atol=tol, err_msg="loss")
    if not kink:
        # float16 gradients can overflow to inf, which must then match exactly; the finite
        # entries set the scale (an inf scale would accept anything).
        scale = sum(np.max(np.abs(g[np.isfinite(g)]), initial=0.0) for g in (grad_x, grad_ref))
        np.testing.assert_allclose(
            symmetric[1][0],
            grad_x + grad_ref,
            rtol=tol,
            atol=(tol + 2 * ulp) * scale + underflow(spec),
            err_msg="gradient",
        )


def small_batch():
    rng = np.random.default_rng(0)
    return np.array([0, 0, 1, 1, 2, 2]), unit_rows(rng, 6, 4)


@pytest.mark.parametrize("jit_compile", [None, False, True])
def test_float64_keeps_hyperparameters_exact(jit_compile):
    """In float64 the fused op agrees with the composite path to float64 rounding for any
    gamma and margin: they reach the op as doubles, not rounded to float32 (margin 0.1 would
    move the results by about 1e-9)."""
    labels, x = small_batch()
    x = tf.constant(x)

    def value_and_gradient(x, implementation, gamma, margin):
        with tf.GradientTape() as tape:
            tape.watch(x)
            rows = keras_margin.losses.circle(
                labels, x, gamma=gamma, margin=margin, implementation=implementation
            )
        return rows, tape.gradient(rows, x)

    if jit_compile is not None:
        value_and_gradient = tf.function(value_and_gradient, jit_compile=jit_compile)
    for gamma, margin in [(80.0, 0.1), (37.3, -0.33), (1.0 / 3.0, 0.7)]:
        fused = value_and_gradient(x, "fused", gamma, margin)
        composite = value_and_gradient(x, "composite", gamma, margin)
        for got, want in zip(fused, composite, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("implementation", ["fused", "composite"])
def test_gamma_below_the_minimum_is_refused(implementation):
    labels, x = small_batch()
    with pytest.raises(ValueError, match="`gamma` must be in"):
        keras_margin.losses.circle(labels, x, gamma=1e-39, implementation=implementation)


@pytest.mark.parametrize("implementation", ["fused", "composite"])
def test_labels_of_unknown_rank(implementation):
    labels, x = small_batch()
    x = x.astype(np.float32)
    circle = functools.partial(keras_margin.losses.circle, implementation=implementation)
    compiled = tf.function(
        lambda labels: circle(labels, x), input_signature=[tf.TensorSpec(None, tf.int64)]
    )
    np.testing.assert_allclose(compiled(labels), circle(labels, x), rtol=1e-6)


def contract_check(spec, inputs, modes):
    """The fused op through each of ``modes`` against float64, next to the composite path."""
    reference = float64_circle(
        flat(inputs.labels),
        inputs.x,
        flat(inputs.ref_labels),
        inputs.ref,
        gamma=spec.gamma,
        margin=spec.margin,
        remove_diagonal=spec.remove_diagonal,
        upstream=inputs.upstream,
    )
    composite = evaluate(spec, inputs, "composite")
    for mode in modes:
        fused = evaluate(
            spec, inputs, "fused", compiled=mode != "eager", blocked_hlo=mode == "jit-hlo"
        )
        assert_meets_contract(
            fused,
            composite,
            reference,
            f"fused, {mode}",
            check_grads=not on_clamp_kink(spec, inputs),
        )


@settings(max_examples=budget(1.0))
@given(spec=circle_specs(scaled=True))
# Found by the long run: a pair on the symmetric kernel's diagonal tile whose similarity the GEMM
# rounded differently in its two orders, with logits near 1e6; its weight was 23% off.
@example(
    spec=CircleSpec(
        n=65,
        d=18,
        m=None,
        dtype="float32",
        embeddings="mixed_norms",
        layout="few",
        classes=2,
        label_dtypes=("int32", "int32"),
        column_labels=False,
        label_offset=0,
        label_stride=1,
        gamma=1.0,
        margin=0.0,
        remove_diagonal=False,
        seed=0,
    )
)
def test_fused_meets_the_accuracy_contract(spec):
    inputs = build(spec)
    log_events(spec, on_clamp_kink(spec, inputs))
    contract_check(spec, inputs, ["eager"])


@settings(max_examples=budget(0.25))
@given(spec=circle_specs(compiled=True, scaled=True))
def test_compiled_fused_meets_the_accuracy_contract(spec):
    inputs = build(spec)
    log_events(spec, on_clamp_kink(spec, inputs))
    contract_check(spec, inputs, ["jit", "jit-hlo"])
