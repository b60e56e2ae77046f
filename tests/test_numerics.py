"""Finite values and gradients at the edges of the valid input range; NaN in, NaN out.

Circle runs through both implementations, eagerly and under XLA, in every float dtype, for
gamma up to 1024 and margins in [0, 1), on batches built to be awkward: rows with no positive
or no negative, identical embeddings, and norms slightly above 1.
"""

import itertools

import numpy as np
import pytest
import tensorflow as tf
from inputs import unit_rows

from keras_margin import losses

DTYPES = ["float16", "bfloat16", "float32", "float64"]
MODES = ["eager", "jit"]


def value_and_gradient(fn, y_true, y_pred, mode, dtype):
    y_pred = tf.constant(y_pred, dtype=dtype)

    def step(y_pred):
        with tf.GradientTape() as tape:
            tape.watch(y_pred)
            value = fn(y_true, y_pred)
        return value, tape.gradient(value, y_pred)

    if mode == "jit":
        step = tf.function(step, jit_compile=True)
    value, gradient = step(y_pred)
    return tf.cast(value, "float64").numpy(), tf.cast(gradient, "float64").numpy()


def awkward_batches(rng):
    """(name, labels, embeddings) batches at the edges of what Circle sees in training."""
    x = unit_rows(rng, 12, 8)
    return [
        ("random", np.arange(12) % 3, x),
        ("no-positives", np.arange(12), x),
        ("no-negatives", np.zeros(12, "int32"), x),
        ("one-row-without-pair", np.array([0, 0, 1, 1, 2]), x[:5]),
        ("identical-embeddings", np.arange(12) % 3, np.repeat(x[:1], 12, axis=0)),
        ("norm-above-one", np.arange(12) % 3, x * 1.001),
        ("duplicates-across-classes", np.arange(12) % 2, np.repeat(x[:6], 2, axis=0)),
    ]


@pytest.mark.parametrize("implementation", ["composite", "fused"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_circle_is_finite_for_large_gamma_and_awkward_batches(implementation, mode, dtype, rng):
    failures = []
    # Each hyper-parameter pair is a new XLA compilation, so jit tries the extremes only.
    grid = [(80.0, 0.25), (1024.0, 0.99)]
    if mode == "eager":
        grid += list(itertools.product([1.0, 256.0, 1024.0], [0.0, 0.5, 0.99]))
    for gamma, margin in grid:
        loss = losses.Circle(gamma, margin, implementation=implementation, dtype=dtype)
        for name, labels, x in awkward_batches(rng):
            value, gradient = value_and_gradient(loss, labels, x, mode, dtype)
            if not (np.isfinite(value) and np.isfinite(gradient).all()):
                failures.append(f"gamma={gamma} margin={margin} {name}: {value}")
    assert not failures, failures


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_gce_is_finite_for_probabilities_of_exactly_zero_and_one(mode, dtype):
    probabilities = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    labels = np.array([0, 0, 2, 2])  # a certain hit, a certain miss, a zero, a certain hit
    for q in (0.01, 0.5, 0.7, 0.99):
        loss = losses.CategoricalGeneralizedCrossEntropy(q, reduction="none", dtype=dtype)
        value, gradient = value_and_gradient(loss, labels, probabilities, mode, dtype)
        assert np.isfinite(value).all() and np.isfinite(gradient).all(), (q, value, gradient)
        assert value[0] == 0.0 and value[3] == 0.0
        # Keras's value at p = 0; only the gradient is taken at the documented floor.
        np.testing.assert_allclose(value[1:3], 1 / q, rtol=2e-2)


@pytest.mark.parametrize("loss_class", [losses.Hinge, losses.SquaredHinge, losses.CategoricalHinge])
@pytest.mark.parametrize("dtype", DTYPES)
def test_hinge_family_is_finite_at_large_scores(loss_class, dtype):
    loss = loss_class(dtype=dtype)
    scores = np.array([[300.0, -300.0, 0.0], [0.0, 1.0, -1.0]])
    value, gradient = value_and_gradient(
        loss, np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), scores, "eager", dtype
    )
    assert np.isfinite(value) and np.isfinite(gradient).all()


@pytest.mark.parametrize("implementation", ["composite", "fused"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_embeddings_give_nan_not_a_crash(implementation, mode, bad, rng):
    x = unit_rows(rng, 6, 8)
    x[2, 3] = bad
    loss = losses.Circle(implementation=implementation, reduction="none")
    value, gradient = value_and_gradient(loss, np.arange(6) % 2, x, mode, "float32")
    assert np.isnan(value).all()
    assert not np.isinf(gradient).any()


@pytest.mark.parametrize("mode", MODES)
def test_non_finite_probabilities_give_nan_not_a_crash(mode):
    probabilities = np.array([[np.nan, 0.5], [0.5, 0.5]])
    loss = losses.CategoricalGeneralizedCrossEntropy(reduction="none")
    value, _ = value_and_gradient(loss, np.array([0, 1]), probabilities, mode, "float32")
    assert np.isnan(value[0]) and value[1] == pytest.approx((1 - 0.5**0.5) / 0.5)
