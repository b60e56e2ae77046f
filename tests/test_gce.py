"""Keras-style tests of CategoricalGeneralizedCrossEntropy."""

import keras
import numpy as np
import pytest
import reference
import tensorflow as tf

from keras_margin import losses

Y_TRUE = np.array([0, 1, 0, 1])
Y_PRED = np.array([[0.7, 0.3], [0.2, 0.8], [0.6, 0.4], [0.4, 0.6]])


class TestCategoricalGeneralizedCrossEntropy:
    def test_config(self):
        loss = losses.CategoricalGeneralizedCrossEntropy(q=0.3, name="gce", dtype="float64")
        config = loss.get_config()
        assert config == {"name": "gce", "reduction": "sum_over_batch_size", "dtype": "float64",
                          "q": 0.3, "from_logits": False}  # fmt: skip
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

    def test_q_is_an_attribute_as_in_keras(self):
        loss = losses.CategoricalGeneralizedCrossEntropy(q=0.3)
        assert loss.q == keras.losses.CategoricalGeneralizedCrossEntropy(q=0.3).q == 0.3
        loss.q = 0.9  # user code may change it, as with Keras's class
        np.testing.assert_allclose(
            loss(Y_TRUE, Y_PRED), np.mean(reference.gce(Y_TRUE, Y_PRED, 0.9)), rtol=1e-6
        )
        assert loss.get_config()["q"] == 0.9

    @pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
    def test_value_at_zero_probability_is_keras_exactly(self, dtype):
        # Keras's value 1/q; only the gradient is taken at the floor.
        probs = np.array([[0.0, 1.0], [0.3, 0.7]])
        for q in (0.1, 0.5, 0.9):
            ours = losses.categorical_generalized_cross_entropy(
                np.array([0, 1]), keras.ops.cast(probs, dtype), q
            )
            theirs = keras.losses.categorical_generalized_cross_entropy(
                np.array([0, 1]), keras.ops.cast(probs, dtype), q
            )
            assert float(ours[0]) == float(theirs[0]) == pytest.approx(1 / q, rel=1e-2)
            np.testing.assert_array_equal(ours, theirs)

    @pytest.mark.parametrize("jit_compile", [False, True])
    def test_gradient_at_zero_probability_is_the_floored_derivative(self, jit_compile):
        probs = tf.constant([[0.0, 1.0], [1e-9, 1.0], [0.3, 0.7]], tf.float64)

        @tf.function(jit_compile=jit_compile)
        def value_and_gradient(probs):
            with tf.GradientTape() as tape:
                tape.watch(probs)
                rows = losses.categorical_generalized_cross_entropy(np.array([0, 0, 1]), probs, 0.5)
            return rows, tape.gradient(rows, probs)

        rows, gradient = value_and_gradient(probs)
        # d/dp (1 - p**q) / q = -p**(q - 1), at max(p, 1e-7) for the first two rows.
        expected = [[-(1e-7**-0.5), 0.0], [-(1e-7**-0.5), 0.0], [0.0, -(0.7**-0.5)]]
        np.testing.assert_allclose(gradient, expected, rtol=1e-12)
        np.testing.assert_allclose(rows, [2.0, (1 - 1e-9**0.5) / 0.5, (1 - 0.7**0.5) / 0.5])

    @pytest.mark.parametrize("jit_compile", [False, True])
    def test_negative_or_nan_true_class_probability_gives_nan(self, jit_compile):
        probs = tf.constant([[-0.1, 1.1], [np.nan, 1.0], [0.3, 0.7]], tf.float32)

        @tf.function(jit_compile=jit_compile)
        def value_and_gradient(probs):
            with tf.GradientTape() as tape:
                tape.watch(probs)
                rows = losses.categorical_generalized_cross_entropy(np.array([0, 0, 1]), probs)
            return rows, tape.gradient(rows, probs)

        rows, gradient = value_and_gradient(probs)
        assert np.isnan(rows[:2]).all() and np.isfinite(rows[2])
        assert np.isnan(gradient[0, 0]) and np.isnan(gradient[1, 0])


class TestCategoricalGeneralizedCrossEntropyFromLogits:
    def test_config_round_trip(self):
        loss = losses.CategoricalGeneralizedCrossEntropy(q=0.7, from_logits=True)
        assert loss.from_logits is True
        restored = losses.CategoricalGeneralizedCrossEntropy.from_config(loss.get_config())
        assert restored.from_logits is True and restored.q == 0.7

    def test_from_logits_must_be_a_bool(self):
        with pytest.raises(TypeError, match="`from_logits` must be a bool"):
            losses.CategoricalGeneralizedCrossEntropy(from_logits="yes")

    @pytest.mark.parametrize("q", [0.1, 0.5, 0.9])
    @pytest.mark.parametrize("jit_compile", [False, True])
    def test_equals_the_probability_form_of_softmax(self, rng, q, jit_compile):
        logits = tf.constant(rng.normal(scale=3.0, size=(40, 6)))
        labels = rng.integers(0, 6, size=40)

        @tf.function(jit_compile=jit_compile)
        def both(logits):
            with tf.GradientTape(persistent=True) as tape:
                tape.watch(logits)
                from_logits = losses.categorical_generalized_cross_entropy(
                    labels, logits, q, from_logits=True
                )
                from_probs = losses.categorical_generalized_cross_entropy(
                    labels, tf.nn.softmax(logits), q
                )
            return (
                from_logits,
                from_probs,
                tape.gradient(from_logits, logits),
                tape.gradient(from_probs, logits),
            )

        value, expected, gradient, expected_gradient = both(logits)
        np.testing.assert_allclose(value, expected, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(gradient, expected_gradient, rtol=1e-9, atol=1e-15)

    def test_saturated_logits_keep_a_gradient(self):
        # Row 0's true class has log-probability -800: softmax gives p = 0 exactly, and with it
        # a zero gradient, while p**q = exp(-400) still tells which way to move.
        logits = tf.constant([[-400.0, 400.0], [0.0, 1.0]], tf.float64)
        labels = np.array([0, 1])
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(logits)
            from_logits = losses.categorical_generalized_cross_entropy(
                labels, logits, 0.5, from_logits=True
            )
            from_probs = losses.categorical_generalized_cross_entropy(
                labels, tf.nn.softmax(logits), 0.5
            )
        gradient = tape.gradient(from_logits, logits).numpy()
        assert not tape.gradient(from_probs, logits).numpy()[0].any()
        np.testing.assert_allclose(gradient[0], [-np.exp(-400.0), np.exp(-400.0)], rtol=1e-12)
        np.testing.assert_allclose(from_logits, from_probs, rtol=1e-12)
