"""End-to-end runs of every shipped config: outputs, metrics and their reproduction."""

import gzip
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from keras_margin_cli import config as configs
from keras_margin_cli import main, plots

from . import SMALL_SLICE

ROOT = Path(__file__).parents[2]
CONFIGS = sorted((ROOT / "configs").glob("*.toml"))
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FASHION_SIZES = {"train": 240, "t10k": 60}


def _write_idx(path, array):
    """An IDX file as Fashion-MNIST ships it: magic (0, 0, dtype 0x08, rank), sizes, bytes."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def keras_home(tmp_path_factory):
    """A KERAS_HOME whose datasets/fashion-mnist holds a small dataset in the real format.

    Each class is a bright 6x6 square at its own place on a noisy background, so that even a
    one-epoch model has something to learn.
    """
    home = tmp_path_factory.mktemp("keras_home")
    folder = home / "datasets" / "fashion-mnist"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(7)
    for split, size in FASHION_SIZES.items():
        labels = np.arange(size) % 10
        images = rng.integers(0, 60, size=(size, 28, 28))
        for i, label in enumerate(labels):
            row, col = divmod(int(label), 4)
            images[i, 2 + 8 * row : 8 + 8 * row, 2 + 6 * col : 8 + 6 * col] = 250
        _write_idx(folder / f"{split}-labels-idx1-ubyte.gz", labels)
        _write_idx(folder / f"{split}-images-idx3-ubyte.gz", images)
    return home


@pytest.fixture(scope="module")
def train_once(tmp_path_factory, keras_home):
    """Trains a config for one epoch on a 300-example slice in a fresh process, once per module."""
    done = {}

    def train(config_path):
        if config_path not in done:
            out = tmp_path_factory.mktemp(config_path.stem) / "out"
            env = {**os.environ, "KERAS_HOME": str(keras_home)}
            env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # the user's own level would show the logs
            command = [sys.executable, "-m", "keras_margin_cli", "train", str(config_path), "--out"]
            command += [str(out), *SMALL_SLICE]
            if len(configs.load(config_path).train.seeds) > 2:
                command += ["--set", "train.seeds=[0, 1]"]  # two seeds test the spread
            result = subprocess.run(
                command,
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
            )
            assert result.returncode == 0, result.stderr[-3000:]
            done[config_path] = config_path, out, result
        return done[config_path]

    return train


@pytest.fixture(params=CONFIGS, ids=lambda p: p.stem)
def trained(request, train_once):
    return train_once(request.param)


def test_train_writes_every_output(trained):
    config_path, out, result = trained
    document = json.loads((out / "metrics.json").read_text())
    assert document["config"] == config_path.stem
    assert f"wrote {out}" in result.stdout
    assert result.stderr == ""  # no TensorFlow log lines or retracing warnings
    assert document["environment"]["tensorflow"] == tf.__version__
    assert (out / "config.toml").read_text().startswith("[data]")
    assert (out / "training_curves.png").read_bytes().startswith(PNG_SIGNATURE)
    assert len(document["runs"]) >= 1
    for run in document["runs"]:
        directory = out / run["path"]
        assert (directory / "model.keras").stat().st_size > 1000
        assert (directory / "saved_model" / "saved_model.pb").is_file()
        if document["task"] == "embedding":
            assert (directory / "embeddings.png").read_bytes().startswith(PNG_SIGNATURE)
        for name, value in run["metrics"].items():
            assert 0.0 <= value <= 1.0
            if document["task"] == "embedding":  # tracked each epoch on the test set
                assert run["history"][f"val_{name}"][-1] == value
        assert len(run["history"]["loss"]) == 1  # one epoch
    assert not list(out.parent.glob(".*incomplete*"))


def test_metrics_summary_matches_runs(trained):
    _, out, _ = trained
    document = json.loads((out / "metrics.json").read_text())
    for label, found in document["summary"].items():
        runs = [run for run in document["runs"] if run["label"] == label]
        for name, stats in found.items():
            values = [run["metrics"][name] for run in runs]
            assert stats["values"] == values
            assert stats["mean"] == pytest.approx(np.mean(values))
            assert stats["std"] == pytest.approx(np.std(values, ddof=1) if len(values) > 1 else 0)


def test_evaluate_reproduces_metrics_in_a_fresh_process(trained, keras_home):
    _, out, _ = trained
    env = {**os.environ, "KERAS_HOME": str(keras_home)}
    result = subprocess.run(
        [sys.executable, "-m", "keras_margin_cli", "evaluate", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    document = json.loads((out / "metrics.json").read_text())
    checked = sum(len(run["metrics"]) for run in document["runs"])
    assert result.stdout.count(") reproduced") == checked
    assert "all metrics" in result.stdout


def test_saved_model_serves_what_the_keras_model_predicts(trained, keras_home):
    _, out, _ = trained
    document = json.loads((out / "metrics.json").read_text())
    directory = out / document["runs"][0]["path"]
    import keras

    model = keras.saving.load_model(directory / "model.keras")
    served = tf.saved_model.load(str(directory / "saved_model"))
    inputs = np.random.default_rng(0).random((5, model.inputs[0].shape[1]), dtype="float32")
    np.testing.assert_allclose(served.serve(inputs), model.predict(inputs, verbose=0), atol=1e-5)
    assert {"serve", "compute_loss"} <= set(served.signatures)


def test_fashion_mnist_reads_the_dataset_files(train_once):
    _, out, _ = train_once(ROOT / "configs" / "circle_fashion_mnist.toml")
    document = json.loads((out / "metrics.json").read_text())
    total = sum(FASHION_SIZES.values())  # below the config's limit, so every image is used
    assert document["train_examples"] + document["test_examples"] == total
    assert 0.2 < document["test_examples"] / total < 0.3


def test_failed_run_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    def broken_plot(*args, **kwargs):
        raise RuntimeError("plotting failed")

    monkeypatch.setattr(plots, "training_curves", broken_plot)
    config = str(ROOT / "configs" / "hinge_digits.toml")
    with pytest.raises(RuntimeError, match="plotting failed"):
        main(["train", config, "--out", str(tmp_path / "out"), *SMALL_SLICE])
    assert list(tmp_path.iterdir()) == []


def test_bench_forwards_options_to_the_benchmark(capfd):
    options = ["--n", "256", "--d", "8", "--modes", "fused:function", "--repeats", "1"]
    assert main(["bench", *options]) == 0
    table = capfd.readouterr().out
    assert "| 256 | 8 | fused | function |" in table


def test_circle_digits_main_job_reaches_recall_at_1(tmp_path):
    """The README's main job, end to end: the acceptance bar is Recall@1 >= 0.95."""
    out = tmp_path / "circle_digits"
    command = [sys.executable, "-m", "keras_margin_cli", "train", "configs/circle_digits.toml"]
    result = subprocess.run(
        command + ["--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = json.loads((out / "metrics.json").read_text())["runs"]
    assert run["metrics"]["recall_at_1"] >= 0.95
    assert run["metrics"]["map_at_r"] > 0.8


def test_unreadable_keras_dataset_is_one_clear_error(tmp_path):
    """A corrupt cached file (or a failed download) names the source and where it is cached."""
    folder = tmp_path / "datasets" / "fashion-mnist"
    folder.mkdir(parents=True)
    for split in ("train", "t10k"):
        for kind in ("labels-idx1", "images-idx3"):
            (folder / f"{split}-{kind}-ubyte.gz").write_bytes(b"not gzip")
    config = ROOT / "configs" / "circle_fashion_mnist.toml"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "keras_margin_cli",
            "train",
            str(config),
            "--out",
            str(tmp_path / "o"),
        ],
        env={**os.environ, "KERAS_HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 2
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith(f"keras-margin: error: {config}: data.source: keras.datasets.")
    assert "fashion_mnist could not be loaded" in error and "KERAS_HOME" in error
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob(".o.incomplete*"))
