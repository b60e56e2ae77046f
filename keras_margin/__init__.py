"""keras_margin: maximum-margin and metric-learning losses for Keras 3.

Importing the package registers every loss for ``.keras`` serialization and as
``"keras_margin>Name"`` strings for ``model.compile``.
"""

from keras_margin import export, losses
from keras_margin.registry import restore_builtin_names, use_builtin_names

__version__ = "0.1.0"

__all__ = ["export", "losses", "restore_builtin_names", "use_builtin_names"]
