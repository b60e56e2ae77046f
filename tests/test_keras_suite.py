"""Keras 3.15's own test classes for the five losses, run against keras_margin.

The tests come from the installed Keras (``keras/src/losses/losses_test.py``), unmodified: the
module's ``losses`` global is replaced by a namespace in which the five classes and their
functions are keras_margin's and every other name is Keras's. pytest collects the five
``unittest.TestCase`` classes from this module's globals.
"""

import types

from keras.src.losses import losses as keras_losses
from keras.src.losses import losses_test as keras_losses_test

from keras_margin import losses

SWAPPED = (
    "Hinge",
    "hinge",
    "SquaredHinge",
    "squared_hinge",
    "CategoricalHinge",
    "categorical_hinge",
    "CategoricalGeneralizedCrossEntropy",
    "categorical_generalized_cross_entropy",
    "Circle",
    "circle",
)


class _KerasLossesWithKerasMargin(types.ModuleType):
    def __getattr__(self, name):
        return getattr(keras_losses, name)


_namespace = _KerasLossesWithKerasMargin("keras_margin_as_keras_losses")
for _name in SWAPPED:
    setattr(_namespace, _name, getattr(losses, _name))
keras_losses_test.losses = _namespace

HingeTest = keras_losses_test.HingeTest
SquaredHingeTest = keras_losses_test.SquaredHingeTest
CategoricalHingeTest = keras_losses_test.CategoricalHingeTest
CategoricalGeneralizedCrossEntropyTest = keras_losses_test.CategoricalGeneralizedCrossEntropyTest
CircleTest = keras_losses_test.CircleTest


def test_the_keras_tests_see_keras_margin():
    for name in SWAPPED:
        assert getattr(keras_losses_test.losses, name) is getattr(losses, name), name
    assert keras_losses_test.losses.MeanSquaredError is keras_losses.MeanSquaredError


def test_every_keras_test_of_the_five_losses_is_collected():
    counts = {
        cls.__name__: sum(name.startswith("test") for name in dir(cls))
        for cls in (
            HingeTest,
            SquaredHingeTest,
            CategoricalHingeTest,
            CategoricalGeneralizedCrossEntropyTest,
            CircleTest,
        )
    }
    assert all(count > 0 for count in counts.values()), counts
