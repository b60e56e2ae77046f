"""Every loss on the active backend against ``keras.losses`` on that backend: values and
gradients, every reduction, sample weights and masks, eagerly and compiled."""

import numpy as np
import pytest

from keras_margin._keras_internals import set_keras_mask

from .cases import LOSSES, inputs, pair
from .harness import BACKEND, CIRCLE_IMPLEMENTATIONS, MODES, tensor, value_and_gradient

REDUCTIONS = [
    ("sum", False),
    ("sum", True),
    ("sum_over_batch_size", False),
    ("sum_over_batch_size", True),
    ("mean", True),
    ("mean_with_sample_weight", True),
    ("none", True),
    (None, False),
]
# Under torch.compile(fullgraph=True) Keras's own Hinge, SquaredHinge (a data-dependent
# branch) and CategoricalHinge (an isinstance) break the graph: on PyTorch the oracle runs
# eagerly, and test_torch_compile checks each compiled loss against its eager self.
ORACLE_MODES = ["eager"] if BACKEND == "torch" else MODES
# (loss, Circle implementation): every loss, and Circle through each implementation.
VARIANTS = [(name, "composite") for name in LOSSES[:-1]] + [
    ("circle", implementation) for implementation in CIRCLE_IMPLEMENTATIONS
]


def assert_same(ours, theirs):
    scale = max(1.0, float(np.max(np.abs(theirs), initial=0.0)))
    np.testing.assert_allclose(ours, theirs, rtol=2e-5, atol=2e-5 * scale)


@pytest.mark.parametrize("mode", ORACLE_MODES)
@pytest.mark.parametrize("reduction,weighted", REDUCTIONS)
@pytest.mark.parametrize("name,implementation", VARIANTS)
def test_values_and_gradients_equal_keras(rng, name, implementation, reduction, weighted, mode):
    y_true, y_pred = inputs(name, rng)
    weights = rng.uniform(0.5, 2.0, size=len(y_pred)).astype("float32")
    ours, theirs = pair(name, reduction, implementation)
    cotangent = None if reduction not in ("none", None) else rng.normal(size=len(y_pred))

    def of(loss):
        if weighted:
            return lambda x, y, w: loss(y, x, sample_weight=w)
        return lambda x, y, w: loss(y, x)

    ours_value, ours_grad = value_and_gradient(
        of(ours), mode, y_pred, y_true, weights, cotangent=cotangent
    )
    keras_value, keras_grad = value_and_gradient(
        of(theirs), mode, y_pred, y_true, weights, cotangent=cotangent
    )
    assert np.all(np.isfinite(ours_value))
    assert np.any(ours_grad != 0)
    assert_same(ours_value, keras_value)
    assert_same(ours_grad, keras_grad)


@pytest.mark.parametrize("name", ["hinge", "categorical_hinge", "gce", "circle"])
def test_keras_mask_of_predictions_is_honoured_as_in_keras(rng, name):
    y_true, y_pred = inputs(name, rng)
    ours, theirs = pair(name)
    results = []
    for loss in (ours, theirs):
        predictions = tensor(y_pred)
        set_keras_mask(predictions, tensor(np.arange(len(y_pred)) % 3 != 0))
        results.append(float(loss(y_true, predictions)))
    unmasked = float(ours(y_true, y_pred))
    assert results[0] == pytest.approx(results[1], rel=1e-5)
    assert results[0] != pytest.approx(unmasked, rel=1e-3)
