"""Bad input at the public entry points: each gets an exception that names the argument.

Every case runs eagerly, under ``tf.function`` and under ``jit_compile=True``, and Circle's
through both implementations. Shape and dtype problems raise when the loss is traced. Bad label
values raise ``InvalidArgumentError`` when the loss runs, except under XLA, which cannot raise:
there the affected rows are NaN (see ``keras_margin/losses/checks.py``).
"""

import inputs
import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_margin import losses

MODES = ["eager", "function", "jit"]
IMPLEMENTATIONS = ["composite", "fused"]


def run(mode, fn, *args):
    if mode == "eager":
        return fn(*args)
    return tf.function(fn, jit_compile=mode == "jit")(*args)


def unit_rows(rng, n, d=4):
    return inputs.unit_rows(rng, n, d, "float32")


def circle_fn(implementation, **kwargs):
    return lambda y, x: losses.circle(y, x, implementation=implementation, **kwargs)


def gce_fn(y, p):
    return losses.categorical_generalized_cross_entropy(y, p, q=0.7)


# (id, loss function maker taking the implementation, y_true, y_pred maker, error, message)
SHAPE_CASES = [
    (
        "circle-pred-rank-1",
        "circle",
        [0, 0, 1],
        lambda r: unit_rows(r, 3)[:, 0],
        ValueError,
        "`y_pred` must have rank 2",
    ),
    (
        "circle-pred-rank-3",
        "circle",
        [0, 0, 1],
        lambda r: unit_rows(r, 3)[None],
        ValueError,
        "`y_pred` must have rank 2",
    ),
    (
        "circle-labels-rank-2",
        "circle",
        [[0, 0], [1, 1]],
        lambda r: unit_rows(r, 4),
        ValueError,
        "`y_true` must have shape \\(N,\\) or \\(N, 1\\)",
    ),
    (
        "circle-rows-mismatch",
        "circle",
        [0, 0, 1],
        lambda r: unit_rows(r, 4),
        ValueError,
        "`y_pred` and `y_true` must have the same number of rows; received 4 and 3",
    ),
    (
        "circle-zero-columns",
        "circle",
        [0, 0, 1],
        lambda r: np.zeros((3, 0), "float32"),
        ValueError,
        "`y_pred` must have at least one column",
    ),
    (
        "circle-int-embeddings",
        "circle",
        [0, 0, 1],
        lambda r: np.ones((3, 4), "int32"),
        TypeError,
        "`y_pred` must have a floating-point dtype",
    ),
    (
        "circle-bool-labels",
        "circle",
        [True, False, True],
        lambda r: unit_rows(r, 3),
        TypeError,
        "`y_true` must hold integer class ids",
    ),
    (
        "circle-string-labels",
        "circle",
        ["a", "b", "a"],
        lambda r: unit_rows(r, 3),
        TypeError,
        "`y_true` must hold integer class ids",
    ),
    (
        "gce-one-hot-labels",
        "gce",
        np.eye(3)[[0, 1, 2]],
        lambda r: np.full((3, 3), 1 / 3),
        ValueError,
        "`y_true` must hold one class id per row of `y_pred`",
    ),
    (
        "gce-rows-mismatch",
        "gce",
        [0, 1],
        lambda r: np.full((3, 3), 1 / 3),
        ValueError,
        "`y_pred` and `y_true` must have the same number of rows; received 3 and 2",
    ),
    (
        "gce-int-probabilities",
        "gce",
        [0, 1],
        lambda r: np.eye(2, dtype="int32"),
        TypeError,
        "`y_pred` must have a floating-point dtype",
    ),
    (
        "gce-bool-labels",
        "gce",
        [True, False],
        lambda r: np.full((2, 2), 0.5),
        TypeError,
        "`y_true` must hold integer class ids",
    ),
    (
        "hinge-shape-mismatch",
        "hinge",
        np.ones((3, 2)),
        lambda r: np.ones((3, 4)),
        ValueError,
        "`y_true` and `y_pred` must have broadcastable shapes",
    ),
    (
        "squared-hinge-shape-mismatch",
        "squared_hinge",
        np.ones((3, 2)),
        lambda r: np.ones((2, 2)),
        ValueError,
        "`y_true` and `y_pred` must have broadcastable shapes",
    ),
    (
        "categorical-hinge-rows-mismatch",
        "categorical_hinge",
        np.eye(3),
        lambda r: np.eye(4)[:, :3],
        ValueError,
        "`y_true` and `y_pred` must have broadcastable shapes",
    ),
]


