"""``keras-margin bench``: a quick check that says what it runs, from any install."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import keras_margin_cli
from keras_margin_cli import benchmark, main

TIMED = {"median_s": 0.1, "min_s": 0.1, "peak_bytes": 2**30, "baseline_bytes": 2**29}


@pytest.fixture
def configurations(monkeypatch):
    """The configurations the benchmark starts a process for, which it here does not."""
    started = []

    def run_config(mode, n, d, repeats, timeout, checkout=None):
        started.append((mode, n, d, repeats))
        return TIMED

    monkeypatch.setattr(benchmark, "run_config", run_config)
    return started


def test_quick_is_two_configurations_and_says_what_it_leaves_out(configurations, capsys):
    assert main(["bench", "--quick"]) == 0
    # About 10 s each on two cores, to start the process, import the backend and warm up.
    assert configurations == [("keras:jit", 4096, 128, 3), ("fused:jit", 4096, 128, 3)]
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == (
        "--quick leaves out N = 1024, 2048, 8192, 16384, 32768, 65536; D = 512; modes "
        "keras:eager, keras:function, fused:eager, fused:function, fused-hlo:jit, "
        "fused-baseline:function, fused-ref:function, fused-ref-baseline:function, "
        "matmul:eager, matmul:function, keras-jax:jit, composite-jax:jit, fused-jax:jit: "
        "run without --quick for them"
    )
    assert lines[1] == "2 runs, each in a process of its own:"
    assert lines[2].startswith("[1/2] N=  4096 D= 128 keras:jit        0.100 s, peak 1.00 GiB (")
    assert lines[3].startswith("[2/2] N=  4096 D= 128 fused:jit        0.100 s, peak 1.00 GiB (")
    assert "`keras-margin bench --quick`." in lines[4]
    rows = [line for line in lines if line.startswith("| 4096 ")]
    assert [row.rsplit("|", 2)[0] for row in rows] == [
        "| 4096 | 128 | keras | jit | 0.100 (0.100) | 1.00 | 0.50 ",
        "| 4096 | 128 | fused | jit | 0.100 (0.100) | 1.00 | 0.50 ",
    ]


def test_without_jax_its_modes_are_left_out_with_one_line(configurations, capsys, monkeypatch):
    monkeypatch.setattr(benchmark, "_jax_installed", lambda: False)
    modes = ["fused:jit", "keras-jax:jit", "fused-jax:jit"]
    assert main(["bench", "--n", "256", "--d", "8", "--modes", *modes]) == 0
    assert configurations == [("fused:jit", 256, 8, 5)]
    printed = capsys.readouterr().out
    assert printed.splitlines()[0] == "left out keras-jax:jit, fused-jax:jit: jax is not installed"
    assert "error" not in printed and "-jax |" not in printed
    assert ", no JAX. Last run" in printed


def test_bench_runs_from_a_regular_install(tmp_path):
    """An install copies the package alone: no benchmarks/ folder beside it."""
    site = tmp_path / "site-packages"
    shutil.copytree(
        Path(keras_margin_cli.__file__).parent,
        site / "keras_margin_cli",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    options = ["--n", "256", "--d", "8", "--modes", "fused:function", "--repeats", "1"]
    result = subprocess.run(
        # -P: neither the working folder nor a script's folder on the path, only the "install"
        [sys.executable, "-P", "-m", "keras_margin_cli", "bench", *options],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| 256 | 8 | fused | function |" in result.stdout
    assert result.stderr == ""
