"""Training and re-measuring the models of an experiment config.

Every (loss, seed) pair of a config is one run. A run's directory holds ``model.keras`` and
the SavedModel export; the experiment's ``metrics.json`` lists the runs, their held-out
metrics, and their mean and spread per loss.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import statistics
import time
from importlib import metadata

import keras
import numpy as np
import tensorflow as tf

from keras_margin import export
from keras_margin import ops as fused_ops
from keras_margin_cli import data as datasets
from keras_margin_cli import finished, machine, metrics

PREDICT_BATCH = 1024  # train and evaluate predict alike, so their metrics agree bit for bit
# One name for every label form, so that the curves of compared losses share a panel.
TRAINING_ACCURACY = {
    "ids": lambda: keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
    "one_hot": lambda: keras.metrics.CategoricalAccuracy(name="accuracy"),
    "sign": lambda: keras.metrics.MeanMetricWrapper(metrics.sign_accuracy, name="accuracy"),
}


@dataclasses.dataclass
class Run:
    loss: object  # a config.LossConfig
    seed: int
    path: str  # relative to the experiment directory

    @property
    def id(self):
        return f"{self.loss.label}-seed{self.seed}"


def plan(config):
    """The runs of ``config``; a single run writes to the experiment directory itself."""
    runs = [Run(loss, seed, ".") for loss in config.losses for seed in config.train.seeds]
    if len(runs) > 1:
        for run in runs:
            run.path = f"runs/{run.id}"
    return runs


def build_model(config, input_dim, loss):
    """A multilayer perceptron whose head suits ``loss`` (unit embeddings, scores or probs)."""
    layers = [keras.Input((input_dim,), name="inputs")]
    for units in config.model.hidden_units:
        layers.append(keras.layers.Dense(units, activation="relu"))
        if config.model.dropout:
            layers.append(keras.layers.Dropout(config.model.dropout))
    head = loss.head
    if head == "unit_norm":
        layers.append(keras.layers.Dense(config.model.embedding_dim))
        layers.append(keras.layers.UnitNormalization())
    else:
        units = 1 if loss.kind.task == "binary" else config.num_classes
        activation = "softmax" if head == "softmax" else None
        layers.append(keras.layers.Dense(units, activation=activation))
    return keras.Sequential(layers, name=loss.label.replace("-", "_"))


def measure(config, split, predictions):
    """The held-out metrics of a model's test-set ``predictions``."""
    if config.task == "embedding":
        return metrics.retrieval(predictions, split.y_test)
    positive = np.isin(split.y_test, config.data.positive_classes or ())
    return metrics.accuracy(predictions, split.y_test, config.task, positive)


def predict(model, split):
    return model.predict(split.x_test, batch_size=PREDICT_BATCH, verbose=0)


class HeldOutRetrieval(keras.callbacks.Callback):
    """Adds the test set's ``val_recall_at_1`` and ``val_map_at_r`` to every epoch's logs.

    Circle's loss says little about retrieval: the test loss stays high while Recall@1 is
    near perfect, so the curves show the metrics themselves.
    """

    def __init__(self, split):
        super().__init__()
        self.split = split

    def on_epoch_end(self, epoch, logs=None):
        found = metrics.retrieval(predict(self.model, self.split), self.split.y_test)
        logs.update({f"val_{name}": value for name, value in found.items()})


def _label_spec(kind, num_classes):
    if kind.labels == "ids":
        return tf.TensorSpec([None], tf.int64)
    return tf.TensorSpec([None, 1 if kind.labels == "sign" else num_classes], tf.float32)


def save(model, loss, config, directory):
    """``model.keras`` and a SavedModel with ``serve`` and ``compute_loss`` endpoints."""
    model.save(directory / finished.MODEL_FILE)
    archive = keras.export.ExportArchive()
    archive.track(model)
    input_spec = tf.TensorSpec([None, model.inputs[0].shape[1]], tf.float32, name="inputs")
    archive.add_endpoint("serve", model.call, input_signature=[input_spec])
    export.add_loss_endpoint(archive, model, model.loss, _label_spec(loss.kind, config.num_classes))
    archive.write_out(str(directory / "saved_model"), verbose=False)


