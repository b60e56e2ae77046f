"""Loss cases and one distributed training step, shared by the strategy checks.

`mirrored_check.py` and `multi_worker_check.py` run in their own processes (strategies need a
fresh TensorFlow); both compare `distributed_step` under a strategy with `single_device_step`.
"""

import os
import sys

import numpy as np
import tensorflow as tf

from keras_margin import losses

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tasks import make_task  # noqa: E402

REDUCTIONS = ("sum", "sum_over_batch_size", "mean", "mean_with_sample_weight")
CASES = {
    "hinge": lambda r: losses.Hinge(reduction=r),
    "squared_hinge": lambda r: losses.SquaredHinge(reduction=r),
    "categorical_hinge": lambda r: losses.CategoricalHinge(reduction=r),
    "gce": lambda r: losses.CategoricalGeneralizedCrossEntropy(reduction=r),
    "circle": lambda r: losses.Circle(gamma=16.0, reduction=r, implementation="composite"),
    "circle_fused": lambda r: losses.Circle(gamma=16.0, reduction=r, implementation="fused"),
}


def loss_and_grads(model, loss, x, y, weights):
    with tf.GradientTape() as tape:
        value = loss(y, model(x), sample_weight=weights)
    return value, tape.gradient(value, model.trainable_variables)


def single_device_step(task, loss, x, y, weights, initial):
    model, _, _ = make_task(task)
    model.set_weights(initial)
    value, grads = tf.function(lambda: loss_and_grads(model, loss, x, y, weights))()
    return float(value), [g.numpy() for g in grads]


def distributed_step(strategy, task, loss, x, y, weights, initial, split, jit_replica=False):
    """One step under ``strategy``: (loss summed over replicas, gradients summed over them).

    With ``jit_replica`` the per-replica loss and gradients are compiled with XLA, as a TPU
    would compile them; the gradient all-reduce stays outside that region.
    """
    with strategy.scope():
        model, _, _ = make_task(task)
    model.set_weights(initial)
    bounds = [0, split, len(x)]  # replica 0 gets x[:split], replica 1 the rest

    def slices(context):
        lo, hi = (
            bounds[context.replica_id_in_sync_group],
            bounds[context.replica_id_in_sync_group + 1],
        )
        return x[lo:hi], y[lo:hi], weights[lo:hi]

    per_replica = strategy.experimental_distribute_values_from_function(slices)

    def compute(x, y, w):
        return loss_and_grads(model, loss, x, y, w)

    if jit_replica:
        compute = tf.function(compute, jit_compile=True)

    @tf.function
    def step(data):
        def replica_step(x, y, w):
            value, grads = compute(x, y, w)
            context = tf.distribute.get_replica_context()
            return value, context.all_reduce("sum", grads)

        value, grads = strategy.run(replica_step, args=data)
        return strategy.reduce("sum", value, axis=None), [
            strategy.experimental_local_results(g)[0] for g in grads
        ]

    value, grads = step(per_replica)
    return float(value), [g.numpy() for g in grads]


def case_data(case_name):
    """(task, x, y, weights, initial weights) of a 24-row global batch for a loss case."""
    task = "circle" if case_name.startswith("circle") else case_name
    _, x, y = make_task(task)
    weights = np.random.default_rng(1).uniform(0.5, 2.0, size=24).astype("float32")
    return task, x[:24], y[:24], weights, make_task(task)[0].get_weights()


def check_custom_loop_steps(strategy):
    """Every loss case and reduction, with even (12/12) and uneven (9/15) slices.

    Returns the list of mismatches between the strategy and a single device.
    """
    failures = []
    for case_name, make_loss in CASES.items():
        task, x, y, weights, initial = case_data(case_name)
        for reduction in REDUCTIONS:
            for split in (12, 9):
                want = single_device_step(task, make_loss(reduction), x, y, weights, initial)
                got = distributed_step(
                    strategy, task, make_loss(reduction), x, y, weights, initial, split
                )
                failures += mismatches(f"{case_name}/{reduction}/split={split}", got, want)
    return failures


def mismatches(case, got, want):
    """Describes how two (loss, gradients) results differ; empty if they agree."""
    found = []
    if not np.allclose(got[0], want[0], rtol=1e-4, atol=1e-5):
        found.append(f"{case}: loss {got[0]} != {want[0]}")
    for g, w in zip(got[1], want[1], strict=True):
        if not np.allclose(g, w, rtol=1e-3, atol=1e-4 * max(1.0, np.abs(w).max())):
            found.append(f"{case}: gradient max err {np.abs(g - w).max()}")
            break
    return found
