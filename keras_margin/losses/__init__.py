"""keras_margin's losses: Keras ``Loss`` classes and their per-sample functions."""

from keras_margin.losses.circle import Circle, circle
from keras_margin.losses.gce import (
    CategoricalGeneralizedCrossEntropy,
    categorical_generalized_cross_entropy,
)
from keras_margin.losses.hinge import (
    CategoricalHinge,
    Hinge,
    SquaredHinge,
    categorical_hinge,
    hinge,
    squared_hinge,
)

__all__ = [
    "CategoricalGeneralizedCrossEntropy",
    "CategoricalHinge",
    "Circle",
    "Hinge",
    "SquaredHinge",
    "categorical_generalized_cross_entropy",
    "categorical_hinge",
    "circle",
    "hinge",
    "squared_hinge",
]
