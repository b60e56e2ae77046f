"""Where the fused op runs: the CPU kernel, the XLA program being traced, or an XLA function
of its own on devices without a kernel (GPUs), and that the last computes the same thing."""

import numpy as np
import pytest
import tensorflow as tf

from keras_margin.ops import circle as fused

from .helpers import make_embeddings, make_labels


@pytest.mark.parametrize(
    "device_type, in_xla, expected",
    [
        ("CPU", False, fused.KERNEL),
        ("CPU", True, fused.LOWERING),
        ("GPU", False, fused.COMPILED),
        ("GPU", True, fused.LOWERING),
        ("TPU", True, fused.LOWERING),
        ("TPU", False, fused.COMPILED),
    ],
)
def test_placement_table(device_type, in_xla, expected):
    assert fused.placement(device_type, in_xla) == expected


def test_device_type_of_placed_and_unplaced_tensors():
    with tf.device("/CPU:0"):
        assert fused._device_type(tf.zeros([2, 3])) == "CPU"

    @tf.function
    def unplaced(x):
        found.append(fused._device_type(x * 2))
        return x

    found = []
    unplaced(tf.zeros([2]))
    assert found == ["GPU" if tf.config.list_logical_devices("GPU") else "CPU"]


def _loss_and_grads(x, labels, ref, ref_labels, compiled, monkeypatch, mode):
    if compiled:  # as on a GPU outside XLA
        monkeypatch.setattr(fused, "_device_type", lambda x: "GPU")

    def step(x, ref):
        with tf.GradientTape() as tape:
            tape.watch([x, ref])
            loss = fused.circle_loss(
                x,
                labels,
                None if ref_labels is None else ref,
                ref_labels,
                gamma=48.0,
                margin=0.3,
                remove_diagonal=True,
            )
            total = tf.reduce_sum(loss * tf.range(1.0, loss.shape[0] + 1.0, dtype=loss.dtype))
        return loss, tape.gradient(total, [x, ref], unconnected_gradients="zero")

    if mode == "function":
        step = tf.function(step)
    return [np.asarray(t) for t in (lambda r: [r[0], *r[1]])(step(x, ref))]


@pytest.mark.parametrize("mode", ["eager", "function"])
@pytest.mark.parametrize("with_reference", [False, True])
def test_compiled_placement_matches_the_kernel(monkeypatch, mode, with_reference):
    rng = np.random.default_rng(3)
    x = tf.constant(make_embeddings(rng, 40, 8))
    labels = tf.constant(make_labels(rng, 40, "mixed"))
    ref = tf.constant(make_embeddings(rng, 30, 8)) if with_reference else x
    ref_labels = tf.constant(make_labels(rng, 30, "random")) if with_reference else None
    expected = _loss_and_grads(x, labels, ref, ref_labels, False, monkeypatch, mode)
    got = _loss_and_grads(x, labels, ref, ref_labels, True, monkeypatch, mode)
    # float32 rounding of O(gamma) logits, summed in another order (as in test_circle_op)
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5 * max(1.0, np.abs(e).max()))
    assert np.abs(expected[1]).sum() > 0


def test_compiled_placement_runs_both_directions_under_xla(monkeypatch):
    monkeypatch.setattr(fused, "_device_type", lambda x: "GPU")
    forward, backward = fused._compiled_functions(
        (("gamma", "80.0"), ("margin", "0.4"), ("remove_diagonal", True), ("self_reference", True))
    )
    rng = np.random.default_rng(0)
    x = tf.constant(make_embeddings(rng, 16, 4))
    labels = tf.constant(make_labels(rng, 16, "random"), tf.int64)
    inputs = (x, labels, x, labels, tf.constant(0, tf.int64))
    hlo = forward.experimental_get_compiler_ir(*inputs)(stage="hlo")
    assert "while" in hlo.lower() or "custom-call" in hlo.lower() or "dot(" in hlo.lower()
    loss, lse_pos, lse_neg = forward(*inputs)
    backward_hlo = backward.experimental_get_compiler_ir(
        tf.ones_like(loss), inputs, lse_pos, lse_neg
    )(stage="hlo")
    assert "dot(" in backward_hlo.lower() or "custom-call" in backward_hlo.lower()
