"""Run in a fresh process by test_distribute.py: MirroredStrategy over 2 logical CPUs.

For every loss and reduction, one custom-loop step under the strategy must give the same loss
(summed over replicas) and the same gradients (summed over replicas, as optimizers do) as one
step on a single device over the same global batch. Prints one JSON line of failures.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402

from keras_margin import losses  # noqa: E402

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


def single_device(task, loss, x, y, weights, initial):
    model, _, _ = make_task(task)
    model.set_weights(initial)
    value, grads = tf.function(lambda: loss_and_grads(model, loss, x, y, weights))()
    return float(value), [g.numpy() for g in grads]


def mirrored(strategy, task, loss, x, y, weights, initial, split):
    with strategy.scope():
        model, _, _ = make_task(task)
    model.set_weights(initial)
    bounds = [0, split, len(x)]

    def slices(context):
        lo, hi = (
            bounds[context.replica_id_in_sync_group],
            bounds[context.replica_id_in_sync_group + 1],
        )
        return x[lo:hi], y[lo:hi], weights[lo:hi]

    per_replica = strategy.experimental_distribute_values_from_function(slices)

    @tf.function
    def step(data):
        def replica_step(x, y, w):
            value, grads = loss_and_grads(model, loss, x, y, w)
            context = tf.distribute.get_replica_context()
            return value, context.all_reduce("sum", grads)

        value, grads = strategy.run(replica_step, args=data)
        return strategy.reduce("sum", value, axis=None), [
            strategy.experimental_local_results(g)[0] for g in grads
        ]

    value, grads = step(per_replica)
    return float(value), [g.numpy() for g in grads]


def one_fit_step(strategy, task, loss, x, y, initial):
    """Weights after one `model.fit` step over the whole batch, optionally under a strategy."""
    with strategy.scope():
        model, _, _ = make_task(task)
        model.set_weights(initial)
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss=loss)
    model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
    return model.get_weights()


def main():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    failures = []
    for task_name, make_loss in CASES.items():
        task = "circle" if task_name.startswith("circle") else task_name
        _, x, y = make_task(task)
        x, y = x[:24], y[:24]
        weights = np.random.default_rng(1).uniform(0.5, 2.0, size=len(x)).astype("float32")
        initial = make_task(task)[0].get_weights()
        for reduction in REDUCTIONS:
            for split in (12, 9):  # even, and uneven slices
                want = single_device(task, make_loss(reduction), x, y, weights, initial)
                got = mirrored(strategy, task, make_loss(reduction), x, y, weights, initial, split)
                case = f"{task_name}/{reduction}/split={split}"
                if not np.allclose(got[0], want[0], rtol=1e-4, atol=1e-5):
                    failures.append(f"{case}: loss {got[0]} != {want[0]}")
                for g, w in zip(got[1], want[1], strict=True):
                    if not np.allclose(g, w, rtol=1e-3, atol=1e-4 * max(1.0, np.abs(w).max())):
                        failures.append(f"{case}: gradient max err {np.abs(g - w).max()}")
                        break
        # model.fit: one SGD step on the global batch lands on the single-device weights.
        single = one_fit_step(tf.distribute.get_strategy(), task, make_loss("sum_over_batch_size"),
                              x, y, initial)  # fmt: skip
        distributed = one_fit_step(strategy, task, make_loss("sum_over_batch_size"), x, y, initial)
        for w_single, w_distributed in zip(single, distributed, strict=True):
            if not np.allclose(w_distributed, w_single, rtol=1e-4, atol=1e-5):
                failures.append(f"{task_name}/fit: weights differ after one step")
                break
    # cross_replica=False keeps Keras's per-replica objective.
    _, x, y = make_task("circle")
    x, y = x[:24], y[:24]
    initial = make_task("circle")[0].get_weights()
    ones = np.ones(len(x), "float32")
    ours = mirrored(
        strategy, "circle", losses.Circle(reduction="sum", cross_replica=False), x, y, ones,
        initial, 12,
    )  # fmt: skip
    keras_per_replica = mirrored(
        strategy, "circle", keras.losses.Circle(reduction="sum"), x, y, ones, initial, 12
    )
    global_loss = single_device("circle", losses.Circle(reduction="sum"), x, y, ones, initial)
    if not np.allclose(ours[0], keras_per_replica[0], rtol=1e-5):
        failures.append(
            f"cross_replica=False: {ours[0]} != Keras per-replica {keras_per_replica[0]}"
        )
    if np.isclose(ours[0], global_loss[0], rtol=1e-2):
        failures.append("cross_replica=False unexpectedly equals the global loss")
    print(json.dumps(failures))


if __name__ == "__main__":
    main()
