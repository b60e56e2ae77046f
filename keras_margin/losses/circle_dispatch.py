"""The one place that decides which implementation computes Circle's per-row losses.

| backend    | ``"auto"``                                         | ``"fused"``         |
|------------|----------------------------------------------------|---------------------|
| tensorflow | the fused op (``keras_margin.ops``) if it loads,    | the fused op, or a  |
|            | else composite with a one-time warning             | ``RuntimeError``    |
| jax        | blocked (``keras_margin.jax.circle``) from          | blocked             |
|            | ``JAX_BLOCKED_MIN_PAIRS`` pairs, composite below   |                     |
| torch      | blocked (``keras_margin.torch.circle``) from        | blocked             |
|            | ``TORCH_BLOCKED_MIN_PAIRS`` pairs, composite below |                     |
| others     | composite                                          | ``RuntimeError``    |

``"composite"`` is the composite path (``circle_composite``) on every backend. Within the fused
op, TensorFlow itself picks the CPU kernel, the XLA custom call or the blocked HLO lowering
(``keras_margin.ops.circle.placement``). ``tests/backends/test_circle_dispatch.py`` is this table.
"""

import warnings

from keras_margin import backend

IMPLEMENTATIONS = ("auto", "fused", "composite")

COMPOSITE = "keras_margin.losses.circle_composite"
TENSORFLOW_OP = "keras_margin.ops.circle"
JAX_BLOCKED = "keras_margin.jax.circle"
TORCH_BLOCKED = "keras_margin.torch.circle"

# Below this many anchor-reference pairs the composite path is faster on JAX (the blocked
# backward recomputes the tiles: at N = 1,024 it takes 0.008 s against 0.005 s; at 2,048,
# 0.028 s against 0.034 s) and its N x M temporaries are small. The measurements are in
# benchmarks/RESULTS.md ("Circle: the runs of 2026-12-02", run 4).
JAX_BLOCKED_MIN_PAIRS = 2048 * 2048

# From this many pairs the blocked path is about as fast as the composite path on PyTorch or
# faster, and its temporaries stay [N, B]; below it the composite path's N x M ones are small.
# Eagerly, CPU, D = 128, float32, forward+backward, fastest of 8 alternating runs, on a 2-core
# machine that was running other work: N = 1,024: composite 0.303 s, blocked 0.088 s; 2,048:
# 0.539 s against 0.522 s; 3,072: 1.86 s against 1.49 s; 4,096: 2.90 s against 2.77 s, with
# `KERAS_BACKEND=torch python benchmarks/torch_threshold.py 1024 2048 3072 4096`. The load
# moved the ratio (blocked / composite) from run to run: over four runs 0.29 to 0.41 at 1,024,
# 0.97 to 1.77 at 2,048, 0.68 to 0.95 at 4,096; at 512, 0.64 to 9.7 (no consistent winner).
TORCH_BLOCKED_MIN_PAIRS = 1024 * 1024

_fallback_warned = False


def validate_implementation(implementation):
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"Argument `implementation` must be one of {IMPLEMENTATIONS}; "
            f"received implementation={implementation!r}."
        )
    return implementation


def choose(implementation, backend_name, pairs, op_unavailable_reason):
    """The module whose ``circle_loss`` computes the losses.

    Args:
        implementation: One of ``IMPLEMENTATIONS``.
        backend_name: The Keras backend.
        pairs: N * M, the number of anchor-reference pairs.
        op_unavailable_reason: A function returning why TensorFlow's fused op cannot be used,
            or None if it can; only called on TensorFlow.
    """
    if implementation == "composite":
        return COMPOSITE
    if backend_name == "jax":
        if implementation == "fused" or pairs >= JAX_BLOCKED_MIN_PAIRS:
            return JAX_BLOCKED
        return COMPOSITE
    if backend_name == "torch":
        if implementation == "fused" or pairs >= TORCH_BLOCKED_MIN_PAIRS:
            return TORCH_BLOCKED
        return COMPOSITE
    if backend_name != "tensorflow":
        if implementation == "fused":
            raise RuntimeError(
                "Circle(implementation='fused') needs the TensorFlow, JAX or PyTorch backend; the "
                f"active Keras backend is {backend_name!r}."
            )
        return COMPOSITE
    reason = op_unavailable_reason()
    if reason is None:
        return TENSORFLOW_OP
    if implementation == "fused":
        raise RuntimeError(
            f"Circle(implementation='fused') needs the compiled op, which is unavailable: {reason}."
        )
    _warn_fallback_once(reason)
    return COMPOSITE


def _warn_fallback_once(reason):
    global _fallback_warned
    if not _fallback_warned:
        _fallback_warned = True
        warnings.warn(
            f"keras_margin's fused Circle op is unavailable ({reason}); Circle uses the slower "
            f"composite path, which builds the full similarity matrix.",
            RuntimeWarning,
            stacklevel=5,
        )


def _tensorflow_op_unavailable_reason():
    from keras_margin import ops as fused_ops

    return None if fused_ops.custom_op_available() else fused_ops.custom_op_unavailable_reason()


def circle_loss_function(implementation, rows, ref_rows):
    """The per-row Circle function for the active backend, ``rows`` anchors and ``ref_rows``
    references (static sizes; None when unknown, which only TensorFlow has)."""
    pairs = (rows or 0) * (ref_rows or 0)
    module = choose(implementation, backend.name(), pairs, _tensorflow_op_unavailable_reason)
    # Import statements, not `importlib.import_module`: this runs while a user's tf.function
    # traces, where AutoGraph converts each function called and logs a warning into the user's
    # program for the import machinery it cannot convert. It leaves statements alone.
    if module == TENSORFLOW_OP:
        from keras_margin.ops.circle import circle_loss
    elif module == JAX_BLOCKED:
        from keras_margin.jax.circle import circle_loss
    elif module == TORCH_BLOCKED:
        from keras_margin.torch.circle import circle_loss
    else:
        from keras_margin.losses.circle_composite import circle_loss
    return circle_loss
