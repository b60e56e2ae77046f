"""Circle on a GPU: the fused op's values against Keras, and its time and memory at scale.

Run it on a machine with a CUDA GPU (it stops at once without one):

    python benchmarks/gpu_check.py [--out DIR]

It checks, on the GPU, in float32, forward and backward:
- at N = 4,096 and 16,384: ``keras_margin.losses.Circle`` under ``jit_compile=True`` (the
  blocked XLA lowering) and in a plain ``tf.function`` (the op called through an XLA function
  of its own) against ``keras.losses.Circle`` under ``jit_compile=True``;
- at N = 65,536 and 262,144, where Keras does not fit: both against keras_margin in float64.
Then it times both fused paths and Keras (medians of repeated steps) and records the GPU's
peak memory for each. The table is printed and, with ``--out``, written to DIR/gpu_check.md
with the raw numbers in DIR/gpu_check.json. Nothing here has been run on a GPU yet: see
docs/custom-op.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

D = 128
GAMMA, MARGIN = 80.0, 0.4
CHECKED_AGAINST_KERAS = (4096, 16384)
CHECKED_AGAINST_FLOAT64 = (65536, 262144)
REPEATS = 5
# float32 against float32 Keras: logits of size O(gamma) rounded alike; against float64, the
# float32 result's own rounding.
TOLERANCE = {"keras": 2e-4, "float64": 2e-4}


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="folder for gpu_check.md and gpu_check.json")
    args = parser.parse_args(argv)

    import keras
    import numpy as np
    import tensorflow as tf

    import keras_margin

    if not tf.config.list_logical_devices("GPU"):
        sys.exit("gpu_check: no GPU visible to TensorFlow")

    def embeddings(n, dtype):
        rng = np.random.default_rng(n)
        x = rng.normal(size=(n, D))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        labels = rng.integers(0, max(2, n // 8), size=n)
        with tf.device("/GPU:0"):
            return tf.constant(x, dtype), tf.constant(labels, tf.int64)

    def step_of(loss, jit):
        @tf.function(jit_compile=jit)
        def step(labels, x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                value = loss(labels, x)
            return value, tape.gradient(value, x)

        return step

    paths = {
        "keras_margin jit": step_of(keras_margin.losses.Circle(gamma=GAMMA, margin=MARGIN), True),
        "keras_margin function": step_of(
            keras_margin.losses.Circle(gamma=GAMMA, margin=MARGIN), False
        ),
        "keras jit": step_of(keras.losses.Circle(gamma=GAMMA, margin=MARGIN), True),
    }
    float64_reference = step_of(
        keras_margin.losses.Circle(gamma=GAMMA, margin=MARGIN, dtype="float64"), True
    )

    def measure(step, labels, x):
        tf.config.experimental.reset_memory_stats("GPU:0")
        value, grad = step(labels, x)  # compiles
        times = []
        for _ in range(REPEATS):
            start = time.perf_counter()
            value, grad = step(labels, x)
            _ = value.numpy(), grad.numpy()
            times.append(time.perf_counter() - start)
        peak = tf.config.experimental.get_memory_info("GPU:0")["peak"]
        return value.numpy(), grad.numpy(), statistics.median(times), peak

    def relative_error(got, want):
        scale = max(float(np.abs(want).max()), 1e-30)
        return float(np.abs(np.asarray(got, np.float64) - want).max() / scale)

    rows = []
    for n in CHECKED_AGAINST_KERAS + CHECKED_AGAINST_FLOAT64:
        x, labels = embeddings(n, tf.float32)
        if n in CHECKED_AGAINST_KERAS:
            reference = "keras"
            want_value, want_grad, *_ = measure(paths["keras jit"], labels, x)
        else:
            reference = "float64"
            x64, labels64 = embeddings(n, tf.float64)
            want_value, want_grad, *_ = measure(float64_reference, labels64, x64)
        for name, step in paths.items():
            if name == "keras jit" and n not in CHECKED_AGAINST_KERAS:
                continue
            value, grad, seconds, peak = measure(step, labels, x)
            errors = (relative_error(value, want_value), relative_error(grad, want_grad))
            rows.append(
                {
                    "n": n,
                    "path": name,
                    "median_s": seconds,
                    "peak_gib": peak / 2**30,
                    "reference": reference,
                    "value_error": errors[0],
                    "grad_error": errors[1],
                    "ok": max(errors) <= TOLERANCE[reference],
                }
            )
            print(json.dumps(rows[-1]), flush=True)

    device = tf.config.experimental.get_device_details(tf.config.list_physical_devices("GPU")[0])
    lines = [
        f"GPU: {device.get('device_name', 'unknown')}; D = {D}, float32, forward+backward, "
        f"median of {REPEATS} steps",
        "",
        "| N | path | median | GPU peak | checked against | value error | gradient error | ok |",
        "|---:|---|---:|---:|---|---:|---:|---|",
    ]
    lines += [
        f"| {r['n']:,} | {r['path']} | {r['median_s']:.4f} s | {r['peak_gib']:.2f} GiB | "
        f"{r['reference']} | {r['value_error']:.1e} | {r['grad_error']:.1e} | "
        f"{'yes' if r['ok'] else 'NO'} |"
        for r in rows
    ]
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu_check.md").write_text(table)
        (args.out / "gpu_check.json").write_text(json.dumps(rows, indent=1) + "\n")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
