"""Prints SHA-256 hashes of the fused Circle op's losses and gradients, one JSON object.

Run by tests/ops/test_determinism.py in fresh processes, because the intra-op thread count
can only be set before TensorFlow runs anything:

    python tests/ops/determinism_probe.py --threads 2 [--determinism] [--jit [--blocked-hlo]]
        [--repeats 2]

Every case is computed ``--repeats`` times in the process; the output maps each case to the
list of its distinct hashes, so a case that is stable within the process has exactly one.
"""

import argparse
import hashlib
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

# (n, m, d): m=None is self-reference mode. Sizes straddle the engine's block sizes (16 to
# 384 rows, chosen from N, D and the thread count), with ragged last blocks.
SHAPES = [
    (1, None, 8),
    (37, None, 33),
    (300, None, 64),
    (1500, None, 128),
    (1, 5, 8),
    (37, 53, 33),
    (300, 410, 64),
    (1500, 1100, 128),
]
DTYPES = ["float32", "float64"]


def _inputs(n, m, d, dtype):
    rng = np.random.default_rng([n, m or 0, d])

    def embeddings(rows):
        x = rng.normal(size=(rows, d))
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(dtype)

    classes = max(1, n // 8)
    x, labels = embeddings(n), rng.integers(0, classes, size=n)
    upstream = rng.random(n).astype(dtype)
    if m is None:
        return x, labels, None, None, upstream
    return x, labels, embeddings(m), rng.integers(0, classes + 2, size=m), upstream


def _loss_and_grads(tf, circle_loss, labels, ref_labels, upstream, jit):
    """fn(x, ref) -> (loss, gradients); one XLA executable per case with jit (the CPU custom
    call, or the blocked HLO), so that repeats run the same compiled code."""

    def fn(x, ref):
        watched = [x] if ref is None else [x, ref]
        with tf.GradientTape() as tape:
            tape.watch(watched)
            loss = circle_loss(
                x, labels, ref, ref_labels, gamma=80.0, margin=0.25, remove_diagonal=True
            )
            total = tf.reduce_sum(loss * upstream)
        return loss, tape.gradient(total, watched)

    return tf.function(fn, jit_compile=True) if jit else fn


def _digest(tf, fn, x, ref):
    x = tf.constant(x)
    ref = None if ref is None else tf.constant(ref)
    loss, grads = fn(x, ref)
    digest = hashlib.sha256(np.asarray(loss).tobytes())
    for grad in grads:
        digest.update(np.asarray(grad).tobytes())
    return digest.hexdigest()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, required=True, help="intra-op threads")
    parser.add_argument("--determinism", action="store_true", help="enable_op_determinism()")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--jit", action="store_true", help="run under tf.function(jit_compile)")
    parser.add_argument(
        "--blocked-hlo", action="store_true", help="with --jit: compile the blocked HLO lowering"
    )
    args = parser.parse_args()
    if args.blocked_hlo:
        os.environ["KERAS_MARGIN_XLA_BLOCKED_HLO"] = "1"

    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    if args.determinism:
        tf.config.experimental.enable_op_determinism()
    from keras_margin.ops import circle_loss

    hashes = {}
    for n, m, d in SHAPES:
        for dtype in DTYPES:
            x, labels, ref, ref_labels, upstream = _inputs(n, m, d, dtype)
            fn = _loss_and_grads(tf, circle_loss, labels, ref_labels, upstream, args.jit)
            runs = {_digest(tf, fn, x, ref) for _ in range(args.repeats)}
            hashes[f"n={n} m={m} d={d} {dtype}"] = sorted(runs)
    threads = tf.config.threading.get_intra_op_parallelism_threads()
    print(json.dumps({"threads": threads, "hashes": hashes}))


if __name__ == "__main__":
    main()
