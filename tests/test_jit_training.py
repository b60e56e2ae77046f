"""Every loss trains under `model.compile(..., jit_compile=True)`."""

import numpy as np
import pytest
from tasks import make_task

from keras_margin import losses

LOSSES = {
    "hinge": losses.Hinge,
    "squared_hinge": losses.SquaredHinge,
    "categorical_hinge": losses.CategoricalHinge,
    "gce": losses.CategoricalGeneralizedCrossEntropy,
    "circle": losses.Circle,
}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_trains_under_jit_compile(name):
    model, x, y = make_task(name)
    model.compile(optimizer="adam", loss=LOSSES[name](), jit_compile=True)
    before = model.evaluate(x, y, verbose=0)
    history = model.fit(x, y, epochs=5, batch_size=32, verbose=0)
    after = model.evaluate(x, y, verbose=0)
    assert model.jit_compile is True
    assert np.all(np.isfinite(history.history["loss"]))
    assert after < before