def make(name, implementation):
    if name == "circle":
        return circle_fn(implementation)
    if name == "gce":
        return gce_fn
    return getattr(losses, name)


def cases_for(table):
    for case in table:
        implementations = IMPLEMENTATIONS if case[1] == "circle" else ["-"]
        for implementation in implementations:
            for mode in MODES:
                yield pytest.param(
                    case, implementation, mode, id=f"{case[0]}-{implementation}-{mode}"
                )


@pytest.mark.parametrize("case, implementation, mode", cases_for(SHAPE_CASES))
def test_bad_shapes_and_dtypes_raise_naming_the_argument(case, implementation, mode, rng):
    _, name, y_true, y_pred, error, message = case
    with pytest.raises(error, match=message):
        run(mode, make(name, implementation), np.asarray(y_true), y_pred(rng))


def test_reference_set_shapes_are_checked(rng):
    x, labels = unit_rows(rng, 4), np.array([0, 0, 1, 1])
    with pytest.raises(
        ValueError, match="`y_pred` and `ref_embeddings` must have the same number of columns"
    ):
        losses.circle(labels, x, ref_embeddings=unit_rows(rng, 4, d=3), ref_labels=labels)
    with pytest.raises(
        ValueError, match="`ref_embeddings` and `ref_labels` must have the same number of rows"
    ):
        losses.circle(labels, x, ref_embeddings=unit_rows(rng, 5), ref_labels=labels)
    with pytest.raises(ValueError, match="`ref_embeddings` must have rank 2"):
        losses.circle(labels, x, ref_embeddings=unit_rows(rng, 5)[0], ref_labels=labels)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_unknown_row_counts_are_checked_when_the_loss_runs(implementation, rng):
    fn = tf.function(
        circle_fn(implementation),
        input_signature=[tf.TensorSpec([None], tf.int32), tf.TensorSpec([None, 4], tf.float32)],
    )
    with pytest.raises(
        tf.errors.InvalidArgumentError,
        match="`y_pred` and `y_true` must have the same number of rows",
    ):
        fn(np.array([0, 0, 1], "int32"), unit_rows(rng, 4))
    gce = tf.function(
        gce_fn,
        input_signature=[tf.TensorSpec([None], tf.int32), tf.TensorSpec([None, 3], tf.float32)],
    )
    with pytest.raises(
        tf.errors.InvalidArgumentError,
        match="`y_pred` and `y_true` must have the same number of rows",
    ):
        gce(np.array([0, 1], "int32"), np.full((3, 3), 1 / 3, "float32"))


# (id, loss, labels, index of the first bad row, message)
VALUE_CASES = [
    (
        "gce-id-too-large",
        "gce",
        [0, 1, 3, 2],
        2,
        "`y_true` must hold whole-number class ids in \\[0, 3\\)",
    ),
    (
        "gce-negative-id",
        "gce",
        [0, -1, 1, 2],
        1,
        "`y_true` must hold whole-number class ids in \\[0, 3\\)",
    ),
    (
        "gce-fractional-id",
        "gce",
        [0.0, 1.0, 1.5, 2.0],
        2,
        "`y_true` must hold whole-number class ids",
    ),
    ("gce-nan-id", "gce", [0.0, np.nan, 1.0, 2.0], 1, "`y_true` must hold whole-number class ids"),
    (
        "circle-fractional-id",
        "circle",
        [0.0, 0.0, 1.5, 1.0],
        2,
        "`y_true` must hold whole-number class ids",
    ),
    (
        "circle-infinite-id",
        "circle",
        [0.0, np.inf, 1.0, 1.0],
        1,
        "`y_true` must hold whole-number class ids",
    ),
]


