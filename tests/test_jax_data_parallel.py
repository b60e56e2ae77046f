"""On JAX, data-parallel training gives the single-device result.

Under ``keras.distribution.DataParallel`` the whole step is one XLA program over the global
batch (sharded across the devices), so every reduction and Circle's pairs are global without
any collective of keras_margin's own.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

CHECK = os.path.join(os.path.dirname(__file__), "jax_data_parallel_check.py")


@pytest.mark.parametrize("loss", ["circle-composite", "circle-fused", "gce"])
def test_data_parallel_equals_one_device(loss):
    result = subprocess.run(
        [sys.executable, CHECK, loss], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = json.loads(result.stdout.strip().splitlines()[-1])
    single, parallel = runs["single"], runs["data_parallel"]
    np.testing.assert_allclose(parallel["loss"], single["loss"], rtol=1e-5)
    assert single["loss"][0] != single["loss"][1]
    for ours, theirs in zip(parallel["weights"], single["weights"], strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-6)
