"""On the JAX and PyTorch backends, keras_margin works without importing TensorFlow."""

import os
import subprocess
import sys

import pytest

SCRIPT = """
import sys
import numpy as np
import keras_margin
from keras_margin import losses
x = np.eye(4, dtype="float32")
for loss in (losses.Circle(), losses.Hinge(), losses.CategoricalGeneralizedCrossEntropy()):
    loss(np.array([0, 0, 1, 1]), x)
print("tensorflow" in sys.modules)
"""


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_import_and_use_without_tensorflow(backend):
    env = dict(os.environ, KERAS_BACKEND=backend)
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["False"]
