"""Tiny models and data, one per loss, for training, saving and name-resolution tests."""

import keras
import numpy as np

# Loss name -> (class name, function name) as exported by keras_margin.
LOSS_NAMES = {
    "hinge": ("Hinge", "hinge"),
    "squared_hinge": ("SquaredHinge", "squared_hinge"),
    "categorical_hinge": ("CategoricalHinge", "categorical_hinge"),
    "gce": ("CategoricalGeneralizedCrossEntropy", "categorical_generalized_cross_entropy"),
    "circle": ("Circle", "circle"),
}


def make_task(loss_name, seed=0):
    """Returns (model, x, y) for a small problem that suits ``loss_name``."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(64, 6)).astype("float32")
    classes = (x[:, 0] > 0).astype("int64") + (x[:, 1] > 0).astype("int64")
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6,), name="inputs")
    if loss_name in ("hinge", "squared_hinge"):
        outputs = keras.layers.Dense(1)(inputs)
        y = (x[:, :1] > 0).astype("float32")
    elif loss_name == "categorical_hinge":
        outputs = keras.layers.Dense(3)(inputs)
        y = np.eye(3, dtype="float32")[classes]
    elif loss_name == "gce":
        outputs = keras.layers.Dense(3, activation="softmax")(inputs)
        y = classes
    elif loss_name == "circle":
        outputs = keras.layers.UnitNormalization()(keras.layers.Dense(4)(inputs))
        y = classes
    else:
        raise ValueError(loss_name)
    return keras.Model(inputs, outputs), x, y