def train(config, split, run, directory, progress):
    """Trains one run, saves it under ``directory``; returns its record and test predictions."""
    keras.utils.set_random_seed(run.seed)
    kind = run.loss.kind
    train_ids, noise = split.y_train, 0.0
    if config.data.label_noise:
        train_ids, noise = datasets.add_symmetric_noise(
            train_ids, config.data.label_noise, config.num_classes, run.seed
        )
    y_train = datasets.encode(train_ids, kind.labels, config.data, config.num_classes)
    y_test = datasets.encode(split.y_test, kind.labels, config.data, config.num_classes)
    model = build_model(config, split.x_train.shape[1], run.loss)
    model.compile(
        optimizer=keras.optimizers.Adam(config.train.learning_rate),
        loss=run.loss.build(),
        metrics=None if kind.task == "embedding" else [TRAINING_ACCURACY[kind.labels]()],
    )
    started = time.perf_counter()
    history = model.fit(
        split.x_train,
        y_train,
        batch_size=config.train.batch_size,
        epochs=config.train.epochs,
        validation_data=(split.x_test, y_test),
        callbacks=[HeldOutRetrieval(split)] if kind.task == "embedding" else [],
        verbose=progress,
    )
    seconds = time.perf_counter() - started
    predictions = predict(model, split)
    directory.mkdir(parents=True, exist_ok=True)
    save(model, run.loss, config, directory)
    record = {
        "id": run.id,
        "loss": run.loss.name,
        "label": run.loss.label,
        "seed": run.seed,
        "path": run.path,
        "train_label_noise": noise,
        "train_seconds": round(seconds, 3),
        "metrics": measure(config, split, predictions),
        # Per epoch, as plotted in training_curves.png.
        "history": {k: [float(v) for v in values] for k, values in history.history.items()},
    }
    return record, predictions


def _engine():
    """The build of the op's CPU engine in use, or None and why it is unavailable."""
    try:
        return {"engine_isa": fused_ops.engine_isa()}
    # ValueError: a KERAS_MARGIN_ENGINE_ISA that names no build that runs here.
    except (fused_ops.CustomOpUnavailableError, ValueError) as error:
        return {"engine_isa": None, "engine_unavailable": str(error)}


def _onednn():
    """Whether TensorFlow's oneDNN kernels are on, as TensorFlow decided when it started.

    ``TF_ENABLE_ONEDNN_OPTS`` decides where it is set; unset, TensorFlow's default for the
    platform does, which on Linux x86-64 is on only for CPUs with AVX512_VNNI, AVX512_BF16,
    AVX_VNNI or AMX. TensorFlow exposes its decision only privately: None if that moves.
    """
    try:
        from tensorflow.python.util._pywrap_util_port import IsMklEnabled
    except ImportError:
        return None
    return bool(IsMklEnabled())


def environment():
    """Where the runs were trained: per-seed figures depend on the CPU's rounding, so on its
    vector extensions, the op's engine build and whether oneDNN's kernels compute."""
    return {
        "cpu": machine.cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_vector_extensions": machine.vector_extensions(),
        **_engine(),
        "onednn": _onednn(),
        "TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
        "python": platform.python_version(),
        **{name: metadata.version(name) for name in ("keras-margin", "keras", "tensorflow")},
    }


def summarize(config, records):
    """Mean, sample standard deviation and values of each metric, per loss label."""
    summary = {}
    for loss in config.losses:
        mine = [r["metrics"] for r in records if r["label"] == loss.label]
        summary[loss.label] = {
            name: {
                "mean": statistics.fmean(values),
                "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                "values": values,
            }
            for name in mine[0]
            for values in [[m[name] for m in mine]]
        }
    return summary


def format_summary(document):
    """Lines of text: each loss's metrics as mean +- std over seeds."""
    lines = []
    if "inputs_baseline" in document:
        shown = ", ".join(f"{k} {v:.4f}" for k, v in document["inputs_baseline"].items())
        lines.append(f"  raw inputs (no training): {shown}")
    for label, found in document["summary"].items():
        shown = ", ".join(
            f"{name} {m['mean']:.4f}" + (f" +- {m['std']:.4f}" if len(m["values"]) > 1 else "")
            for name, m in found.items()
        )
        seeds = len(next(iter(found.values()))["values"])
        lines.append(f"  {label}: {shown}" + (f"  ({seeds} seeds)" if seeds > 1 else ""))
    return lines
