"""String names: `keras_margin>...` always, Keras's plain names only inside the opt-in."""

import keras
import numpy as np
import pytest
from tasks import LOSS_NAMES, make_task

import keras_margin
from keras_margin import losses

PLAIN_NAMES = [name for pair in LOSS_NAMES.values() for name in pair]


def resolve(identifier):
    loss = keras.losses.get(identifier)
    return loss if callable(loss) and not isinstance(loss, keras.losses.Loss) else type(loss)


@pytest.mark.parametrize("identifier", PLAIN_NAMES)
def test_namespaced_names_resolve_to_keras_margin(identifier):
    assert resolve(f"keras_margin>{identifier}") is getattr(losses, identifier)


@pytest.mark.parametrize("name", sorted(LOSS_NAMES))
def test_namespaced_names_train_in_compile(name):
    class_name, function_name = LOSS_NAMES[name]
    for identifier in (class_name, function_name):
        model, x, y = make_task(name)
        model.compile(optimizer="sgd", loss=f"keras_margin>{identifier}")
        history = model.fit(x, y, epochs=2, verbose=0)
        assert np.all(np.isfinite(history.history["loss"]))


def test_keras_names_keep_their_meaning_without_opt_in():
    assert resolve("circle") is keras.losses.circle
    assert resolve("Hinge") is keras.losses.Hinge
    with pytest.raises(ValueError, match="Could not interpret"):
        keras.losses.get("categorical_generalized_cross_entropy")


def test_use_builtin_names_as_a_with_block():
    with keras_margin.use_builtin_names():
        for identifier in PLAIN_NAMES:
            assert resolve(identifier) is getattr(losses, identifier), identifier
        model, x, y = make_task("gce")
        model.compile(optimizer="sgd", loss="categorical_generalized_cross_entropy")
        assert np.isfinite(model.fit(x, y, epochs=1, verbose=0).history["loss"][0])
    assert resolve("circle") is keras.losses.circle
    assert resolve("CategoricalHinge") is keras.losses.CategoricalHinge
    with pytest.raises(ValueError, match="Could not interpret"):
        keras.losses.get("CategoricalGeneralizedCrossEntropy")


def test_use_builtin_names_as_a_call_until_restored():
    try:
        keras_margin.use_builtin_names()
        keras_margin.use_builtin_names()  # a second call changes nothing
        assert resolve("Circle") is losses.Circle
        assert resolve("squared_hinge") is losses.squared_hinge
    finally:
        keras_margin.restore_builtin_names()
    assert resolve("Circle") is keras.losses.Circle
    assert resolve("squared_hinge") is keras.losses.squared_hinge
    assert resolve("keras_margin>Circle") is losses.Circle


def test_nested_blocks_restore_in_order():
    with keras_margin.use_builtin_names():
        with keras_margin.use_builtin_names():
            pass
        assert resolve("hinge") is losses.hinge
    assert resolve("hinge") is keras.losses.hinge
