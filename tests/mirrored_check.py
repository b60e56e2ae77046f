"""Run in a fresh process by test_distribute.py: MirroredStrategy over 2 logical CPUs.

For every loss and reduction, one custom-loop step under the strategy must give the same loss
(summed over replicas) and the same gradients (summed over replicas, as optimizers do) as one
step on a single device over the same global batch. Prints one JSON line of failures.
"""

import json
import os
import sys
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402

from keras_margin import losses  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from distributed_steps import (  # noqa: E402
    CASES,
    REDUCTIONS,
    case_data,
    check_custom_loop_steps,
    distributed_step,
    mismatches,
    single_device_step,
)
from tasks import make_task  # noqa: E402


def one_fit_step(strategy, task, loss, x, y, initial):
    """Weights after one `model.fit` step over the whole batch, optionally under a strategy."""
    with strategy.scope():
        model, _, _ = make_task(task)
        model.set_weights(initial)
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss=loss)
    model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
    return model.get_weights()


def fit_report(strategy, task, loss, x, y, weights, initial):
    """What ``fit`` and ``evaluate`` report over 13 rows in batches of 4, and the weights after.

    The batches split 2/2 over two replicas, and the last one, of a single row, 1/0: every
    epoch ends with an uneven batch.
    """
    with strategy.scope():
        model, _, _ = make_task(task)
        model.set_weights(initial)
        model.compile(optimizer=keras.optimizers.SGD(0.05), loss=loss)
    history = model.fit(
        x, y, sample_weight=weights, batch_size=4, epochs=1, shuffle=False, verbose=0
    )
    evaluated = model.evaluate(x, y, sample_weight=weights, batch_size=4, verbose=0)
    return history.history["loss"] + [evaluated], model.get_weights()


def check_fit_reports_single_device_loss(strategy):
    """`fit`'s logged loss and `evaluate()`'s under the strategy equal one device's for every
    loss and reduction, and so do the weights after training."""
    failures = []
    for case_name, make_loss in CASES.items():
        task, x, y, weights, initial = case_data(case_name)
        x, y, weights = x[:13], y[:13], weights[:13]
        # "mean" is "sum_over_batch_size" under another name, in Keras and here; the custom
        # loop check above covers it.
        for reduction in (r for r in REDUCTIONS if r != "mean"):
            case = f"{case_name}/{reduction}/fit"
            want = fit_report(tf.distribute.get_strategy(), task, make_loss(reduction), x, y,
                              weights, initial)  # fmt: skip
            got = fit_report(strategy, task, make_loss(reduction), x, y, weights, initial)
            if not np.allclose(got[0], want[0], rtol=1e-5, atol=1e-6):
                failures.append(f"{case}: reported {got[0]} != single device {want[0]}")
            for w_got, w_want in zip(got[1], want[1], strict=True):
                if not np.allclose(w_got, w_want, rtol=1e-4, atol=1e-5):
                    failures.append(f"{case}: weights differ after training")
                    break
    return failures


def reference_rows_and_grads(model, x, y, bank, bank_labels, implementation):
    """Circle's per-row losses of ``model(x)`` against a fixed reference set, and the
    gradients of their sum."""
    with tf.GradientTape() as tape:
        rows = losses.circle(
            y, model(x), ref_labels=bank_labels, ref_embeddings=bank, gamma=16.0,
            implementation=implementation,
        )  # fmt: skip
        total = tf.reduce_sum(rows)
    return rows, tape.gradient(total, model.trainable_variables)


def distributed_reference_rows(strategy, task, x, y, initial, split, *reference_args):
    """``reference_rows_and_grads`` under ``strategy``: rows in replica order, summed grads."""
    with strategy.scope():
        model, _, _ = make_task(task)
    model.set_weights(initial)
    bounds = [0, split, len(x)]

    def slices(context):
        i = context.replica_id_in_sync_group
        return x[bounds[i] : bounds[i + 1]], y[bounds[i] : bounds[i + 1]]

    def replica(x, y):
        rows, grads = reference_rows_and_grads(model, x, y, *reference_args)
        return rows, tf.distribute.get_replica_context().all_reduce("sum", grads)

    @tf.function
    def step(data):
        rows, grads = strategy.run(replica, args=data)
        return strategy.experimental_local_results(rows), [
            strategy.experimental_local_results(g)[0] for g in grads
        ]

    rows, grads = step(strategy.experimental_distribute_values_from_function(slices))
    return np.concatenate([r.numpy() for r in rows]), [g.numpy() for g in grads]


