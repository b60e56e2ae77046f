"""Python wrapper and gradient of the fused ``KerasMargin>CircleLoss`` op."""

from __future__ import annotations

import functools

import tensorflow as tf

from keras_margin.distribute import in_xla_region
from keras_margin.losses.checks import all_finite, nan_where_invalid
from keras_margin.losses.labels import signed_ids
from keras_margin.ops import _loader

_FLOAT_TYPES = (tf.float16, tf.bfloat16, tf.float32, tf.float64)


def _labels(labels: tf.Tensor | object) -> tf.Tensor:
    labels = tf.convert_to_tensor(labels)
    # Float labels are cast to int32 as keras.losses.circle casts them.
    labels = signed_ids(labels) if labels.dtype.is_integer else tf.cast(labels, tf.int32)
    return tf.reshape(labels, [-1])


def circle_loss(
    embeddings,
    labels,
    ref_embeddings=None,
    ref_labels=None,
    *,
    gamma: float,
    margin: float,
    remove_diagonal: bool,
    diagonal_offset=0,
) -> tf.Tensor:
    """Per-row Circle loss [N], identical in value and gradient to ``keras.losses.circle``.

    Args:
        embeddings: [N, D] float16, bfloat16, float32 or float64 embeddings (normally
            L2-normalised; no normalisation happens here, as in Keras).
        labels: [N] (or [N, 1]) integer labels. int32 and int64 are used as they are, other
            integer dtypes become int64 with distinct ids kept distinct (uint64 included),
            and float labels are cast to int32 like Keras does.
        ref_embeddings: optional [M, D] reference embeddings; defaults to ``embeddings``.
        ref_labels: optional [M] reference labels; defaults to ``labels``.
        gamma: scale, > 0.
        margin: relaxation margin.
        remove_diagonal: exclude the (i, i) pair from the positives (also with a
            reference set, as Keras does).
        diagonal_offset: a scalar int >= 0: with ``remove_diagonal``, row ``i`` excludes
            reference ``i + diagonal_offset`` instead, for anchors that are rows
            ``diagonal_offset, ...`` of the batch the reference set is aligned with (one
            replica's slice of a global batch). Must be 0 without a reference set.

    When both ``ref_embeddings`` and ``ref_labels`` are None the op runs in self-reference
    mode, which exploits the symmetry of the similarity matrix (about half the work). This is
    the TensorFlow implementation behind ``keras_margin.losses.circle_dispatch``; it keeps the
    contract of ``keras_margin.losses.circle_composite.circle_loss``.

    Raises:
        keras_margin.ops.CustomOpUnavailableError: the compiled op is not usable;
            see ``custom_op_unavailable_reason()``.
    """
    lib = _loader.load_library()
    x = tf.convert_to_tensor(embeddings)
    if x.dtype not in _FLOAT_TYPES:
        raise TypeError(f"embeddings must be float16, bfloat16, float32 or float64, got {x.dtype}")
    labels = _labels(labels)
    self_reference = ref_embeddings is None and ref_labels is None
    ref = x if ref_embeddings is None else tf.convert_to_tensor(ref_embeddings, dtype=x.dtype)
    ref_labels = labels if ref_labels is None else _labels(ref_labels)
    if labels.dtype != ref_labels.dtype:
        labels = tf.cast(labels, tf.int64)
        ref_labels = tf.cast(ref_labels, tf.int64)
    inputs = (x, labels, ref, ref_labels, tf.cast(diagonal_offset, tf.int64))
    attrs = {
        "gamma": _double_attr(gamma),
        "margin": _double_attr(margin),
        "remove_diagonal": bool(remove_diagonal),
        "self_reference": self_reference,
    }
    if placement(_device_type(x), in_xla_region()) == COMPILED:
        loss = _compiled_circle_loss(inputs, attrs)
    else:
        loss, _, _ = _forward(lib, inputs, attrs)
    # The kernel's max-shifted sums would drop a NaN embedding; every row pairs with it.
    return nan_where_invalid(loss, all_finite(x, None if self_reference else ref))


