"""The CPU engine's AVX-512 build is used exactly where the CPU has AVX-512, and agrees with
the baseline build (``KERAS_MARGIN_ENGINE_ISA=baseline``) to floating-point rounding.

The two builds order no sum differently, but their tile products (Eigen, with 8- or 16-float
registers) and fused multiply-adds round differently, so they agree to rounding, not bit for
bit; each is deterministic on its own (``tests/ops/test_determinism.py`` runs the one the
machine picks).
"""

import os
import platform
import subprocess
import sys

import numpy as np
import pytest

from keras_margin import ops

PROBE = os.path.join(os.path.dirname(__file__), "engine_isa_probe.py")
AVX512_FEATURES = {"avx512f", "avx512dq", "avx512bw", "avx512vl"}


def cpu_has_avx512():
    if platform.machine() != "x86_64":
        return False
    with open("/proc/cpuinfo") as f:
        flags = set(next(line for line in f if line.startswith("flags")).split())
    return flags >= AVX512_FEATURES


def probe(tmp_path, name, **env):
    out = tmp_path / f"{name}.npz"
    result = subprocess.run(
        [sys.executable, PROBE, str(out)],
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **env},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return dict(np.load(out))


def test_avx512_engine_runs_where_the_cpu_has_it():
    if cpu_has_avx512():
        assert ops.engine_isa() == "avx512"
    else:
        assert ops.engine_isa() in ("avx2", "portable")


@pytest.fixture(scope="module")
def both_builds(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("engine_isa")
    return probe(tmp_path, "default"), probe(
        tmp_path, "baseline", KERAS_MARGIN_ENGINE_ISA="baseline"
    )


def test_baseline_can_be_forced(both_builds):
    default, baseline = both_builds
    assert str(baseline["isa"]) in ("avx2", "portable")
    assert str(default["isa"]) == ops.engine_isa()


def test_both_builds_agree_to_rounding(both_builds):
    default, baseline = both_builds
    keys = [key for key in default if key != "isa"]
    assert len(keys) == 12  # losses and gradients of the five cases
    for key in keys:
        expected = baseline[key]
        tolerance = 1e-12 if "f64" in key else 2e-2 if "bf16" in key else 2e-5
        scale = max(1.0, float(np.abs(expected).max()))
        np.testing.assert_allclose(default[key], expected, rtol=tolerance, atol=tolerance * scale)
        assert np.any(expected != 0), key
