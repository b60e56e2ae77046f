"""Keras-style tests of the hinge family: config, unweighted, weighted, zero-weighted, dtype."""

import keras
import numpy as np
import pytest

from keras_margin import losses

Y_TRUE = np.array([[0.0, 1.0], [0.0, 0.0]])
Y_PRED = np.array([[0.6, 0.4], [0.4, 0.6]])
WEIGHTS = np.array([1.5, 0.5])


class TestHinge:
    def test_config(self):
        loss = losses.Hinge(name="my_hinge", reduction="sum", dtype="float64")
        config = loss.get_config()
        assert config == {"name": "my_hinge", "reduction": "sum", "dtype": "float64"}
        restored = losses.Hinge.from_config(config)
        assert (restored.name, restored.reduction, restored.dtype) == ("my_hinge", "sum", "float64")

    def test_unweighted(self):
        # {0, 1} labels become {-1, 1}: rows are mean(max(1 - y*p, 0)) = 1.1 and 1.5.
        np.testing.assert_allclose(losses.Hinge()(Y_TRUE, Y_PRED), 1.3, rtol=1e-6)
        np.testing.assert_allclose(losses.Hinge(reduction="sum")(Y_TRUE, Y_PRED), 2.6, rtol=1e-6)
        np.testing.assert_allclose(losses.Hinge(reduction=None)(Y_TRUE, Y_PRED), [1.1, 1.5])

    def test_weighted(self):
        loss = losses.Hinge()(Y_TRUE, Y_PRED, sample_weight=WEIGHTS)
        np.testing.assert_allclose(loss, (1.1 * 1.5 + 1.5 * 0.5) / 2, rtol=1e-6)
        loss = losses.Hinge(reduction="mean_with_sample_weight")(
            Y_TRUE, Y_PRED, sample_weight=WEIGHTS
        )
        np.testing.assert_allclose(loss, (1.1 * 1.5 + 1.5 * 0.5) / 2.0, rtol=1e-6)

    def test_zero_weighted(self):
        loss = losses.Hinge()(Y_TRUE, Y_PRED, sample_weight=0.0)
        np.testing.assert_allclose(loss, 0.0)

    def test_signed_labels_are_not_converted(self):
        # Labels already in {-1, 1}, and mixed {-1, 0, 1}, are used as they are.
        y_true = np.array([[-1.0, 1.0], [-1.0, 0.0]])
        rows = np.maximum(1.0 - y_true * Y_PRED, 0.0).mean(-1)
        np.testing.assert_allclose(losses.Hinge(reduction=None)(y_true, Y_PRED), rows, rtol=1e-6)

    @pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float64"])
    def test_dtype(self, dtype):
        loss = losses.Hinge(dtype=dtype)(Y_TRUE, Y_PRED)
        assert keras.backend.standardize_dtype(loss.dtype) == dtype
        np.testing.assert_allclose(float(loss), 1.3, rtol=1e-2)

    def test_dtype_policy_uses_compute_dtype(self):
        loss = losses.Hinge(dtype=keras.DTypePolicy("mixed_bfloat16"))
        assert loss.dtype == "bfloat16"
        assert losses.Hinge.from_config(loss.get_config()).dtype == "bfloat16"


class TestSquaredHinge:
    def test_config(self):
        loss = losses.SquaredHinge(name="sq", reduction="none")
        restored = losses.SquaredHinge.from_config(loss.get_config())
        assert restored.get_config() == loss.get_config()
        assert restored.name == "sq" and restored.reduction == "none"

    def test_unweighted(self):
        np.testing.assert_allclose(losses.SquaredHinge()(Y_TRUE, Y_PRED), 1.86, rtol=1e-6)
        np.testing.assert_allclose(
            losses.SquaredHinge(reduction=None)(Y_TRUE, Y_PRED), [1.46, 2.26], rtol=1e-6
        )

    def test_weighted(self):
        loss = losses.SquaredHinge(reduction="sum")(Y_TRUE, Y_PRED, sample_weight=WEIGHTS)
        np.testing.assert_allclose(loss, 1.46 * 1.5 + 2.26 * 0.5, rtol=1e-6)

    def test_zero_weighted(self):
        loss = losses.SquaredHinge()(Y_TRUE, Y_PRED, sample_weight=np.zeros(2))
        np.testing.assert_allclose(loss, 0.0)

    @pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float64"])
    def test_dtype(self, dtype):
        loss = losses.SquaredHinge(dtype=dtype)(Y_TRUE, Y_PRED)
        assert keras.backend.standardize_dtype(loss.dtype) == dtype
        np.testing.assert_allclose(float(loss), 1.86, rtol=1e-2)


class TestCategoricalHinge:
    def test_config(self):
        loss = losses.CategoricalHinge(name="ch", dtype="float16")
        restored = losses.CategoricalHinge.from_config(loss.get_config())
        assert (restored.name, restored.dtype) == ("ch", "float16")

    def test_unweighted(self):
        np.testing.assert_allclose(losses.CategoricalHinge()(Y_TRUE, Y_PRED), 1.4, rtol=1e-6)
        # keras issue 8083: neg = max((1 - y) * p) includes the zeroed true class.
        np.testing.assert_allclose(
            losses.categorical_hinge(np.array([[1.0, 0.0]]), np.array([[-3.0, -5.0]])), [4.0]
        )

    def test_weighted(self):
        loss = losses.CategoricalHinge(reduction="sum")(Y_TRUE, Y_PRED, sample_weight=WEIGHTS)
        np.testing.assert_allclose(loss, 1.2 * 1.5 + 1.6 * 0.5, rtol=1e-6)

    def test_zero_weighted(self):
        loss = losses.CategoricalHinge()(Y_TRUE, Y_PRED, sample_weight=0.0)
        np.testing.assert_allclose(loss, 0.0)

    @pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float64"])
    def test_dtype(self, dtype):
        loss = losses.CategoricalHinge(dtype=dtype)(Y_TRUE, Y_PRED)
        assert keras.backend.standardize_dtype(loss.dtype) == dtype
        np.testing.assert_allclose(float(loss), 1.4, rtol=1e-2)


@pytest.mark.parametrize("cls", [losses.Hinge, losses.SquaredHinge, losses.CategoricalHinge])
def test_unknown_reduction_names_the_argument(cls):
    with pytest.raises(ValueError, match="`reduction`"):
        cls(reduction="average")
