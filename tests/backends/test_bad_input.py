"""Bad input on the active backend: the same messages as on TensorFlow.

Shape and dtype errors raise when the loss is traced, in every mode. A bad label value raises
where the backend can check it at run time (``InvalidArgumentError`` on TensorFlow,
``ValueError`` on JAX outside ``jax.jit`` and on PyTorch outside ``torch.compile``); compiled,
its row is NaN.
"""

import numpy as np
import pytest

from keras_margin import losses

from .cases import unit_rows
from .harness import BACKEND, CIRCLE_IMPLEMENTATIONS, MODES, evaluate


def circle(implementation):
    return lambda y, x: losses.circle(y, x, implementation=implementation)


def gce(y, p):
    return losses.categorical_generalized_cross_entropy(y, p, q=0.7)


SHAPE_CASES = [
    ("circle-pred-rank-1", "circle", [0, 0, 1], np.ones(3, "float32"), "`y_pred` must have rank 2"),
    (
        "circle-rows",
        "circle",
        [0, 0, 1],
        np.ones((4, 2), "float32"),
        "`y_pred` and `y_true` must have the same number of rows; received 4 and 3",
    ),
    (
        "circle-int-pred",
        "circle",
        [0, 0, 1],
        np.ones((3, 2), "int32"),
        "`y_pred` must have a floating-point dtype; received int32",
    ),
    (
        "circle-float-string-labels",
        "circle",
        np.array([True, False, True]),
        np.ones((3, 2), "float32"),
        "`y_true` must hold integer class ids; received dtype bool",
    ),
    (
        "gce-label-rank",
        "gce",
        np.zeros((2, 3), "int32"),
        np.full((2, 3), 1 / 3, "float32"),
        "`y_true` must hold one class id per row of `y_pred`",
    ),
    (
        "hinge-broadcast",
        "hinge",
        np.ones((2, 3), "float32"),
        np.ones((2, 4), "float32"),
        "`y_true` and `y_pred` must have broadcastable shapes",
    ),
]
LOSS_FUNCTIONS = {"gce": lambda impl: gce, "hinge": lambda impl: losses.hinge, "circle": circle}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("implementation", CIRCLE_IMPLEMENTATIONS)
@pytest.mark.parametrize("case", SHAPE_CASES, ids=[case[0] for case in SHAPE_CASES])
def test_shape_and_dtype_errors_name_the_argument(case, implementation, mode):
    _, loss, y_true, y_pred, message = case
    error = TypeError if "dtype" in message else ValueError
    with pytest.raises(error, match=message.replace("(", "\\(").replace(")", "\\)")):
        evaluate(LOSS_FUNCTIONS[loss](implementation), mode, np.asarray(y_true), y_pred)


def value_error():
    if BACKEND == "tensorflow":
        import tensorflow as tf

        return tf.errors.InvalidArgumentError
    return ValueError


VALUE_CASES = [
    (
        "gce-class-out-of-range",
        "gce",
        [0, 3],
        np.full((2, 3), 1 / 3, "float32"),
        [1],
        "in \\[0, 3\\)",
    ),
    ("gce-negative-class", "gce", [-1, 2], np.full((2, 3), 1 / 3, "float32"), [0], "in \\[0, 3\\)"),
    ("gce-fractional", "gce", [0.5, 2.0], np.full((2, 3), 1 / 3, "float32"), [0], "whole-number"),
]


def check_bad_rows(fn, mode, y_true, y_pred, bad_rows, message):
    """Eagerly a bad label raises; compiled, nothing can raise, and its rows are NaN."""
    if mode == "eager":
        with pytest.raises(value_error(), match=message):
            evaluate(fn, mode, y_true, y_pred)
        return
    values = evaluate(fn, mode, y_true, y_pred)
    assert np.isnan(values[bad_rows]).all()
    assert np.isfinite(np.delete(values, bad_rows)).all()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", VALUE_CASES, ids=[case[0] for case in VALUE_CASES])
def test_bad_label_values(case, mode):
    _, _, y_true, y_pred, bad_rows, message = case
    check_bad_rows(gce, mode, np.asarray(y_true), y_pred, bad_rows, message)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("implementation", CIRCLE_IMPLEMENTATIONS)
def test_fractional_circle_labels(rng, implementation, mode):
    check_bad_rows(
        circle(implementation),
        mode,
        np.array([0.0, 0.5, 1.0, 1.0]),
        unit_rows(rng, 4, 4),
        [1],
        "`y_true` must hold whole-number class ids",
    )
