"""`.keras` round trips: a model compiled with each loss reloads in a fresh process."""

import json
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from tasks import LOSS_NAMES, make_task

import keras_margin
from keras_margin import losses

LOSSES = {
    "hinge": losses.Hinge(reduction="sum", name="h", dtype="float64"),
    "squared_hinge": losses.SquaredHinge(reduction="mean_with_sample_weight"),
    "categorical_hinge": losses.CategoricalHinge(name="ch"),
    "gce": losses.CategoricalGeneralizedCrossEntropy(q=0.7, dtype="float64"),
    "circle": losses.Circle(gamma=32.0, margin=0.3, remove_diagonal=False, reduction="sum"),
    "circle_fused": losses.Circle(implementation="fused", cross_replica=False),
    "circle_composite": losses.Circle(implementation="composite"),
}

RELOAD_SCRIPT = """
import json, sys
import keras, numpy as np
import keras_margin  # registers the losses; nothing else is needed to load
out = {}
for name, path in json.loads(sys.argv[1]).items():
    model = keras.models.load_model(path)
    data = np.load(path + ".npz")
    loss = model.loss
    is_instance = isinstance(loss, keras.losses.Loss)
    target = type(loss) if is_instance else loss
    out[name] = {
        "loss": loss if isinstance(loss, str) else target.__module__ + "." + target.__name__,
        "config": loss.get_config() if is_instance else None,
        "value": float(model.evaluate(data["x"], data["y"], verbose=0)),
    }
    # The module of what evaluate resolved the loss to (Keras does so at the first call).
    (resolved,) = [entry.loss for entry in model._compile_loss._flat_losses]
    resolved = getattr(resolved, "fn", resolved)  # the function a LossFunctionWrapper wraps
    out[name]["resolved"] = getattr(resolved, "__module__", type(resolved).__module__)
print(json.dumps(out))
"""


def reload_in_fresh_process(paths):
    result = subprocess.run(
        [sys.executable, "-c", RELOAD_SCRIPT, json.dumps(paths)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_config_round_trip_through_keras_serialization(name):
    loss = LOSSES[name]
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert type(restored) is type(loss)
    assert restored.get_config() == loss.get_config()
    registered_name = keras.saving.serialize_keras_object(loss)["registered_name"]
    assert registered_name == f"keras_margin.losses>{type(loss).__name__}"


def train_and_save(task, loss, path):
    """Trains the task's model for an epoch with ``loss``, saves it and its data to ``path``.

    Returns the model's evaluated loss, which the reloaded model must reproduce.
    """
    model, x, y = make_task(task)
    model.compile(optimizer="sgd", loss=loss)
    model.fit(x, y, epochs=1, verbose=0)
    model.save(path)
    np.savez(path + ".npz", x=x, y=y)
    return float(model.evaluate(x, y, verbose=0))


def test_keras_files_reload_in_fresh_process(tmp_path):
    paths, expected = {}, {}
    for name, loss in LOSSES.items():
        paths[name] = str(tmp_path / f"{name}.keras")
        task = "circle" if name.startswith("circle") else name
        expected[name] = train_and_save(task, loss, paths[name])

    reloaded = reload_in_fresh_process(paths)
    for name, loss in LOSSES.items():
        got = reloaded[name]
        assert got["loss"] == f"{type(loss).__module__}.{type(loss).__name__}", name
        assert got["config"] == loss.get_config(), name
        np.testing.assert_allclose(got["value"], expected[name], rtol=1e-5, err_msg=name)


def test_string_compiled_models_reload_in_fresh_process(tmp_path):
    paths, expected = {}, {}
    for name, (class_name, function_name) in LOSS_NAMES.items():
        for identifier in (class_name, function_name):
            paths[identifier] = str(tmp_path / f"{identifier}.keras")
            expected[identifier] = train_and_save(
                name, f"keras_margin>{identifier}", paths[identifier]
            )

    reloaded = reload_in_fresh_process(paths)
    for identifier, value in expected.items():
        # The string reloads as the same string (not the bare class, which would have no
        # config), and resolves again to keras_margin's loss, as Keras's own names do.
        assert reloaded[identifier]["loss"] == f"keras_margin>{identifier}"
        assert reloaded[identifier]["resolved"].startswith("keras_margin.losses."), identifier
        np.testing.assert_allclose(reloaded[identifier]["value"], value, rtol=1e-5)


def test_package_import_alone_registers_everything():
    registered = keras.saving.get_custom_objects()
    for class_name, function_name in LOSS_NAMES.values():
        for name in (class_name, function_name):
            assert registered[f"keras_margin.losses>{name}"] is getattr(keras_margin.losses, name)
            # Compile strings stay out of the registry, or reloading would turn them into it.
            assert f"keras_margin>{name}" not in registered


def test_reload_without_import_fails_clearly(tmp_path):
    model, x, y = make_task("circle")
    model.compile(optimizer="sgd", loss=losses.Circle())
    path = Path(tmp_path / "circle.keras")
    model.save(path)
    script = f"import keras; keras.models.load_model({str(path)!r})"
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode != 0
    assert "keras_margin.losses>Circle" in result.stderr
