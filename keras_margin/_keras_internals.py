"""The few Keras internals keras_margin depends on, gathered in one place.

Keras 3 keeps these out of its public API. Each is needed for drop-in behaviour:

- ``LOSS_NAME_TABLE`` is the dict ``keras.losses.get`` reads string identifiers from. Keras
  resolves ``compile(loss="...")`` only from it (keras issue 20112), so plugin names must be
  added there to be usable as strings.
- ``get_keras_mask`` / ``set_keras_mask`` read and attach the Keras mask that ``Loss.__call__``
  honours; Circle masks its zero-loss rows exactly as ``keras.losses.Circle`` does.

``tests/test_keras_internals.py`` fails loudly if a Keras release moves any of them.
"""

from keras.src.backend import get_keras_mask, set_keras_mask
from keras.src.losses import ALL_OBJECTS_DICT as LOSS_NAME_TABLE

__all__ = ["LOSS_NAME_TABLE", "get_keras_mask", "set_keras_mask"]
