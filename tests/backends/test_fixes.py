"""The Keras 3.15 defects keras_margin fixes (docs/deviations.md), on the active backend."""

import keras
import numpy as np
import pytest

from keras_margin import losses

from .cases import unit_rows
from .harness import BACKEND, CIRCLE_IMPLEMENTATIONS, MODES, evaluate, value_and_gradient


@pytest.mark.parametrize("mode", MODES)
def test_class_ids_are_never_rounded_through_the_loss_dtype(rng, mode):
    # bfloat16 rounds 257 to 256: Keras would make these two classes one.
    x = unit_rows(rng, 6, 4)
    big = np.array([256, 256, 257, 257, 256, 257])
    small = big - 256
    loss = losses.Circle(gamma=16.0, dtype="bfloat16", reduction="none")
    reference = losses.Circle(gamma=16.0, reduction="none")
    ours = evaluate(lambda y, x: loss(y, x), mode, big, x).astype("float32")
    expected = evaluate(lambda y, x: reference(y, x), mode, small, x)
    np.testing.assert_allclose(ours, expected, rtol=2e-2, atol=0.1)

    probs = np.full((2, 300), 1e-4, "float32")
    probs[0, 257], probs[1, 256] = 0.5, 0.25
    gce = losses.CategoricalGeneralizedCrossEntropy(q=0.5, dtype="bfloat16", reduction="none")
    values = evaluate(lambda y, p: gce(y, p), mode, np.array([257, 256]), probs)
    np.testing.assert_allclose(values.astype("float32"), 2 * (1 - np.sqrt([0.5, 0.25])), rtol=1e-2)


# Ids 2**32 apart, which Keras (and JAX without x64) merge onto their low 32 bits.
WIDE_IDS = [0, 2**32, 1, 2**32 + 1, 2**32, 1]
DENSE_IDS = [0, 2, 1, 3, 2, 1]
MERGED_IDS = [0, 0, 1, 1, 0, 1]


def wide_ids_circle(argument, implementation, rng):
    """The per-row Circle loss as a function of the class ids passed as ``argument``."""
    x, ref = unit_rows(rng, 6, 5), unit_rows(rng, 6, 5)
    if argument == "y_true":
        loss = losses.Circle(gamma=16.0, implementation=implementation, reduction="none")
        return lambda ids: loss(ids, x)
    # Anchor ids that mean the same among the wide and the dense reference ids.
    anchors = np.array([0, 1, 0, 1, 1, 0])
    return lambda ids: losses.circle(
        anchors, x, ids, ref, gamma=16.0, implementation=implementation
    )


@pytest.mark.parametrize("form", ["int64", "list"])
@pytest.mark.parametrize("argument", ["y_true", "ref_labels"])
@pytest.mark.parametrize("implementation", CIRCLE_IMPLEMENTATIONS)
def test_circle_ids_beyond_int32_stay_distinct_or_raise(rng, implementation, argument, form):
    # Eager calls with host ids; jax.jit and fit convert them before keras_margin sees them.
    circle = wide_ids_circle(argument, implementation, rng)
    wide = np.array(WIDE_IDS, "int64") if form == "int64" else WIDE_IDS
    dense = np.asarray(circle(np.array(DENSE_IDS)))
    assert not np.allclose(np.asarray(circle(np.array(MERGED_IDS))), dense)
    if BACKEND == "jax":
        import jax

        with pytest.raises(ValueError) as raised:
            circle(wide)
        message = str(raised.value)
        assert f"`{argument}` must hold class ids that fit int32" in message
        assert "jax_enable_x64" in message and "dense range" in message
        # With x64 the same ids are int64 and stay distinct.
        with jax.enable_x64(True):
            np.testing.assert_allclose(np.asarray(circle(wide)), dense, rtol=1e-6)
    else:
        np.testing.assert_allclose(np.asarray(circle(wide)), dense, rtol=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_gce_reads_labels_of_shape_n_by_1_as_one_id_per_row(rng, mode):
    probs = np.array([[0.7, 0.3], [0.2, 0.8], [0.6, 0.4], [0.4, 0.6]], "float32")
    labels = np.array([0, 1, 0, 1])
    loss = losses.CategoricalGeneralizedCrossEntropy()
    column = evaluate(lambda y, p: loss(y, p), mode, labels[:, None], probs)
    flat = evaluate(lambda y, p: loss(y, p), mode, labels, probs)
    assert float(column) == pytest.approx(float(flat))
    assert float(column) == pytest.approx(0.35986, abs=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_gce_gradient_is_finite_where_the_true_class_has_probability_zero(mode):
    probs = np.array([[0.0, 1.0], [0.5, 0.5]], "float32")
    loss = losses.CategoricalGeneralizedCrossEntropy(q=0.7, reduction="none")
    value, grad = value_and_gradient(lambda p, y: loss(y, p), mode, probs, np.array([0, 0]))
    np.testing.assert_allclose(value, [1 / 0.7, (1 - 0.5**0.7) / 0.7], rtol=1e-6)
    assert np.all(np.isfinite(grad))
    # The derivative -p**(q - 1), taken at the floor 1e-7 for p = 0.
    assert grad[0, 0] == pytest.approx(-(1e-7**-0.3), rel=1e-4)


@pytest.mark.parametrize(
    "loss",
    [
        losses.Hinge(dtype="float16"),
        losses.CategoricalGeneralizedCrossEntropy(q=0.3, dtype="float64"),
        losses.Circle(gamma=32.0, dtype="bfloat16", implementation="composite"),
    ],
    ids=["hinge", "gce", "circle"],
)
def test_dtype_is_part_of_the_config(loss):
    config = loss.get_config()
    restored = type(loss).from_config(config)
    assert config["dtype"] == loss.dtype
    assert restored.dtype == loss.dtype
    assert restored.get_config() == config
    assert keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss)).dtype
