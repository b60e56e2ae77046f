"""Guards the Keras internals keras_margin relies on (see keras_margin/_keras_internals.py)."""

import keras

from keras_margin import _keras_internals


def test_loss_name_table_is_what_keras_losses_get_reads():
    _keras_internals.LOSS_NAME_TABLE["__keras_margin_probe__"] = keras.losses.Hinge
    try:
        assert isinstance(keras.losses.get("__keras_margin_probe__"), keras.losses.Hinge)
    finally:
        del _keras_internals.LOSS_NAME_TABLE["__keras_margin_probe__"]


def test_keras_mask_helpers_round_trip():
    values = keras.ops.convert_to_tensor([1.0, 0.0])
    _keras_internals.set_keras_mask(values, values > 0)
    assert keras.ops.convert_to_numpy(_keras_internals.get_keras_mask(values)).tolist() == [
        True,
        False,
    ]