# Where the op's work runs, by device and context. The op has a CPU kernel and an XLA lowering
# (tf_ops/xla/) but no GPU kernel: outside XLA on a GPU, TensorFlow would run it on the CPU and
# copy the embeddings across, so it is called through an XLA function of its own instead.
KERNEL = "cpu kernel"  # the op as it is, on the CPU
LOWERING = "lowering"  # the XLA program being traced lowers the op
COMPILED = "compiled"  # an XLA-compiled function around the op, on the accelerator


def placement(device_type: str, in_xla: bool) -> str:
    """Which of KERNEL, LOWERING and COMPILED runs the op on ``device_type``."""
    if in_xla:
        return LOWERING
    return KERNEL if device_type == "CPU" else COMPILED


def _device_type(x: tf.Tensor) -> str:
    """The device type ``x`` lives on, or, while tracing unplaced, where TensorFlow will put it."""
    if x.device:
        return tf.DeviceSpec.from_string(x.device).device_type or "CPU"
    return "GPU" if tf.config.list_logical_devices("GPU") else "CPU"


def _forward(lib, inputs, attrs):
    tstate = tf.float64 if inputs[0].dtype == tf.float64 else tf.float32
    return lib.keras_margin_circle_loss(*inputs, **attrs, Tstate=tstate)


def _backward(lib, grad_loss, inputs, lse_pos, lse_neg, attrs):
    return lib.keras_margin_circle_loss_grad(grad_loss, *inputs, lse_pos, lse_neg, **attrs)


@functools.cache
def _compiled_functions(attrs):
    """The op's forward and gradient as XLA functions, one pair per set of attributes."""
    lib = _loader.load_library()
    attrs = dict(attrs)

    @tf.function(jit_compile=True, reduce_retracing=True)
    def forward(*inputs):
        return _forward(lib, inputs, attrs)

    @tf.function(jit_compile=True, reduce_retracing=True)
    def backward(grad_loss, inputs, lse_pos, lse_neg):
        return _backward(lib, grad_loss, inputs, lse_pos, lse_neg, attrs)

    return forward, backward


def _compiled_circle_loss(inputs, attrs):
    """The op's forward and gradient, each in an XLA function (the ``COMPILED`` placement).

    A custom gradient makes sure the backward op is compiled too.
    """
    forward, backward = _compiled_functions(tuple(attrs.items()))
    x, labels, ref, ref_labels, offset = inputs

    @tf.custom_gradient
    def loss_of(x, ref):
        inputs = (x, labels, ref, ref_labels, offset)
        loss, lse_pos, lse_neg = forward(*inputs)

        def gradient(grad_loss):
            return backward(grad_loss, inputs, lse_pos, lse_neg)

        return loss, gradient

    return loss_of(x, ref)


def _double_attr(value: float) -> str:
    # The op takes gamma and margin as text: repr gives the shortest decimal that reads back as
    # the same double, where a float attribute would round float64 hyper-parameters to float32.
    return repr(float(value))


ATTRS = ("gamma", "margin", "remove_diagonal", "self_reference")


def _circle_loss_grad(op, grad_loss, _grad_lse_pos, _grad_lse_neg):
    # The log-sum-exp outputs are saved state for this gradient, not differentiable outputs.
    attrs = {name: op.get_attr(name) for name in ATTRS}
    grad_x, grad_ref = _backward(
        _loader.load_library(), grad_loss, op.inputs, op.outputs[1], op.outputs[2], attrs
    )
    return [grad_x, None, grad_ref, None, None]


_gradient_registered = False


def register_gradient() -> None:
    """Registers the op's gradient with TensorFlow once per process."""
    global _gradient_registered
    if not _gradient_registered:
        tf.RegisterGradient("KerasMargin>CircleLoss")(_circle_loss_grad)
        _gradient_registered = True
