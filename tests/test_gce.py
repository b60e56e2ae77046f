"""Keras-style tests of CategoricalGeneralizedCrossEntropy."""

import keras
import numpy as np
import pytest
import reference

from keras_margin import losses

Y_TRUE = np.array([0, 1, 0, 1])
Y_PRED = np.array([[0.7, 0.3], [0.2, 0.8], [0.6, 0.4], [0.4, 0.6]])


class TestCategoricalGeneralizedCrossEntropy:
    def test_config(self):
        loss = losses.CategoricalGeneralizedCrossEntropy(q=0.3, name="gce", dtype="float64")
        config = loss.get_config()
        assert config == {"name": "gce", "reduction": "sum_over_batch_size", "dtype": "float64",
                          "q": 0.3}  # fmt: skip
        restored = losses.CategoricalGeneralizedCrossEntropy.from_config(config)
        assert restored.get_config() == config

    def test_unweighted(self):
        # (1 - p**0.5) / 0.5 for p = 0.7, 0.8, 0.6, 0.6, averaged.
        expected = np.mean((1 - np.sqrt([0.7, 0.8, 0.6, 0.6])) / 0.5)
        np.testing.assert_allclose(expected, 0.35986, atol=1e-5)
        loss = losses.CategoricalGeneralizedCrossEntropy()(Y_TRUE, Y_PRED)
        np.testing.assert_allclose(loss, expected, rtol=1e-6)

    def test_weighted(self):
        weights = np.array([1.0, 2.0, 0.5, 0.0])
        rows = reference.gce(Y_TRUE, Y_PRED, 0.5)
        loss = losses.CategoricalGeneralizedCrossEntropy(reduction="mean_with_sample_weight")(
            Y_TRUE, Y_PRED, sample_weight=weights
        )
        np.testing.assert_allclose(loss, (rows * weights).sum() / weights.sum(), rtol=1e-6)

    def test_zero_weighted(self):
        loss = losses.CategoricalGeneralizedCrossEntropy()(Y_TRUE, Y_PRED, sample_weight=0.0)
        np.testing.assert_allclose(loss, 0.0)

    @pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float64"])
    def test_dtype(self, dtype):
        loss = losses.CategoricalGeneralizedCrossEntropy(dtype=dtype)(Y_TRUE, Y_PRED)
        assert keras.backend.standardize_dtype(loss.dtype) == dtype
        np.testing.assert_allclose(float(loss), 0.35986, rtol=1e-2)

    def test_matches_reference_on_random_probabilities(self, rng):
        probs = rng.dirichlet(np.ones(7), size=50)
        labels = rng.integers(0, 7, size=50)
        for q in (0.1, 0.5, 0.9):
            got = losses.categorical_generalized_cross_entropy(labels, probs, q)
            np.testing.assert_allclose(got, reference.gce(labels, probs, q), rtol=1e-12)

    def test_sequence_labels(self, rng):
        probs = rng.dirichlet(np.ones(4), size=(3, 5))
        labels = rng.integers(0, 4, size=(3, 5))
        got = losses.CategoricalGeneralizedCrossEntropy(reduction=None)(labels, probs)
        np.testing.assert_allclose(got, reference.gce(labels, probs, 0.5), rtol=1e-6)

    @pytest.mark.parametrize("q", [0.0, 1.0, -0.5, 2.0, float("nan")])
    def test_q_outside_open_interval_names_q(self, q):
        with pytest.raises(ValueError, match="`q`"):
            losses.CategoricalGeneralizedCrossEntropy(q=q)
        with pytest.raises(ValueError, match="`q`"):
            losses.categorical_generalized_cross_entropy(Y_TRUE, Y_PRED, q)