def check_reference_set_diagonal(strategy):
    """Circle with an explicit reference set and remove_diagonal: each anchor drops the
    reference at its *global* row, so per-row losses and summed gradients equal one device's.
    Reference sets longer and shorter than the batch; even and uneven slices."""
    failures = []
    task, x, y, _, initial = case_data("circle")
    rng = np.random.default_rng(2)
    for m in (30, 16):
        bank = rng.normal(size=(m, 4)).astype("float32")
        bank = tf.constant(bank / np.linalg.norm(bank, axis=1, keepdims=True))
        # Aligned with the batch: where the bank holds a row of the batch's class, the
        # excluded pair is a positive, which the check must see.
        bank_labels = tf.constant(np.resize(y, m))
        for implementation in ("composite", "fused"):
            reference_args = (bank, bank_labels, implementation)
            model, _, _ = make_task(task)
            model.set_weights(initial)
            rows, grads = tf.function(reference_rows_and_grads)(model, x, y, *reference_args)
            want = rows.numpy(), [g.numpy() for g in grads]
            for split in (12, 9):
                got = distributed_reference_rows(
                    strategy, task, x, y, initial, split, *reference_args
                )
                case = f"circle reference set m={m} {implementation} split={split}"
                failures += mismatches(case, got, want)
    return failures


def check_xla_compiled_replicas(strategy):
    """Replica functions compiled with XLA (the TPU path, as far as a CPU goes).

    Collectives cannot run inside them on a non-TPU strategy, so keras_margin reduces each
    slice as Keras does, which is exact for equal slices, and Circle pairs within replicas
    (with a warning).
    """
    failures = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for case_name, make_loss in CASES.items():
            failures += check_xla_compiled_replica(strategy, case_name, make_loss)
    if not any("compiled with XLA" in str(w.message) for w in caught):
        failures.append("xla: no warning that collectives are unavailable")
    return failures


def check_xla_compiled_replica(strategy, case_name, make_loss):
    task, x, y, weights, initial = case_data(case_name)
    loss = make_loss("sum_over_batch_size")
    got = distributed_step(strategy, task, loss, x, y, weights, initial, 12, jit_replica=True)
    if case_name.startswith("circle"):
        keras_loss = keras.losses.Circle(gamma=16.0)
        want = distributed_step(strategy, task, keras_loss, x, y, weights, initial, 12)
    else:
        want = single_device_step(task, loss, x, y, weights, initial)
    return mismatches(f"{case_name}/xla", got, want)


def main():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    failures = check_custom_loop_steps(strategy)
    failures += check_fit_reports_single_device_loss(strategy)
    failures += check_reference_set_diagonal(strategy)
    for task_name, make_loss in CASES.items():
        task, x, y, _, initial = case_data(task_name)
        # model.fit: one SGD step on the global batch lands on the single-device weights.
        single = one_fit_step(tf.distribute.get_strategy(), task, make_loss("sum_over_batch_size"),
                              x, y, initial)  # fmt: skip
        distributed = one_fit_step(strategy, task, make_loss("sum_over_batch_size"), x, y, initial)
        for w_single, w_distributed in zip(single, distributed, strict=True):
            if not np.allclose(w_distributed, w_single, rtol=1e-4, atol=1e-5):
                failures.append(f"{task_name}/fit: weights differ after one step")
                break
    # cross_replica=False keeps Keras's per-replica objective.
    _, x, y, _, initial = case_data("circle")
    ones = np.ones(len(x), "float32")
    ours = distributed_step(
        strategy, "circle", losses.Circle(reduction="sum", cross_replica=False), x, y, ones,
        initial, 12,
    )  # fmt: skip
    keras_per_replica = distributed_step(
        strategy, "circle", keras.losses.Circle(reduction="sum"), x, y, ones, initial, 12
    )
    global_loss = single_device_step("circle", losses.Circle(reduction="sum"), x, y, ones, initial)
    if not np.allclose(ours[0], keras_per_replica[0], rtol=1e-5):
        failures.append(
            f"cross_replica=False: {ours[0]} != Keras per-replica {keras_per_replica[0]}"
        )
    if np.isclose(ours[0], global_loss[0], rtol=1e-2):
        failures.append("cross_replica=False unexpectedly equals the global loss")
    failures += check_xla_compiled_replicas(strategy)
    print(json.dumps(failures))


if __name__ == "__main__":
    main()
