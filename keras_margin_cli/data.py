"""Datasets for the experiment configs, split and labelled the same way on every call.

``load`` depends only on the ``[data]`` table, so ``evaluate`` rebuilds exactly the test set
that ``train`` measured. Label noise depends on the run's seed and touches training labels
only: the test set is always clean.
"""

from __future__ import annotations

import dataclasses
import importlib

import keras
import numpy as np

SPLIT_SEED = 0  # fixed, so that runs over several seeds share one test set


def import_examples_dependency(module):
    """Imports a dependency of the ``examples`` extra, or says how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(
            f"{module} is needed by the example configs; "
            "install them with: python -m pip install 'keras-margin[examples]'"
        ) from None


def _digits():
    digits = import_examples_dependency("sklearn.datasets").load_digits()
    return digits.data / 16.0, digits.target


class DatasetUnavailableError(RuntimeError):
    """A dataset that could not be downloaded or read."""


def _keras_dataset(module):
    try:
        (x_train, y_train), (x_test, y_test) = module.load_data()
    # keras.utils.get_file reports a failed download as a bare Exception.
    except Exception as error:
        name = module.__name__.rsplit(".", 1)[-1]
        raise DatasetUnavailableError(
            f"keras.datasets.{name} could not be loaded ({error}); it downloads on first use "
            "into ~/.keras/datasets (or $KERAS_HOME/datasets), so check the network or that "
            "folder"
        ) from error
    x = np.concatenate([x_train, x_test]).reshape(len(y_train) + len(y_test), -1) / 255.0
    return x, np.concatenate([y_train, y_test])


LOADERS = {
    "digits": _digits,
    "mnist": lambda: _keras_dataset(keras.datasets.mnist),
    "fashion_mnist": lambda: _keras_dataset(keras.datasets.fashion_mnist),
}


@dataclasses.dataclass(frozen=True)
class Split:
    x_train: np.ndarray
    y_train: np.ndarray  # class ids, before any label noise
    x_test: np.ndarray
    y_test: np.ndarray


def _stratified_subset(y, size, rng):
    """``size`` indices, drawn so that every class keeps its share."""
    picked = []
    for label in np.unique(y):
        members = np.flatnonzero(y == label)
        share = max(1, round(size * len(members) / len(y)))
        picked.append(rng.choice(members, size=min(share, len(members)), replace=False))
    return np.sort(np.concatenate(picked))


def load(data):
    """The ``[data]`` table's train/test split, as float32 features and int64 class ids."""
    x, y = LOADERS[data.source]()
    x, y = x.astype("float32"), y.astype("int64")
    rng = np.random.default_rng(SPLIT_SEED)
    if data.limit is not None and data.limit < len(y):
        keep = _stratified_subset(y, data.limit, rng)
        x, y = x[keep], y[keep]
    if data.test_classes is not None:
        test = np.isin(y, data.test_classes)
    else:
        test = np.zeros(len(y), dtype=bool)
        test[_stratified_subset(y, round(data.test_fraction * len(y)), rng)] = True
    return Split(x[~test], y[~test], x[test], y[test])


def add_symmetric_noise(labels, rate, num_classes, seed):
    """Replaces each label, with probability ``rate``, by one of the other classes at random.

    This is the symmetric noise of Zhang & Sabuncu (2018). Returns the noisy labels and the
    fraction actually changed.
    """
    rng = np.random.default_rng(seed)
    flip = rng.random(len(labels)) < rate
    shift = rng.integers(1, num_classes, size=len(labels))
    noisy = np.where(flip, (labels + shift) % num_classes, labels)
    return noisy, float(np.mean(noisy != labels))


def encode(ids, kind, data, num_classes):
    """Class ids in the form a loss expects: ``ids``, ``one_hot`` or ``sign`` (-1 / +1)."""
    if kind == "sign":
        positive = np.isin(ids, data.positive_classes)
        return np.where(positive, 1.0, -1.0).astype("float32")[:, None]
    if kind == "one_hot":
        return np.eye(num_classes, dtype="float32")[ids]
    return ids