@pytest.mark.parametrize("case, implementation, mode", cases_for(VALUE_CASES))
def test_bad_label_values_raise_or_poison_under_xla(case, implementation, mode, rng):
    _, name, labels, bad_row, message = case
    y_pred = unit_rows(rng, 4) if name == "circle" else np.full((4, 3), 1 / 3, "float32")
    fn = make(name, implementation)
    if mode != "jit":
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            run(mode, fn, np.asarray(labels), y_pred)
        return
    values = np.asarray(run(mode, fn, np.asarray(labels), y_pred))
    assert np.isnan(values[bad_row])
    if name == "gce":  # GCE rows are independent: only the bad ones are NaN
        assert np.isfinite(np.delete(values, bad_row)).all()


def test_bad_reference_label_poisons_every_row_under_xla(rng):
    x = unit_rows(rng, 4)
    fn = lambda y, x, r: losses.circle(y, x, ref_embeddings=x, ref_labels=r)  # noqa: E731
    values = run("jit", fn, np.array([0, 0, 1, 1]), x, np.array([0.0, 0.5, 1.0, 1.0]))
    assert np.isnan(values).all()
    with pytest.raises(tf.errors.InvalidArgumentError, match="`ref_labels` must hold whole-number"):
        fn(np.array([0, 0, 1, 1]), x, np.array([0.0, 0.5, 1.0, 1.0]))


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("mode", MODES)
def test_whole_float_labels_are_accepted(implementation, mode, rng):
    x = unit_rows(rng, 6)
    ids = np.array([0, 0, 1, 1, 2, 2])
    fn = circle_fn(implementation)
    np.testing.assert_array_equal(run(mode, fn, ids.astype("float32"), x), run(mode, fn, ids, x))


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("mode", MODES)
def test_circle_ids_are_only_compared(implementation, mode, rng):
    """Negative ids and ids beyond int32 are valid and never wrap around onto each other."""
    x = unit_rows(rng, 6)
    compact = np.array([0, 0, 1, 1, 2, 2])
    unusual = np.array([-7, -7, 2**40, 2**40, 2**40 + 2**32, 2**40 + 2**32], dtype="int64")
    fn = circle_fn(implementation)
    np.testing.assert_allclose(run(mode, fn, unusual, x), run(mode, fn, compact, x), rtol=1e-6)


EMPTY_OR_ONE_ROW = {
    "circle-composite": (losses.Circle(implementation="composite"), 4, "ids"),
    "circle-fused": (losses.Circle(implementation="fused"), 4, "ids"),
    "gce": (losses.CategoricalGeneralizedCrossEntropy(), 3, "ids"),
    "hinge": (losses.Hinge(), 3, "signs"),
    "squared_hinge": (losses.SquaredHinge(), 3, "signs"),
    "categorical_hinge": (losses.CategoricalHinge(), 3, "one_hot"),
}


@pytest.mark.parametrize("loss_name", EMPTY_OR_ONE_ROW)
@pytest.mark.parametrize("rows", [0, 1])
@pytest.mark.parametrize("mode", MODES)
def test_empty_and_single_row_batches_are_finite(loss_name, rows, mode, rng):
    """An empty batch reduces to 0 with zero gradients; one row gives a finite loss."""
    loss, columns, labels = EMPTY_OR_ONE_ROW[loss_name]
    y_pred = tf.Variable(np.full((rows, columns), 1 / columns, "float32"))
    y_true = {
        "ids": np.zeros(rows, "int32"),
        "signs": np.ones((rows, columns), "float32"),
        "one_hot": np.eye(columns, dtype="float32")[:rows],
    }[labels]

    def step():
        with tf.GradientTape() as tape:
            value = loss(y_true, y_pred)
        return value, tape.gradient(value, y_pred)

    value, gradient = run(mode, step)
    assert value.shape == ()
    assert np.isfinite(value.numpy()) and np.isfinite(gradient.numpy()).all()
    assert gradient.shape == (rows, columns)
    if rows == 0:
        assert float(value) == 0.0
    if loss_name.startswith("circle"):  # one row has no pair: nothing to learn
        assert float(value) == 0.0 and not gradient.numpy().any()


