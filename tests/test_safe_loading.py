"""Tampered ``.keras`` files: a bad loss config fails loading with an error naming the key,
under Keras's ``safe_mode``, and never runs code it carries."""

import base64
import json
import marshal
import zipfile

import keras
import numpy as np
import pytest

from keras_margin import losses


def model_with(loss, outputs):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(outputs)])
    model.compile(optimizer="sgd", loss=loss)
    return model


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A saved model per loss class, as the bytes of each file in its .keras archive."""
    directory = tmp_path_factory.mktemp("saved")
    archives = {}
    for name, loss, outputs in [
        ("circle", losses.Circle(implementation="composite"), 3),
        ("gce", losses.CategoricalGeneralizedCrossEntropy(q=0.7), 3),
        ("hinge", losses.Hinge(), 1),
    ]:
        path = directory / f"{name}.keras"
        model_with(loss, outputs).save(path)
        with zipfile.ZipFile(path) as archive:
            archives[name] = {item: archive.read(item) for item in archive.namelist()}
    return archives


def tampered(saved, tmp_path, name, edit):
    files = dict(saved[name])
    config = json.loads(files["config.json"])
    edit(config["compile_config"]["loss"])
    files["config.json"] = json.dumps(config).encode()
    path = tmp_path / f"{name}-tampered.keras"
    with zipfile.ZipFile(path, "w") as archive:
        for item, data in files.items():
            archive.writestr(item, data)
    return path


def set_key(key, value):
    return lambda loss: loss["config"].__setitem__(key, value)


# (loss, edit of its serialized config, words the ValueError's message must contain)
TAMPERED = [
    ("circle", set_key("gamma", "80"), "`gamma` must be a finite float; received gamma='80'"),
    ("circle", set_key("gamma", float("inf")), "`gamma` must be a finite float"),
    ("circle", set_key("gamma", 1e300), "`gamma` must be in [0.001, 10000]"),
    ("circle", set_key("margin", 50.0), "`margin` must be in [-1, 1]"),
    ("circle", set_key("gamma", 10**400), "`gamma` must be a finite float; received an integer"),
    ("circle", set_key("dtype", {"policy": "float32"}), "Argument `dtype` must be None"),
    ("circle", set_key("remove_diagonal", "yes"), "`remove_diagonal` must be a bool"),
    ("circle", set_key("cross_replica", 1), "`cross_replica` must be a bool"),
    ("circle", set_key("implementation", "rm -rf /"), "`implementation` must be one of"),
    ("circle", set_key("colour", "red"), "Unknown Circle config key(s) ['colour']"),
    ("gce", set_key("q", 2.0), "`q` must be in [0.001, 1)"),
    ("gce", set_key("q", [0.5]), "`q` must be a finite float"),
    ("gce", set_key("reduction", "everything"), "Invalid value for argument `reduction`"),
    ("hinge", set_key("delta", 1.0), "Unknown Hinge config key(s) ['delta']"),
]
# Keras itself rejects a config that is not a dict, as a TypeError naming the class.
NOT_A_DICT = (
    "hinge",
    lambda loss: loss.__setitem__("config", "x"),
    "'config' to be a dict for Hinge",
)


@pytest.mark.parametrize("name, edit, words", [*TAMPERED, NOT_A_DICT])
def test_tampered_loss_config_fails_with_a_clear_error(saved, tmp_path, name, edit, words):
    path = tampered(saved, tmp_path, name, edit)
    with pytest.raises((TypeError, ValueError) if edit is NOT_A_DICT[1] else ValueError) as caught:
        keras.saving.load_model(path, safe_mode=True)
    assert words in str(caught.value)


def test_code_in_a_tampered_config_is_never_run(saved, tmp_path):
    marker = tmp_path / "pwned"

    def payload(y_true, y_pred):
        open(marker, "w").close()
        return y_pred

    code = base64.b64encode(marshal.dumps(payload.__code__)).decode()
    lambda_loss = {"class_name": "__lambda__", "config": {"code": code, "defaults": None}}
    shell_loss = {"module": "os", "class_name": "system", "config": f"touch {marker}"}
    for loss in (lambda_loss, shell_loss):
        path = tampered(
            saved, tmp_path, "circle", lambda old, loss=loss: (old.clear(), old.update(loss))
        )
        with pytest.raises((ValueError, TypeError)):
            keras.saving.load_model(path, safe_mode=True)
    assert not marker.exists()


def test_untampered_files_still_load(saved, tmp_path):
    path = tampered(saved, tmp_path, "circle", lambda loss: None)
    model = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(model.loss, losses.Circle)
    assert model.loss.get_config()["implementation"] == "composite"
    np.testing.assert_array_equal(model.predict(np.zeros((1, 4)), verbose=0), [[0, 0, 0]])
