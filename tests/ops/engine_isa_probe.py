"""Runs the fused op's CPU kernel on fixed inputs and writes, to the .npz file named by its
argument, the engine's instruction set and every loss and gradient.

With ``--selection``, writes instead, to a JSON file, what each entry point makes of
``KERAS_MARGIN_ENGINE_ISA``: the op library loaded alone, as TF Serving loads it (its CPU
kernel, and its XLA custom call under ``jit_compile``), then keras_margin's loader.

Run by ``tests/ops/test_engine_isa.py`` in its own process, since the engine is chosen once
per process (``KERAS_MARGIN_ENGINE_ISA``).
"""

import json
import sys

import numpy as np
import tensorflow as tf

from keras_margin import ops
from keras_margin.ops import _loader

# (name, rows, reference rows or None, dtype, remove_diagonal)
CASES = [
    ("self-f32", 700, None, "float32", True),
    ("self-f64", 300, None, "float64", True),
    ("reference-f32", 500, 333, "float32", True),
    ("reference-f64-keep-diagonal", 200, 90, "float64", False),
    ("self-bf16", 260, None, "bfloat16", True),
]


def run(case):
    _, n, m, dtype, remove_diagonal = case
    rng = np.random.default_rng(n)
    x = rng.normal(size=(n, 48))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x = tf.constant(x, dtype)
    labels = tf.constant(rng.integers(0, 9, n))
    refs = {}
    if m is not None:
        ref = rng.normal(size=(m, 48))
        ref /= np.linalg.norm(ref, axis=1, keepdims=True)
        refs = {"ref_embeddings": tf.constant(ref, dtype), "ref_labels": rng.integers(0, 9, m)}
    sources = [x, *refs.values()][:2] if refs else [x]
    with tf.GradientTape() as tape:
        tape.watch(sources)
        loss = ops.circle_loss(
            x, labels, gamma=64.0, margin=0.3, remove_diagonal=remove_diagonal, **refs
        )
        total = tf.reduce_sum(loss * tf.cast(tf.range(n) % 5 + 1, loss.dtype))
    grads = tape.gradient(total, sources)
    return [tf.cast(t, tf.float64).numpy() for t in [loss, *grads]]


def raw_call(lib, jit_compile):
    """The raw op's losses on a small batch, or the error it raised as "Type: message"."""
    x = tf.math.l2_normalize(tf.random.stateless_normal([24, 6], seed=[1, 2]), axis=1)
    labels = tf.constant(np.arange(24) % 5, tf.int32)

    offset = tf.constant(0, tf.int64)
    attrs = dict(gamma="64.0", margin="0.3", remove_diagonal=True, self_reference=True)

    def loss(x):
        return lib.keras_margin_circle_loss(x, labels, x, labels, offset, **attrs)[0]

    try:
        return tf.function(loss, jit_compile=jit_compile)(x).numpy().tolist()
    except tf.errors.OpError as error:
        return f"{type(error).__name__}: {error.message}"


def selection():
    lib = tf.load_op_library(str(_loader.LIBRARY_PATH))
    report = {"kernel": raw_call(lib, False), "custom_call": raw_call(lib, True)}
    try:
        report["engine_isa"] = ops.engine_isa()
    except ValueError as error:
        report["engine_isa"] = f"ValueError: {error}"
    return report


if __name__ == "__main__":
    if sys.argv[1] == "--selection":
        with open(sys.argv[2], "w") as f:
            json.dump(selection(), f)
        sys.exit()
    results = {"isa": np.array(ops.engine_isa())}
    for case in CASES:
        for k, value in enumerate(run(case)):
            results[f"{case[0]}/{k}"] = value
    np.savez(sys.argv[1], **results)
