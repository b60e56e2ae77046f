"""``evaluate`` on a run folder from elsewhere: it reads only that folder, says what it checked."""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import keras
import pytest

from keras_margin_cli import main

from . import SMALL_SLICE

ROOT = Path(__file__).parents[2]
CONFIG = str(ROOT / "configs" / "hinge_digits.toml")


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One run of hinge_digits (a single run: its path is "."), trained once for the module."""
    out = tmp_path_factory.mktemp("finished") / "out"
    assert main(["train", CONFIG, "--out", str(out), *SMALL_SLICE]) == 0
    return out


@pytest.fixture
def run(finished, tmp_path):
    """A copy of the finished run for a test to change."""
    return Path(shutil.copytree(finished, tmp_path / "run", symlinks=True))


def refused(capsys, folder):
    """The error line of ``evaluate folder``, checked to be the only output."""
    capsys.readouterr()
    assert main(["evaluate", str(folder)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("keras-margin: error: ") and captured.err.count("\n") == 1
    return captured.err


def first_run(change):
    """An edit of metrics.json's text that applies ``change`` to its first run."""

    def edit(text):
        document = json.loads(text)
        change(document["runs"][0])
        return json.dumps(document)

    return edit


def test_a_finished_run_reproduces_and_says_how_much_it_compared(run, capsys):
    capsys.readouterr()
    assert main(["evaluate", str(run)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("CategoricalHinge-seed0: accuracy ")
    assert lines[0].endswith(" reproduced")
    assert lines[1:] == [
        f"all metrics in {run / 'metrics.json'} reproduced (1 metric of 1 run compared)"
    ]


def test_a_changed_metric_is_a_mismatch(run, capsys):
    metrics_file = run / "metrics.json"
    metrics_file.write_text(
        first_run(lambda record: record["metrics"].update(accuracy=-1.0))(metrics_file.read_text())
    )
    capsys.readouterr()
    assert main(["evaluate", str(run)]) == 2
    captured = capsys.readouterr()
    assert "(recorded -1.000000) MISMATCH" in captured.out
    assert captured.err == (
        f"keras-margin: error: 1 metric(s) differ from {metrics_file} "
        "(1 metric of 1 run compared)\n"
    )


@pytest.mark.parametrize(
    "edit, complaint",
    [
        (lambda text: text[: len(text) // 2], "metrics.json: not valid JSON ("),
        (lambda text: "{}", 'metrics.json: no "runs" list; expected a finished `train` output'),
        (
            lambda text: json.dumps({**json.loads(text), "runs": []}),
            "metrics.json: records no runs; there is nothing to compare",
        ),
        (first_run(lambda record: record.pop("metrics")), 'metrics.json: runs[0] has no "metrics"'),
        (
            first_run(lambda record: record["metrics"].update(accuracy="0.97")),
            "metrics.json: runs[0]: metric accuracy is a string, not a number",
        ),
    ],
    ids=["truncated JSON", "empty object", "no runs", "run without metrics", "string metric"],
)
def test_malformed_metrics_json_is_one_line(run, capsys, edit, complaint):
    metrics_file = run / "metrics.json"
    metrics_file.write_text(edit(metrics_file.read_text()))
    assert complaint in refused(capsys, run)


def test_a_recorded_metric_that_is_not_measured_is_one_line(run, capsys):
    metrics_file = run / "metrics.json"
    rename = first_run(lambda record: record.update(metrics={"recall_at_1": 0.9}))
    metrics_file.write_text(rename(metrics_file.read_text()))
    error = refused(capsys, run)
    assert error.endswith(
        f"{metrics_file}: runs[0] records metrics recall_at_1; {run / 'config.toml'} measures "
        "accuracy\n"
    )


@pytest.mark.parametrize("elsewhere", ["absolute", "parent"])
def test_a_run_path_that_leaves_the_folder_is_refused(run, capsys, elsewhere):
    """Even where that path holds a model that would reproduce the metrics."""
    other = shutil.copytree(run, run.parent / "other")
    (run / "model.keras").unlink()
    path = str(other) if elsewhere == "absolute" else "../other"
    metrics_file = run / "metrics.json"
    metrics_file.write_text(
        first_run(lambda record: record.update(path=path))(metrics_file.read_text())
    )
    reason = "an absolute path" if elsewhere == "absolute" else "a path with a .. part"
    assert (
        f'runs[0]: "path" "{path}" is refused: {path}/model.keras is {reason}; evaluate reads '
        f"only files inside {run}\n"
    ) in refused(capsys, run)


def test_a_missing_model_is_one_line(run, capsys):
    (run / "model.keras").unlink()
    assert f"runs[0]: {run / 'model.keras'} does not exist\n" in refused(capsys, run)


def test_a_model_replaced_by_text_is_named_for_what_it_is(run, capsys):
    (run / "model.keras").write_text("a model, honestly")
    error = refused(capsys, run)
    assert f"{run / 'model.keras'} is not a Keras model (a .keras file is a zip archive)" in error
    assert "not found" not in error


def test_an_archive_keras_cannot_load_is_one_line(run, capsys):
    with zipfile.ZipFile(run / "model.keras", "w") as archive:
        archive.writestr("config.json", "[1, 2")
    assert f"{run / 'model.keras'}: cannot be loaded: " in refused(capsys, run)


def test_a_model_for_other_inputs_is_one_line(run, capsys):
    other = keras.Sequential([keras.Input((3,)), keras.layers.Dense(10)])
    other.save(run / "model.keras")
    error = refused(capsys, run)
    assert f"{run / 'model.keras'}: cannot predict the test set of {run / 'config.toml'}: " in error


def test_a_data_source_that_cannot_be_loaded_is_one_line(run, tmp_path):
    """A copy whose config.toml names Fashion-MNIST, on a machine whose cached copy is corrupt."""
    config_file = run / "config.toml"
    config_file.write_text(
        config_file.read_text().replace('source = "digits"', 'source = "fashion_mnist"')
    )
    cache = tmp_path / "keras_home" / "datasets" / "fashion-mnist"
    cache.mkdir(parents=True)
    for split in ("train", "t10k"):
        for kind in ("labels-idx1", "images-idx3"):
            (cache / f"{split}-{kind}-ubyte.gz").write_bytes(b"not gzip")
    env = {**os.environ, "KERAS_HOME": str(tmp_path / "keras_home")}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # the user's own level would show the logs
    result = subprocess.run(
        [sys.executable, "-m", "keras_margin_cli", "evaluate", str(run)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 2
    assert result.stdout == "" and result.stderr.count("\n") == 1, result.stderr[-3000:]
    assert result.stderr.startswith(
        f"keras-margin: error: {config_file}: data.source: keras.datasets.fashion_mnist could "
        "not be loaded"
    )
