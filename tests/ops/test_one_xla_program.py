"""Cross-replica Circle in the shape TPUStrategy compiles it: the gathered global batch and
every replica's op call in one XLA program, as far as a CPU can show it.

A TPU step gathers the replicas' embeddings and labels and runs each replica's slice against
the gathered batch, with the slice's first global row as ``diagonal_offset``. Here one
``jit_compile`` function does the same for several simulated replicas (the gather is a concat)
and must give the single-device losses and gradients.
"""

import numpy as np
import pytest
import tensorflow as tf

from keras_margin.ops import circle_loss

from .helpers import make_embeddings, make_labels

HYPERPARAMETERS = {"gamma": 64.0, "margin": 0.25, "remove_diagonal": True}


@pytest.mark.parametrize("lowering", ["cpu custom call", "blocked hlo"])
@pytest.mark.parametrize("replicas, rows", [(2, 700), (4, 333)])
def test_gather_and_op_in_one_xla_program_equal_one_device(replicas, rows, lowering, monkeypatch):
    """Several of the blocked lowering's 1024-wide column tiles, the last one padded."""
    if lowering == "blocked hlo":  # what a TPU compiles; read when the function compiles
        monkeypatch.setenv("KERAS_MARGIN_XLA_BLOCKED_HLO", "1")
    rng = np.random.default_rng(replicas)
    n = replicas * rows
    x = tf.constant(make_embeddings(rng, n, 16))
    labels = tf.constant(make_labels(rng, n, "mixed", classes=40))
    weights = tf.constant(rng.random(n), tf.float32)

    def one_device(x):
        return circle_loss(x, labels, **HYPERPARAMETERS)

    def replicated(x):
        slices = tf.split(x, replicas)
        global_x = tf.concat(slices, 0)  # what the all_gather returns on every replica
        return tf.concat(
            [
                circle_loss(
                    part,
                    labels[r * rows : (r + 1) * rows],
                    global_x,
                    labels,
                    diagonal_offset=r * rows,
                    **HYPERPARAMETERS,
                )
                for r, part in enumerate(slices)
            ],
            0,
        )

    @tf.function(jit_compile=True)
    def value_and_grad(x, per_row):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = per_row(x)
            total = tf.reduce_sum(loss * weights)
        return loss, tape.gradient(total, x)

    want_loss, want_grad = value_and_grad(x, one_device)
    got_loss, got_grad = value_and_grad(x, replicated)
    np.testing.assert_allclose(got_loss, want_loss, rtol=1e-5, atol=1e-5)
    scale = np.abs(want_grad).max()
    np.testing.assert_allclose(got_grad, want_grad, rtol=1e-4, atol=1e-5 * scale)
    assert np.count_nonzero(want_loss) > n // 2
