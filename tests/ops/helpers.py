"""Data generators and compile modes shared by the fused-op tests."""

import contextlib
import os

import numpy as np
import tensorflow as tf


def make_labels(rng, n, layout, classes=4):
    if layout == "random":
        return rng.integers(0, classes, size=n)
    if layout == "singletons":  # no row has a positive
        return np.arange(n)
    if layout == "one_class":  # no row has a negative
        return np.full(n, 7)
    if layout == "mixed":  # a few classes plus singleton rows
        labels = rng.integers(0, classes, size=n)
        lonely = rng.random(n) < 0.3
        labels[lonely] = 1000 + np.arange(lonely.sum())
        return labels
    raise ValueError(layout)


def make_embeddings(rng, n, d, dtype=np.float32):
    """Unit-norm rows, a few rows scaled to norm 1.03 and a few scaled copies of other rows.

    Over-unit rows and the copies give similarities well above 1, where the distance clamp
    d = max(1 - s, 0) is active. Unscaled copies are avoided: their similarity is 1 up to
    rounding, right on the clamp's kink, where float32 results legitimately depend on the
    order of the dot product's additions.
    """
    x = rng.normal(size=(n, d))
    if d and n:
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        x[rng.random(n) < 0.15] *= 1.03
        dup = rng.random(n) < 0.1
        x[dup] = 1.03 * x[rng.integers(0, n, size=dup.sum())]
    return x.astype(dtype)


class RawCircleOps:
    """The raw ops of the op library, called as the tests write them.

    ``gamma`` and ``margin`` are Python numbers (the ops take them as the decimal text of a
    double, which ``keras_margin.ops.circle_loss`` passes the same way) and
    ``diagonal_offset`` is a keyword defaulting to 0.
    """

    def __init__(self, lib):
        self.lib = lib

    @staticmethod
    def _attrs(gamma, margin, attrs):
        return dict(attrs, gamma=repr(float(gamma)), margin=repr(float(margin)))

    def keras_margin_circle_loss(
        self, x, labels, ref, ref_labels, *, gamma, margin, diagonal_offset=0, **attrs
    ):
        return self.lib.keras_margin_circle_loss(
            x, labels, ref, ref_labels, diagonal_offset, **self._attrs(gamma, margin, attrs)
        )

    def keras_margin_circle_loss_grad(
        self, upstream, x, labels, ref, ref_labels, lse_pos, lse_neg, *, gamma, margin,
        diagonal_offset=0, **attrs,
    ):  # fmt: skip
        return self.lib.keras_margin_circle_loss_grad(
            upstream, x, labels, ref, ref_labels, diagonal_offset, lse_pos, lse_neg,
            **self._attrs(gamma, margin, attrs),
        )  # fmt: skip


def make_case(rng, n, m, d, layout, dtype=np.float32):
    """Embeddings and labels for one (n, m, d, layout) case; m None is self-reference."""
    x = make_embeddings(rng, n, d, dtype)
    labels = make_labels(rng, n, layout)
    if m is None:
        return x, labels, None, None
    ref = make_embeddings(rng, m, d, dtype)
    ref_labels = make_labels(rng, m, layout)
    if layout != "singletons":
        # Reference labels partly shared with the queries, partly unseen.
        ref_labels = np.where(rng.random(m) < 0.8, ref_labels, 50 + ref_labels)
    return x, labels, ref, ref_labels


@contextlib.contextmanager
def blocked_hlo_forced(forced=True):
    """KERAS_MARGIN_XLA_BLOCKED_HLO=1 while a fresh function compiles (at its first call).

    On CPU, jit_compile otherwise compiles the op as a custom call into the CPU engine; the
    variable makes XLA:CPU compile the blocked HLO lowering that GPUs and TPUs get.
    """
    if not forced:
        yield
        return
    saved = os.environ.get("KERAS_MARGIN_XLA_BLOCKED_HLO")
    os.environ["KERAS_MARGIN_XLA_BLOCKED_HLO"] = "1"
    try:
        yield
    finally:
        if saved is None:
            del os.environ["KERAS_MARGIN_XLA_BLOCKED_HLO"]
        else:
            os.environ["KERAS_MARGIN_XLA_BLOCKED_HLO"] = saved


def loss_and_gradients(fn, x, ref, upstream, mode="eager"):
    """fn(x, ref) -> per-row loss; returns loss, d(sum(loss*upstream))/dx and /dref.

    With mode "function" or "jit" the gradients are taken inside the compiled function, as
    Keras's train_step does. On CPU "jit" runs the custom call into the CPU engine; "jit-hlo"
    compiles the HLO lowering that the other XLA backends get.
    """

    def loss_and_grads(x, ref):
        with tf.GradientTape() as tape:
            tape.watch(x)
            if ref is not None:
                tape.watch(ref)
            loss = fn(x, ref)
            total = tf.reduce_sum(loss * tf.cast(upstream, loss.dtype))
        return loss, tape.gradient(total, [x] if ref is None else [x, ref])

    if mode != "eager":
        loss_and_grads = tf.function(loss_and_grads, jit_compile=mode.startswith("jit"))
    x = tf.constant(x)
    ref = None if ref is None else tf.constant(ref)
    with blocked_hlo_forced(mode == "jit-hlo"):
        loss, grads = loss_and_grads(x, ref)
    grads = [
        np.zeros(v.shape) if g is None else np.asarray(g, np.float64)
        for g, v in zip(grads, [x, ref], strict=False)
    ]
    return np.asarray(loss, np.float64), grads
