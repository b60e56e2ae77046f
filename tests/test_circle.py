"""Keras-style tests of Circle, checked against an independent numpy reference."""

import functools

import keras
import numpy as np
import pytest
import reference
import tensorflow as tf

from keras_margin import losses


def embeddings(rng, n, d):
    x = rng.normal(size=(n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(params=["composite", "fused"])
def implementation(request):
    """Runs a test through the composite keras.ops path and through the fused C++ op."""
    if request.param == "fused":
        from keras_margin import ops as fused_ops

        assert fused_ops.custom_op_available(), fused_ops.custom_op_unavailable_reason()
    return request.param


@pytest.fixture
def batch(rng):
    # Class 3 has a single member, so its row has no positive and a loss of 0 (masked).
    return np.array([0, 0, 1, 1, 1, 2, 2, 3]), embeddings(rng, 8, 6)


class TestCircle:
    def test_config(self):
        loss = losses.Circle(
            gamma=32.0,
            margin=0.25,
            remove_diagonal=False,
            name="c",
            implementation="composite",
            cross_replica=False,
        )
        config = loss.get_config()
        assert config == {
            "name": "c",
            "reduction": "sum_over_batch_size",
            "dtype": None,
            "gamma": 32.0,
            "margin": 0.25,
            "remove_diagonal": False,
            "implementation": "composite",
            "cross_replica": False,
        }
        assert losses.Circle.from_config(config).get_config() == config

    def test_unweighted(self, batch, implementation):
        labels, x = batch
        rows = reference.circle(labels, x)
        assert rows[-1] == 0.0 and np.all(rows[:-1] > 0)
        circle = functools.partial(losses.Circle, implementation=implementation)
        np.testing.assert_allclose(circle(reduction=None)(labels, x), rows, rtol=1e-5)
        # The zero-loss row is masked: the mean runs over the seven others.
        np.testing.assert_allclose(circle()(labels, x), rows[:-1].mean(), rtol=1e-5)
        np.testing.assert_allclose(circle(reduction="sum")(labels, x), rows.sum(), rtol=1e-5)

    def test_weighted(self, batch, rng, implementation):
        labels, x = batch
        weights = rng.uniform(0.5, 2.0, size=8)
        rows = reference.circle(labels, x)
        circle = functools.partial(losses.Circle, implementation=implementation)
        loss = circle(reduction="sum")(labels, x, sample_weight=weights)
        np.testing.assert_allclose(loss, (rows * weights).sum(), rtol=1e-5)
        loss = circle()(labels, x, sample_weight=weights)
        np.testing.assert_allclose(loss, (rows * weights)[:-1].sum() / 7, rtol=1e-5)

    def test_zero_weighted(self, batch, implementation):
        labels, x = batch
        loss = losses.Circle(implementation=implementation)
        np.testing.assert_allclose(loss(labels, x, sample_weight=np.zeros(8)), 0.0)

    @pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float64"])
    def test_dtype(self, batch, dtype, implementation):
        labels, x = batch
        loss = losses.Circle(gamma=16.0, dtype=dtype, implementation=implementation)(labels, x)
        assert keras.backend.standardize_dtype(loss.dtype) == dtype
        expected = reference.circle(labels, x, gamma=16.0)[:-1].mean()
        np.testing.assert_allclose(float(loss), expected, rtol=5e-2)

    def test_reference_set(self, rng, implementation):
        labels, x = rng.integers(0, 3, size=6), embeddings(rng, 6, 5)
        ref_labels, ref = rng.integers(0, 3, size=9), embeddings(rng, 9, 5)
        for remove_diagonal in (True, False):
            got = losses.circle(
                labels, x, ref_labels=ref_labels, ref_embeddings=ref,
                gamma=80.0, margin=0.4, remove_diagonal=remove_diagonal,
                implementation=implementation,
            )  # fmt: skip
            want = reference.circle(labels, x, ref_labels, ref, 80.0, 0.4, remove_diagonal)
            np.testing.assert_allclose(got, want, rtol=1e-5)

    def test_labels_of_shape_n_by_1(self, batch, implementation):
        labels, x = batch
        loss = losses.Circle(reduction=None, implementation=implementation)
        np.testing.assert_allclose(loss(labels[:, None], x), reference.circle(labels, x), rtol=1e-5)

    def test_hyperparameters_are_attributes_as_in_keras(self, batch):
        loss = losses.Circle(gamma=64.0, margin=0.25, remove_diagonal=False)
        theirs = keras.losses.Circle(gamma=64.0, margin=0.25, remove_diagonal=False)
        for name in ("gamma", "margin", "remove_diagonal"):
            assert getattr(loss, name) == getattr(theirs, name), name
        assert (loss.implementation, loss.cross_replica) == ("auto", True)
        loss.gamma = 32.0  # read by the next call and by get_config, as in Keras
        np.testing.assert_allclose(
            loss(*batch), losses.Circle(gamma=32.0, margin=0.25, remove_diagonal=False)(*batch)
        )
        assert loss.get_config()["gamma"] == 32.0

    @pytest.mark.parametrize("jit_compile", [False, True])
    @pytest.mark.parametrize("dtype", ["uint8", "uint16", "uint32", "uint64", "int8", "int16"])
    def test_every_integer_dtype_keeps_distinct_ids_distinct(
        self, rng, implementation, dtype, jit_compile
    ):
        top = np.iinfo(dtype).max
        # uint64 ids 2**32 apart, which Keras's type promotion merges, and the largest ids.
        wide = [1, 2**32 + 1, top, top - 1] if dtype == "uint64" else [1, 2, top, top - 1]
        ids = np.array(wide * 2, dtype=dtype)
        dense = np.array([0, 1, 2, 3] * 2)
        x = embeddings(rng, 8, 4)
        fn = tf.function(
            lambda labels: losses.circle(labels, x, implementation=implementation),
            jit_compile=jit_compile,
        )
        np.testing.assert_allclose(fn(ids), fn(dense), rtol=1e-6)
        if dtype == "uint64":
            merged = keras.losses.circle(ids, x)
            assert not np.allclose(merged, losses.circle(dense, x))  # Keras merges them

    def test_unknown_implementation_names_the_argument(self):
        with pytest.raises(ValueError, match="`implementation`"):
            losses.Circle(implementation="cuda")
        with pytest.raises(ValueError, match="`implementation`"):
            losses.circle([0, 0], np.eye(2), implementation="")

    @pytest.mark.parametrize("gamma", [0.0, -1.0, float("inf")])
    def test_invalid_gamma_names_gamma(self, gamma):
        with pytest.raises(ValueError, match="`gamma`"):
            losses.Circle(gamma=gamma)


@pytest.mark.parametrize(
    ("implementation", "uses_op"), [("auto", True), ("fused", True), ("composite", False)]
)
def test_implementation_decides_whether_the_graph_runs_the_op(batch, implementation, uses_op):
    import tensorflow as tf

    labels, x = batch
    loss = losses.Circle(implementation=implementation)
    graph = (
        tf.function(loss)
        .get_concrete_function(tf.constant(labels), tf.constant(x, tf.float32))
        .graph
    )
    op_types = {op.type for op in graph.get_operations()}
    assert ("KerasMargin>CircleLoss" in op_types) is uses_op
