"""The CPU engine's AVX-512 build is used exactly where the CPU has AVX-512, and agrees with
the baseline build (``KERAS_MARGIN_ENGINE_ISA=baseline``) to floating-point rounding.
``KERAS_MARGIN_ENGINE_ISA`` runs the build it names where that build can run, and is an error
everywhere else, in Python and in the op itself.

The two builds order no sum differently, but their tile products (Eigen, with 8- or 16-float
registers) and fused multiply-adds round differently, so they agree to rounding, not bit for
bit; each is deterministic on its own (``tests/ops/test_determinism.py`` runs the one the
machine picks).
"""

import json
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


def run_probe(args, env):
    result = subprocess.run(
        [sys.executable, PROBE, *args],
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **env},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]


def probe(tmp_path, name, **env):
    out = tmp_path / f"{name}.npz"
    run_probe([str(out)], env)
    return dict(np.load(out))


def selection(tmp_path, value):
    """What the op library alone and keras_margin make of KERAS_MARGIN_ENGINE_ISA=value."""
    out = tmp_path / "selection.json"
    run_probe(["--selection", str(out)], {"KERAS_MARGIN_ENGINE_ISA": value})
    return json.loads(out.read_text())


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


def assert_runs(report, isa):
    """keras_margin reports ``isa``; the kernel and the custom call run and agree."""
    assert report["engine_isa"] == isa
    loss = np.asarray(report["kernel"])
    assert loss.shape == (24,) and np.all(np.isfinite(loss)) and np.any(loss > 0)
    np.testing.assert_allclose(report["custom_call"], loss, rtol=1e-5)


def assert_refused(report, message):
    """keras_margin raises ValueError(message); the kernel and the custom call, reached without
    keras_margin's check (as by TF Serving), fail with the same message instead of running
    another build."""
    assert report["engine_isa"] == f"ValueError: {message}"
    for entry in ("kernel", "custom_call"):
        assert report[entry].startswith("InvalidArgumentError: "), report[entry]
        assert message in report[entry]


@pytest.fixture(scope="module")
def own_build(tmp_path_factory):
    """The op library's own build, which ``baseline`` names."""
    report = selection(tmp_path_factory.mktemp("baseline"), "baseline")
    assert report["engine_isa"] in ("avx512", "avx2", "portable"), report
    assert_runs(report, report["engine_isa"])
    return report["engine_isa"]


@pytest.mark.parametrize("name", ["avx512", "avx2", "portable"])
def test_a_build_name_runs_that_build_where_it_can_and_is_refused_elsewhere(
    tmp_path, own_build, name
):
    report = selection(tmp_path, name)
    if name == own_build or (name == "avx512" and cpu_has_avx512()):
        assert_runs(report, name)
        return
    if name == "avx512":
        reason = "cannot run on this CPU: it lacks AVX-512"
    else:
        reason = f"cannot run here: the op library was built as {own_build}"
    message = report["engine_isa"].removeprefix("ValueError: ")
    assert message.startswith(f"KERAS_MARGIN_ENGINE_ISA='{name}' asks for the {name} build")
    assert reason in message
    assert f"'baseline' (the op library's own build: {own_build})" in message
    assert_refused(report, message)


@pytest.mark.parametrize("value", ["BASELINE", "garbage", ""])
def test_any_other_value_is_refused_naming_the_accepted_ones(tmp_path, own_build, value):
    report = selection(tmp_path, value)
    message = (
        f"KERAS_MARGIN_ENGINE_ISA='{value}' is not an engine; expected 'avx512', 'avx2' or "
        "'portable' (a build, as keras_margin.ops.engine_isa() names it) or 'baseline' (the op "
        f"library's own build: {own_build}), or leave it unset for the fastest build this CPU "
        "runs."
    )
    assert_refused(report, message)
