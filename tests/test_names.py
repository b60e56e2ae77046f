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


def compiled_loss_module(model):
    """The module of the loss a compiled model trained with (resolved at its first fit)."""
    (loss,) = [entry.loss for entry in model._compile_loss._flat_losses]
    loss = getattr(loss, "fn", loss)  # a LossFunctionWrapper's function
    return getattr(loss, "__module__", type(loss).__module__)


def test_use_builtin_names_trains_with_keras_margin_until_restored():
    # docs/usage.md's usage: opt in, compile with a plain name, fit later.
    try:
        keras_margin.use_builtin_names()
        keras_margin.use_builtin_names()  # a second call changes nothing
        for identifier in PLAIN_NAMES:
            assert resolve(identifier) is getattr(losses, identifier), identifier
        # (task, plain name, the module keras_margin implements it in)
        cases = [
            ("categorical_hinge", "categorical_hinge", "keras_margin.losses.hinge"),
            ("gce", "categorical_generalized_cross_entropy", "keras_margin.losses.gce"),
        ]
        compiled = []
        for task, name, module in cases:
            model, x, y = make_task(task)
            model.compile(optimizer="sgd", loss=name)
            compiled.append((model, x, y, module))
        for model, x, y, module in compiled:
            assert np.isfinite(model.fit(x, y, epochs=1, verbose=0).history["loss"][0])
            assert compiled_loss_module(model) == module
    finally:
        keras_margin.restore_builtin_names()
    model, x, y = make_task("categorical_hinge")
    model.compile(optimizer="sgd", loss="categorical_hinge")
    model.fit(x, y, epochs=1, verbose=0)
    assert compiled_loss_module(model) == "keras.src.losses.losses"
    assert resolve("Circle") is keras.losses.Circle
    assert resolve("squared_hinge") is keras.losses.squared_hinge
    assert resolve("keras_margin>Circle") is losses.Circle
    with pytest.raises(ValueError, match="Could not interpret"):
        keras.losses.get("CategoricalGeneralizedCrossEntropy")


def test_the_scoped_form_is_refused_rather_than_silently_ignored():
    # A `with` block would end before Keras resolves the string at fit; the opt-in is a call.
    entered = False
    try:
        with pytest.raises(TypeError) as raised, keras_margin.use_builtin_names():
            entered = True
        message = str(raised.value)
        assert not entered
        assert "process-wide" in message and "no scoped (`with`) form" in message
        assert "use_builtin_names()" in message and "restore_builtin_names()" in message
        # The call before `with` turned the opt-in on, as the message and docstring say.
        assert resolve("Circle") is losses.Circle
    finally:
        keras_margin.restore_builtin_names()
    assert resolve("Circle") is keras.losses.Circle
