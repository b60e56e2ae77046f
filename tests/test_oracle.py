"""keras_margin against keras.losses (Keras 3.15), the numerical oracle: values and gradients.

Every case draws random inputs, evaluates the same loss configuration in Keras and in
keras_margin, and compares the reduced value and the gradient with respect to `y_pred`.
Labels are kept small so that Keras's label-through-float defect does not come into play here;
that defect has its own test in `test_keras_defects.py`.
"""

import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_margin
from keras_margin._keras_internals import set_keras_mask

DTYPES = ("float16", "bfloat16", "float32", "float64")
REDUCTIONS = ("sum", "sum_over_batch_size", "mean", "mean_with_sample_weight", "none", None)
WEIGHTINGS = ("unweighted", "weighted", "zero_weighted_rows")
TOLERANCE = {"float16": 2e-3, "bfloat16": 2e-2, "float32": 2e-6, "float64": 1e-12}

LOSS_PAIRS = {
    "hinge": (keras_margin.losses.Hinge, keras.losses.Hinge, {}),
    "squared_hinge": (keras_margin.losses.SquaredHinge, keras.losses.SquaredHinge, {}),
    "categorical_hinge": (
        keras_margin.losses.CategoricalHinge,
        keras.losses.CategoricalHinge,
        {},
    ),
    "gce": (
        keras_margin.losses.CategoricalGeneralizedCrossEntropy,
        keras.losses.CategoricalGeneralizedCrossEntropy,
        {"q": 0.7},
    ),
    "circle": (
        keras_margin.losses.Circle,
        keras.losses.Circle,
        {"gamma": 64.0, "margin": 0.25, "implementation": "composite"},
    ),
    # The fused op accumulates float16/bfloat16 in float32 where Keras stays in the low
    # precision, so it is compared with Keras in float32 and float64 only.
    "circle_fused": (
        keras_margin.losses.Circle,
        keras.losses.Circle,
        {"gamma": 64.0, "margin": 0.25, "implementation": "fused"},
    ),
}


def make_inputs(loss, rng, case_index):
    """Random (y_true, y_pred, per-sample loss shape); the rank cycles with the case index."""
    n = int(rng.integers(3, 9))
    if loss in ("hinge", "squared_hinge"):
        shape = ((n,), (n, 5), (n, 3, 4))[case_index % 3]
        label_set = ((-1.0, 1.0), (0.0, 1.0), (-1.0, 0.0, 1.0))[case_index % 3]
        y_true = rng.choice(label_set, size=shape)
        return y_true, rng.normal(size=shape), shape[:-1]
    if loss == "categorical_hinge":
        classes = 4
        shape = ((n, classes), (n, 3, classes))[case_index % 2]
        y_true = np.eye(classes)[rng.integers(0, classes, size=shape[:-1])]
        return y_true, rng.normal(size=shape), shape[:-1]
    if loss == "gce":
        classes = 5
        shape = ((n, classes), (n, 3, classes))[case_index % 2]
        logits = rng.normal(size=shape)
        probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
        return rng.integers(0, classes, size=shape[:-1]), probs, shape[:-1]
    if loss.startswith("circle"):
        n = int(rng.integers(4, 12))
        x = rng.normal(size=(n, int(rng.integers(3, 8))))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return rng.integers(0, 3, size=(n,)), x, (n,)
    raise AssertionError(loss)


