"""The command as a process: fast start, quiet output, one line on Ctrl-C."""

import os
import re
import signal
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import pytest

from keras_margin_cli import tensorflow_logs

ROOT = Path(__file__).parents[2]
COMMAND = [sys.executable, "-m", "keras_margin_cli"]
FAST_START_SECONDS = 1.5
# TensorFlow must not decide what a user sees: no level set here unless a test sets one.
ENV = {k: v for k, v in os.environ.items() if k != tensorflow_logs.LEVEL_VARIABLE}


def run(*arguments, env=ENV, **kwargs):
    return subprocess.run(
        [*COMMAND, *arguments], capture_output=True, text=True, timeout=600, env=env, **kwargs
    )


def imported_modules(*arguments):
    """The top-level modules that the command imports, from ``python -X importtime``."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "keras_margin_cli", *arguments],
        capture_output=True,
        text=True,
        timeout=600,
        env=ENV,
    )
    return result, {
        line.rsplit("|", 1)[1].strip().split(".")[0]
        for line in result.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }


@pytest.mark.parametrize(
    "arguments",
    [["--help"], ["--version"], ["train", "--help"], ["train", "configs/x.toml", "--set", "a"]],
    ids=lambda a: " ".join(a),
)
def test_answers_without_importing_tensorflow_or_keras(arguments):
    result, modules = imported_modules(*arguments)
    assert "keras_margin_cli" in modules
    assert not modules & {"tensorflow", "keras", "keras_margin", "numpy"}, result.stderr[-500:]


def test_config_errors_that_need_no_loss_answer_without_tensorflow(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text((ROOT / "configs" / "hinge_digits.toml").read_text())
    result, modules = imported_modules("train", str(config), "--set", "train.epochs=0")
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        "keras-margin: error: --set train.epochs=0: train.epochs: expected an integer >= 1, got 0"
    )
    assert not modules & {"tensorflow", "keras"}


def test_help_and_version_are_fast_and_print_no_logs():
    for arguments in (["--help"], ["--version"]):
        seconds = []
        for _ in range(3):
            started = time.perf_counter()
            result = run(*arguments)
            seconds.append(time.perf_counter() - started)
            assert result.returncode == 0 and result.stderr == ""
        assert min(seconds) < FAST_START_SECONDS, seconds
    assert "train" in run("--help").stdout
    assert run("--version").stdout.strip() == (
        f"keras-margin {metadata.version('keras-margin')} (keras {metadata.version('keras')}, "
        f"tensorflow {metadata.version('tensorflow')})"
    )


def test_tensorflow_logs_show_only_when_asked(tmp_path):
    """An error found after TensorFlow is imported: one line, unless the user wants the logs."""
    arguments = ["train", "configs/circle_digits.toml", "--set", "loss.gama=80"]
    arguments += ["--out", str(tmp_path / "out")]
    expected = "keras-margin: error: --set loss.gama=80: loss.gama: unknown key; expected one of"
    quiet = run(*arguments, cwd=ROOT)
    assert quiet.returncode == 2
    assert quiet.stderr.startswith(expected) and quiet.stderr.count("\n") == 1, quiet.stderr
    for asked in (
        run(*arguments, "--verbose", cwd=ROOT),
        run(*arguments, cwd=ROOT, env={**ENV, tensorflow_logs.LEVEL_VARIABLE: "0"}),
    ):
        assert asked.returncode == 2
        assert tensorflow_logs.ABSL_PREAMBLE in asked.stderr
        assert asked.stderr.splitlines()[-1].startswith(expected)


def test_log_records_are_dropped_and_everything_else_kept():
    lines = [
        f"{tensorflow_logs.ABSL_PREAMBLE} is called are written to STDERR\n",
        "I0000 00:00:1796171090.708707   14268 cudart_stub.cc:31] Could not find cuda drivers\n",
        "I0000 00:00:1796171090.799719   14268 cpu_feature_guard.cc:227] This TensorFlow binary\n",
        "To enable the following instructions: AVX2 FMA, in other operations, rebuild\n",
        "E0000 00:00:1796171122.051504   14579 cuda_platform.cc:52] failed call to cuInit\n",
        "Traceback (most recent call last):\n",
        '  File "x.py", line 1, in <module>\n',
        "F0000 00:00:1796171122.051504   14579 op.cc:1] Check failed: fatal, kept\n",
        "\n",
        "a user's own line\n",
    ]
    assert list(tensorflow_logs.drop_log_records(lines)) == lines[5:]


def test_ctrl_c_prints_one_line_exits_130_and_leaves_no_staging(tmp_path):
    out = tmp_path / "out"
    child = subprocess.Popen(
        [*COMMAND, "train", "configs/circle_digits.toml", "--out", str(out)]
        + ["--set", "train.epochs=10000"],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for line in child.stdout:  # wait until training has begun
            if re.match(r"Epoch 2/", line):
                break
        assert list(tmp_path.glob(".out.incomplete-*")), "training should be staging its output"
        child.send_signal(signal.SIGINT)
        _, stderr = child.communicate(timeout=120)
    finally:
        child.kill()
    assert child.returncode == 130
    assert stderr == "keras-margin: interrupted; train stopped\n"
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("command", [[], ["train"], ["evaluate"], ["bench"]], ids=" ".join)
def test_help_is_plain_text(command):
    result = run(*command, "--help")
    assert result.returncode == 0
    # The module docstring is reStructuredText; a terminal shows its markup verbatim.
    assert "``" not in result.stdout, result.stdout
    assert result.stdout.startswith(f"usage: keras-margin {' '.join(command)}".rstrip())