# (argument, bad value, exception, message) for Circle; each runs through the class, the
# function and from_config.
CIRCLE_ARGUMENTS = [
    ("gamma", float("nan"), ValueError, "`gamma` must be a finite float"),
    ("gamma", float("inf"), ValueError, "`gamma` must be a finite float"),
    ("gamma", 0.0, ValueError, "`gamma` must be in \\[0.001, 10000\\]"),
    ("gamma", -1.0, ValueError, "`gamma` must be in \\[0.001, 10000\\]"),
    ("gamma", 1e6, ValueError, "`gamma` must be in \\[0.001, 10000\\]"),
    ("gamma", "80", TypeError, "`gamma` must be a finite float"),
    ("gamma", True, TypeError, "`gamma` must be a finite float"),
    ("gamma", 10**400, ValueError, "`gamma` must be a finite float; received an integer of 401"),
    ("margin", float("nan"), ValueError, "`margin` must be a finite float"),
    ("margin", 2.0, ValueError, "`margin` must be in \\[-1, 1\\]"),
    ("remove_diagonal", "yes", TypeError, "`remove_diagonal` must be a bool"),
    ("implementation", "gpu", ValueError, "`implementation` must be one of"),
]


@pytest.mark.parametrize("argument, value, error, message", CIRCLE_ARGUMENTS)
def test_circle_arguments_are_checked_everywhere(argument, value, error, message, rng):
    with pytest.raises(error, match=message):
        losses.Circle(**{argument: value})
    with pytest.raises(error, match=message):
        losses.circle(np.array([0, 0]), unit_rows(rng, 2), **{argument: value})
    config = {**losses.Circle().get_config(), argument: value}
    with pytest.raises(ValueError, match=message):
        losses.Circle.from_config(config)


@pytest.mark.parametrize(
    "value, error, message",
    [
        (0.0, ValueError, "`q` must be in \\[0.001, 1\\)"),
        (1.0, ValueError, "`q` must be in \\[0.001, 1\\)"),
        (float("nan"), ValueError, "`q` must be a finite float"),
        ("0.5", TypeError, "`q` must be a finite float"),
        (-(10**400), ValueError, "`q` must be a finite float; received an integer of 401"),
    ],
)
def test_gce_q_is_checked_everywhere(value, error, message):
    with pytest.raises(error, match=message):
        losses.CategoricalGeneralizedCrossEntropy(q=value)
    with pytest.raises(error, match=message):
        losses.categorical_generalized_cross_entropy(np.array([0]), np.array([[1.0]]), q=value)
    with pytest.raises(ValueError, match=message):
        losses.CategoricalGeneralizedCrossEntropy.from_config({"q": value})


@pytest.mark.parametrize("loss_class", [losses.Hinge, losses.Circle])
def test_configs_with_unknown_keys_or_bad_reductions_are_refused(loss_class):
    with pytest.raises(ValueError, match=r"Unknown \w+ config key\(s\) \['margin_of_error'\]"):
        loss_class.from_config({"margin_of_error": 1})
    with pytest.raises(ValueError, match="Invalid value for argument `reduction`"):
        loss_class.from_config({"reduction": "median"})
    with pytest.raises(ValueError, match="config must be a dict"):
        loss_class.from_config(["reduction", "sum"])


@pytest.mark.parametrize("dtype", [{"colour": "red"}, {"class_name": "Nope", "config": {}}, 3])
@pytest.mark.parametrize("loss_class", [losses.Hinge, losses.Circle])
def test_bad_dtypes_are_a_value_error_naming_dtype(loss_class, dtype):
    with pytest.raises(ValueError, match="Argument `dtype` must be None, a dtype name"):
        loss_class(dtype=dtype)
    with pytest.raises(ValueError, match="Argument `dtype` must be None, a dtype name"):
        loss_class.from_config({"dtype": dtype})


def test_a_dtype_policy_config_is_a_valid_dtype():
    policy = keras.DTypePolicy("float64")
    loss = losses.Hinge(dtype=keras.saving.serialize_keras_object(policy))
    assert loss.dtype == "float64"
