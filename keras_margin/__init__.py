"""keras_margin: maximum-margin and metric-learning losses for Keras 3.

Importing the package registers every loss for ``.keras`` serialization and as
``"keras_margin>Name"`` strings for ``model.compile``.
"""

import importlib

from keras_margin import export, losses
from keras_margin.registry import restore_builtin_names, use_builtin_names

__version__ = "0.1.0"

__all__ = ["export", "losses", "ops", "restore_builtin_names", "use_builtin_names"]


def __getattr__(name):
    # `keras_margin.ops` is imported on first use, so that importing the package neither loads
    # the op library nor imports its TensorFlow-only wrapper.
    if name == "ops":
        return importlib.import_module("keras_margin.ops")
    raise AttributeError(f"module 'keras_margin' has no attribute {name!r}")