def make_weights(weighting, shape, rng):
    """Weights of the per-sample loss's shape; some entries zero for "zero_weighted_rows"."""
    if weighting == "unweighted":
        return None
    weights = rng.uniform(0.2, 2.0, size=shape)
    if weighting == "zero_weighted_rows" and weights.size:
        flat = weights.reshape(-1)
        flat[rng.permutation(flat.size)[: max(1, flat.size // 3)]] = 0.0
    return weights


def value_and_grad(loss_obj, y_true, y_pred, sample_weight, dtype, mode):
    y_pred = tf.constant(y_pred, dtype=dtype)
    weight = None if sample_weight is None else tf.constant(sample_weight, dtype=dtype)

    def run(y_pred):
        with tf.GradientTape() as tape:
            tape.watch(y_pred)
            value = loss_obj(y_true, y_pred, sample_weight=weight)
        return value, tape.gradient(value, y_pred)

    if mode != "eager":
        run = tf.function(run, jit_compile=(mode == "jit_compile"))
    value, grad = run(y_pred)
    return value.numpy().astype(np.float64), grad.numpy().astype(np.float64)


def loss_pair(loss, **config):
    """The keras_margin loss and its Keras counterpart, configured alike.

    ``implementation`` is keras_margin's own argument, so Keras does not get it.
    """
    ours_cls, keras_cls, kwargs = LOSS_PAIRS[loss]
    keras_kwargs = {k: v for k, v in kwargs.items() if k != "implementation"}
    return ours_cls(**config, **kwargs), keras_cls(**config, **keras_kwargs)


def assert_matches_keras(loss, reduction, dtype, weighting, mode, rng, case_index):
    y_true, y_pred, loss_shape = make_inputs(loss, rng, case_index)
    weights = make_weights(weighting, loss_shape, rng)
    ours, theirs = (
        value_and_grad(loss_obj, y_true, y_pred, weights, dtype, mode)
        for loss_obj in loss_pair(loss, reduction=reduction, dtype=dtype)
    )
    tol = TOLERANCE[dtype]
    if loss == "circle_fused":
        # The op sums in another order than Keras; gamma (64 here) scales the logits and with
        # them float32 rounding, so allow a few float32 ulps times that.
        tol = max(tol, 2e-5)
    for name, a, b in zip(("value", "gradient"), ours, theirs, strict=True):
        assert a.shape == b.shape, name
        assert np.all(np.isfinite(a)), name
        scale = max(1.0, float(np.max(np.abs(b))))
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol * scale, err_msg=name)


def dtypes_for(loss):
    return ("float32", "float64") if loss == "circle_fused" else DTYPES


EAGER_CASES = [
    (loss, reduction, dtype, weighting)
    for loss, reduction, weighting in itertools.product(LOSS_PAIRS, REDUCTIONS, WEIGHTINGS)
    for dtype in dtypes_for(loss)
]


@pytest.mark.parametrize(("loss", "reduction", "dtype", "weighting"), EAGER_CASES)
def test_eager_matches_keras(loss, reduction, dtype, weighting, rng):
    case_index = EAGER_CASES.index((loss, reduction, dtype, weighting))
    assert_matches_keras(loss, reduction, dtype, weighting, "eager", rng, case_index)


GRAPH_CASES = [
    (loss, mode, dtype)
    for loss, mode in itertools.product(LOSS_PAIRS, ("tf_function", "jit_compile"))
    for dtype in dtypes_for(loss)
]


@pytest.mark.parametrize(("loss", "mode", "dtype"), GRAPH_CASES)
def test_compiled_matches_keras(loss, mode, dtype, rng):
    case_index = GRAPH_CASES.index((loss, mode, dtype))
    reduction = REDUCTIONS[case_index % len(REDUCTIONS)]
    assert_matches_keras(loss, reduction, dtype, "weighted", mode, rng, case_index)


def test_case_count_covers_acceptance():
    assert len(EAGER_CASES) + len(GRAPH_CASES) >= 200


@pytest.mark.parametrize(("loss", "reduction"), itertools.product(LOSS_PAIRS, REDUCTIONS))
def test_keras_mask_on_predictions_matches_keras(loss, reduction, rng):
    y_true, y_pred, loss_shape = make_inputs(loss, rng, case_index=1)
    if not loss_shape:
        pytest.fail("case_index=1 must give per-sample losses")
    mask = tf.constant(rng.random(loss_shape) > 0.3)
    values = []
    for loss_obj in loss_pair(loss, reduction=reduction):
        masked = tf.constant(y_pred, tf.float32)
        set_keras_mask(masked, mask)
        values.append(loss_obj(y_true, masked).numpy())
    np.testing.assert_allclose(values[0], values[1], rtol=1e-5)
