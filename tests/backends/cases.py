"""Inputs for each loss, valid for keras.losses too (where Keras and keras_margin agree)."""

import keras
import numpy as np

from keras_margin import losses

LOSSES = ["hinge", "squared_hinge", "categorical_hinge", "gce", "circle"]


def unit_rows(rng, n, d, dtype="float32"):
    x = rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(dtype)


def inputs(name, rng):
    """(y_true, y_pred) for a loss: float predictions, labels of the kind the loss takes."""
    if name in ("hinge", "squared_hinge"):
        return rng.choice([-1.0, 1.0], size=(6, 3)).astype("float32"), rng.normal(
            size=(6, 3)
        ).astype("float32")
    if name == "categorical_hinge":
        return np.eye(3, dtype="float32")[rng.integers(0, 3, 6)], rng.normal(size=(6, 3)).astype(
            "float32"
        )
    if name == "gce":
        logits = rng.normal(size=(6, 4))
        probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        return rng.integers(0, 4, 6), probs.astype("float32")
    # Class 3 has one member: its row has no positive, so a zero (masked) loss.
    return np.array([0, 0, 1, 1, 2, 2, 0, 1, 2, 3]), unit_rows(rng, 10, 8)


def pair(name, reduction="sum_over_batch_size", implementation="composite"):
    """(keras_margin's loss, Keras's loss) with the same arguments."""
    kwargs = {"reduction": reduction}
    if name == "gce":
        return (
            losses.CategoricalGeneralizedCrossEntropy(q=0.7, **kwargs),
            keras.losses.CategoricalGeneralizedCrossEntropy(q=0.7, **kwargs),
        )
    if name == "circle":
        return (
            losses.Circle(gamma=16.0, implementation=implementation, **kwargs),
            keras.losses.Circle(gamma=16.0, **kwargs),
        )
    classes = {
        "hinge": (losses.Hinge, keras.losses.Hinge),
        "squared_hinge": (losses.SquaredHinge, keras.losses.SquaredHinge),
        "categorical_hinge": (losses.CategoricalHinge, keras.losses.CategoricalHinge),
    }[name]
    return tuple(cls(**kwargs) for cls in classes)
