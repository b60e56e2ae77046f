"""``fit``, ``evaluate``, ``.keras`` round trips and string names on the active backend,
including a model saved under another backend."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_margin
from keras_margin import losses

from .harness import BACKEND, CIRCLE_IMPLEMENTATIONS

# task -> (keras_margin loss, Keras's loss, head of the model: None, "softmax" or "unit")
TASKS = {
    "hinge": (lambda: losses.Hinge(), keras.losses.Hinge, None),
    "squared_hinge": (lambda: losses.SquaredHinge(), keras.losses.SquaredHinge, None),
    "categorical_hinge": (lambda: losses.CategoricalHinge(), keras.losses.CategoricalHinge, None),
    "gce": (
        lambda: losses.CategoricalGeneralizedCrossEntropy(q=0.7),
        lambda: keras.losses.CategoricalGeneralizedCrossEntropy(q=0.7),
        "softmax",
    ),
    **{
        f"circle-{implementation}": (
            lambda implementation=implementation: losses.Circle(
                gamma=16.0, implementation=implementation
            ),
            lambda: keras.losses.Circle(gamma=16.0),
            "unit",
        )
        for implementation in CIRCLE_IMPLEMENTATIONS
    },
}


def data(task):
    rng = np.random.default_rng(7)
    x = rng.normal(size=(48, 8)).astype("float32")
    classes = rng.integers(0, 4, 48)
    if task.startswith("circle") or task == "gce":
        return x, classes
    if task == "categorical_hinge":
        return x, np.eye(4, dtype="float32")[classes]
    return x, np.where(classes % 2 == 0, -1.0, 1.0)[:, None].repeat(4, 1).astype("float32")


def model_for(task, seed=3):
    head = TASKS[task][2]
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((8,)), keras.layers.Dense(4, activation="softmax" if head else None)]
    if head == "unit":
        layers = [keras.Input((8,)), keras.layers.Dense(6), keras.layers.UnitNormalization()]
    return keras.Sequential(layers)


def train(task, loss):
    model = model_for(task)
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss=loss)
    x, y = data(task)
    history = model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    return model, history.history["loss"]


@pytest.mark.parametrize("task", list(TASKS))
def test_fit_and_evaluate_equal_keras(task):
    ours_model, ours_history = train(task, TASKS[task][0]())
    keras_model, keras_history = train(task, TASKS[task][1]())
    x, y = data(task)
    np.testing.assert_allclose(ours_history, keras_history, rtol=1e-5)
    assert ours_history[1] != ours_history[0]
    for ours, theirs in zip(ours_model.get_weights(), keras_model.get_weights(), strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(
        ours_model.evaluate(x, y, batch_size=48, verbose=0),
        keras_model.evaluate(x, y, batch_size=48, verbose=0),
        rtol=1e-5,
    )


@pytest.mark.parametrize("name", ["keras_margin>Circle", "keras_margin>categorical_hinge"])
def test_string_names_train_with_keras_margin(name):
    task = "circle-composite" if "Circle" in name else "categorical_hinge"
    instance = (
        losses.Circle(gamma=80.0, margin=0.4) if "Circle" in name else losses.CategoricalHinge()
    )
    _, by_name = train(task, name)
    _, by_instance = train(task, instance)
    np.testing.assert_allclose(by_name, by_instance, rtol=1e-6)


@pytest.mark.parametrize("task", ["gce", f"circle-{CIRCLE_IMPLEMENTATIONS[-1]}"])
def test_keras_file_round_trip(tmp_path, task):
    model, _ = train(task, TASKS[task][0]())
    path = tmp_path / "model.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    x, y = data(task)
    assert type(restored.loss) is type(model.loss)
    assert restored.loss.get_config() == model.loss.get_config()
    assert restored.evaluate(x, y, verbose=0) == pytest.approx(model.evaluate(x, y, verbose=0))


SAVE_SCRIPT = """
import json, sys
import keras, numpy as np
sys.path.insert(0, {tests!r})
from backends import test_training as t
task = {task!r}
model, _ = t.train(task, t.TASKS[task][0]())
model.save({path!r})
x, y = t.data(task)
print(json.dumps(model.evaluate(x, y, verbose=0)))
"""


@pytest.mark.parametrize("task", ["gce", "circle-composite"])
def test_a_model_saved_under_another_backend_loads_here(tmp_path, task):
    source = "jax" if BACKEND == "tensorflow" else "tensorflow"
    path = str(tmp_path / "model.keras")
    tests = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = SAVE_SCRIPT.format(tests=tests, task=task, path=path)
    env = dict(os.environ, KERAS_BACKEND=source, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-2000:]
    saved_loss = json.loads(result.stdout.strip().splitlines()[-1])
    restored = keras.saving.load_model(path)
    x, y = data(task)
    assert restored.loss.__module__.startswith("keras_margin.losses")
    assert restored.evaluate(x, y, verbose=0) == pytest.approx(saved_loss, rel=1e-5)
    assert keras_margin.backend.name() == BACKEND
