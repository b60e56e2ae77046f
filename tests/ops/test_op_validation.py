"""The raw KerasMargin>CircleLoss / CircleLossGrad ops reject every bad shape, rank and attr
with an InvalidArgumentError naming the argument, and handle the degenerate sizes that are
valid (N = 0, M = 0, N = 1) and any int32 / int64 label values.

Each case runs in four modes:
  eager     the CPU kernel;
  function  a tf.function whose input signature leaves every shape unknown, so that graph
            construction cannot catch a bad shape and the CPU kernel must;
  jit       the same with jit_compile=True: XLA compiles per concrete shape, so the XLA
            lowering catches it at compile time (on CPU, the custom call into the engine);
  jit-hlo   jit with the blocked HLO lowering forced, as GPUs and TPUs compile it.
A fourth mode, static, traces with the concrete shapes: the shape functions then reject bad
shapes at graph construction, which Python reports as ValueError, with the kernels' message.
"""

import numpy as np
import pytest
import tensorflow as tf

from .helpers import blocked_hlo_forced, make_embeddings

ATTRS = dict(gamma=80.0, margin=0.4, remove_diagonal=True)
MODES = ["eager", "function", "jit", "jit-hlo"]


def _run(mode, fn, *args):
    """fn(*args) (tensors only; attrs live in fn) in one of the modes above."""
    args = [tf.convert_to_tensor(a) for a in args]
    if mode == "eager":
        return fn(*args)
    if mode == "static":
        return tf.function(fn)(*args)
    signature = [tf.TensorSpec(None, a.dtype) for a in args]
    compiled = tf.function(fn, input_signature=signature, jit_compile=mode.startswith("jit"))
    with blocked_hlo_forced(mode == "jit-hlo"):
        return compiled(*args)


def _loss_fn(op_lib, **attrs):
    attrs = {**ATTRS, **attrs}
    return lambda x, labels, ref, ref_labels: op_lib.keras_margin_circle_loss(
        x, labels, ref, ref_labels, **attrs
    )


def _grad_fn(op_lib, **attrs):
    attrs = {**ATTRS, **attrs}
    return lambda *inputs: op_lib.keras_margin_circle_loss_grad(*inputs, **attrs)


def _shape_id(case):
    """A test id such as 4x3-4-4x3-4-self, from the shapes of a case."""
    parts = ["x".join(map(str, s)) if s else "scalar" for s in case if isinstance(s, list)]
    if isinstance(case[-2], bool):
        parts.append("self" if case[-2] else "ref")
    elif case[-2] is not None:
        parts += ["x".join(map(str, s)) if s else "scalar" for s in case[-2]]
    return "-".join(parts)


# (embeddings, labels, ref_embeddings, ref_labels shapes, self_reference, message).
FORWARD_SHAPE_ERRORS = [
    ([4], [4], [4, 3], [4], False, r"embeddings must have rank 2, got shape \[4\]"),
    ([4, 3, 1], [4], [4, 3], [4], True, r"embeddings must have rank 2, got shape \[4,3,1\]"),
    ([4, 3], [4, 1], [4, 3], [4], False, r"(?<!_)labels must have rank 1, got shape \[4,1\]"),
    ([4, 3], [], [4, 3], [4], True, r"(?<!_)labels must have rank 1, got shape \[\]"),
    ([4, 3], [4], [4], [4], False, r"ref_embeddings must have rank 2, got shape \[4\]"),
    ([4, 3], [4], [2, 3, 1], [2], True, r"ref_embeddings must have rank 2, got shape \[2,3,1\]"),
    ([4, 3], [4], [4, 3], [4, 1], False, r"ref_labels must have rank 1, got shape \[4,1\]"),
    ([4, 3], [4], [4, 3], [], True, r"ref_labels must have rank 1, got shape \[\]"),
    ([4, 3], [5], [4, 3], [4], False, r"(?<!_)labels must have length 4 \(embeddings rows N\)"),
    ([4, 3], [3], [4, 3], [4], True, r"(?<!_)labels must have length 4 \(embeddings rows N\)"),
    ([4, 3], [4], [5, 3], [4], False, r"ref_labels must have length 5 \(ref_embeddings rows M\)"),
    ([4, 3], [4], [4, 2], [4], False, r"same dimension D as embeddings: 2 vs 3"),
    ([4, 3], [4], [4, 2], [4], True, r"same dimension D as embeddings: 2 vs 3"),
    ([4, 3], [4], [5, 3], [5], True, r"self_reference requires .* M=5 vs N=4"),
    ([4, 0], [4], [4, 0], [4], False, r"at least one column \(D >= 1\), got shape \[4,0\]"),
    ([0, 0], [0], [0, 0], [0], True, r"at least one column \(D >= 1\), got shape \[0,0\]"),
    ([4, 0], [4], [4, 3], [4], False, r"at least one column \(D >= 1\)"),
]


@pytest.mark.parametrize("mode", [*MODES, "static"])
@pytest.mark.parametrize("shapes", FORWARD_SHAPE_ERRORS, ids=_shape_id)
def test_forward_rejects_bad_shapes(op_lib, mode, shapes):
    *input_shapes, self_reference, message = shapes
    x, labels, ref, ref_labels = input_shapes
    error = ValueError if mode == "static" else tf.errors.InvalidArgumentError
    with pytest.raises(error, match=message):
        _run(
            mode,
            _loss_fn(op_lib, self_reference=self_reference),
            tf.zeros(x),
            tf.zeros(labels, tf.int32),
            tf.zeros(ref),
            tf.zeros(ref_labels, tf.int32),
        )


def lse_shape_error(name, got):
    """The message for a log-sum-exp state of shape [got] where [4, 2] is expected."""
    expected = r"must have shape \[N, 2\] = \[4, 2\] \(the forward op's output\)"
    return rf"{name} {expected}, got shape \[{got}\]"


# The gradient op's own inputs (grad_loss, lse_pos, lse_neg shapes) for N = 4, and the
# checks it shares with the forward op.
GRAD_SHAPE_ERRORS = [
    ([], [4, 2], [4, 2], None, r"grad_loss must have rank 1, got shape \[\]"),
    ([4, 1], [4, 2], [4, 2], None, r"grad_loss must have rank 1, got shape \[4,1\]"),
    ([3], [4, 2], [4, 2], None, r"grad_loss must have length 4 \(N\), got 3"),
    (
        [4],
        [4],
        [4, 2],
        None,
        lse_shape_error("lse_pos", "4"),
    ),
    (
        [4],
        [5, 2],
        [4, 2],
        None,
        lse_shape_error("lse_pos", "5,2"),
    ),
    (
        [4],
        [4, 2],
        [],
        None,
        lse_shape_error("lse_neg", ""),
    ),
    (
        [4],
        [4, 2],
        [4, 3],
        None,
        lse_shape_error("lse_neg", "4,3"),
    ),
    ([4], [4, 2], [4, 2], ([4], [4], [4, 3], [4]), r"embeddings must have rank 2"),
    ([4], [4, 2], [4, 2], ([4, 3], [4, 1], [4, 3], [4]), r"(?<!_)labels must have rank 1"),
    ([4], [4, 2], [4, 2], ([4, 3], [4], [4, 3], [3]), r"ref_labels must have length 4"),
    ([4], [4, 2], [4, 2], ([4, 3], [4], [4, 5], [4]), r"same dimension D as embeddings: 5 vs 3"),
    ([4], [4, 2], [4, 2], ([4, 0], [4], [4, 0], [4]), r"at least one column \(D >= 1\)"),
]


@pytest.mark.parametrize("mode", [*MODES, "static"])
@pytest.mark.parametrize("shapes", GRAD_SHAPE_ERRORS, ids=_shape_id)
@pytest.mark.parametrize("self_reference", [False, True])
def test_grad_rejects_bad_shapes(op_lib, mode, shapes, self_reference):
    grad_loss, lse_pos, lse_neg, forward_shapes, message = shapes
    x, labels, ref, ref_labels = forward_shapes or ([4, 3], [4], [4, 3], [4])
    error = ValueError if mode == "static" else tf.errors.InvalidArgumentError
    with pytest.raises(error, match=message):
        _run(
            mode,
            _grad_fn(op_lib, self_reference=self_reference),
            tf.zeros(grad_loss),
            tf.zeros(x),
            tf.zeros(labels, tf.int32),
            tf.zeros(ref),
            tf.zeros(ref_labels, tf.int32),
            tf.zeros(lse_pos),
            tf.zeros(lse_neg),
        )


@pytest.mark.parametrize("mode", MODES)
def test_grad_rejects_self_reference_with_other_rows(op_lib, mode):
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"M=5 vs N=4"):
        _run(
            mode,
            _grad_fn(op_lib, self_reference=True),
            tf.zeros([4]),
            tf.zeros([4, 3]),
            tf.zeros([4], tf.int32),
            tf.zeros([5, 3]),
            tf.zeros([5], tf.int32),
            tf.zeros([4]),
            tf.zeros([4]),
        )


BAD_ATTRS = [
    (dict(gamma=0.0), r"gamma must be finite and > 0, got 0"),
    (dict(gamma=-1.0), r"gamma must be finite and > 0, got -1"),
    (dict(gamma=float("nan")), r"gamma must be finite and > 0, got nan"),
    (dict(gamma=float("inf")), r"gamma must be finite and > 0, got inf"),
    (dict(gamma=float("-inf")), r"gamma must be finite and > 0, got -inf"),
    (dict(margin=float("nan")), r"margin must be finite, got nan"),
    (dict(margin=float("inf")), r"margin must be finite, got inf"),
    (dict(margin=float("-inf")), r"margin must be finite, got -inf"),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("attrs,message", BAD_ATTRS)
@pytest.mark.parametrize("self_reference", [False, True])
def test_forward_rejects_bad_attrs(op_lib, mode, attrs, message, self_reference):
    x, labels = tf.zeros([4, 3]), tf.zeros([4], tf.int32)
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        _run(mode, _loss_fn(op_lib, self_reference=self_reference, **attrs), x, labels, x, labels)


@pytest.mark.parametrize("text", ["", "eighty", "80.0x", " 80", "0x1p4"])
def test_hyperparameter_text_must_be_a_whole_decimal_number(op_lib, text):
    x, labels = tf.zeros([4, 3]), tf.zeros([4], tf.int32)
    for name in ("gamma", "margin"):
        attrs = dict(ATTRS, gamma="80.0", margin="0.4")
        attrs[name] = text
        with pytest.raises(tf.errors.InvalidArgumentError, match=f"{name} must be the decimal"):
            op_lib.lib.keras_margin_circle_loss(x, labels, x, labels, 0, **attrs)


# (diagonal_offset, self_reference, message)
BAD_OFFSETS = [
    ([0], False, r"diagonal_offset must be a scalar, got shape \[1\]"),
    ([[1, 2]], False, r"diagonal_offset must be a scalar"),
    (-1, False, "diagonal_offset must be >= 0, and 0 with self_reference; got -1"),
    (3, True, "diagonal_offset must be >= 0, and 0 with self_reference; got 3"),
]


@pytest.mark.parametrize("offset,self_reference,message", BAD_OFFSETS)
def test_bad_diagonal_offsets_are_rejected(op_lib, offset, self_reference, message):
    x, labels, rows = tf.zeros([4, 3]), tf.zeros([4], tf.int32), tf.zeros([4])
    offset = tf.constant(offset, tf.int64)
    attrs = dict(ATTRS, self_reference=self_reference, diagonal_offset=offset)
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        op_lib.keras_margin_circle_loss(x, labels, x, labels, **attrs)
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        op_lib.keras_margin_circle_loss_grad(rows, x, labels, x, labels, rows, rows, **attrs)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("attrs,message", BAD_ATTRS)
def test_grad_rejects_bad_attrs(op_lib, mode, attrs, message):
    x, labels, rows = tf.zeros([4, 3]), tf.zeros([4], tf.int32), tf.zeros([4])
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        _run(mode, _grad_fn(op_lib, **attrs), rows, x, labels, x, labels, rows, rows)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "dtype,tstate,message",
    [
        (tf.float32, tf.float64, "Tstate must be float when T is float, got double"),
        (tf.float16, tf.float64, "Tstate must be float when T is half, got double"),
        (tf.float64, tf.float32, "Tstate must be double when T is double, got float"),
    ],
)
def test_rejects_wrong_state_type(op_lib, mode, dtype, tstate, message):
    """The shape function checks Tstate too, so graph construction reports it (ValueError);
    the kernels check it for graphs built without shape inference."""
    x, labels = tf.zeros([4, 3], dtype), tf.zeros([4], tf.int32)
    error = tf.errors.InvalidArgumentError if mode == "eager" else ValueError
    with pytest.raises(error, match=message):
        _run(mode, _loss_fn(op_lib, Tstate=tstate), x, labels, x, labels)
    # In the gradient op Tstate is the dtype of the saved log-sum-exps.
    rows = tf.zeros([4], dtype)
    with pytest.raises(error, match=message):
        _run(mode, _grad_fn(op_lib), rows, x, labels, x, labels, *[tf.zeros([4], tstate)] * 2)


@pytest.mark.parametrize("mode", ["eager", "function"])
@pytest.mark.parametrize(
    "labels,ref_labels,overrides,message",
    [
        # One Tlabel for both label inputs: the Python wrapper casts mixed pairs to int64.
        (tf.int32, tf.int64, {}, "int64"),
        (tf.float32, tf.float32, {}, "float"),
        (tf.int32, tf.int32, dict(Tstate=tf.int32), "Tstate"),
    ],
)
def test_registration_rejects_unsupported_dtypes(
    op_lib, mode, labels, ref_labels, overrides, message
):
    x = tf.zeros([4, 3])
    with pytest.raises((tf.errors.InvalidArgumentError, TypeError), match=message):
        _run(
            mode,
            _loss_fn(op_lib, **overrides),
            x,
            tf.zeros([4], labels),
            x,
            tf.zeros([4], ref_labels),
        )


def _forward_and_grad(op_lib, mode, x, labels, ref, ref_labels, upstream, self_reference):
    """The forward op's three outputs and the gradient op's two, all as numpy arrays."""
    attrs = dict(ATTRS, self_reference=self_reference)

    def fn(x, labels, ref, ref_labels, upstream):
        loss, lse_pos, lse_neg = op_lib.keras_margin_circle_loss(
            x, labels, ref, ref_labels, **attrs
        )
        grads = op_lib.keras_margin_circle_loss_grad(
            upstream, x, labels, ref, ref_labels, lse_pos, lse_neg, **attrs
        )
        return loss, lse_pos, lse_neg, *grads

    return [np.asarray(t) for t in _run(mode, fn, x, labels, ref, ref_labels, upstream)]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "n,m,self_reference", [(0, 0, True), (0, 5, False), (4, 0, False), (0, 0, False)]
)
def test_empty_sets_are_valid(op_lib, mode, n, m, self_reference):
    d = 3
    x, ref = tf.ones([n, d]), tf.ones([m, d])
    labels, ref_labels = tf.range(n), tf.range(m)
    loss, lse_pos, lse_neg, grad_x, grad_ref = _forward_and_grad(
        op_lib, mode, x, labels, ref, ref_labels, tf.ones([n]), self_reference
    )
    np.testing.assert_array_equal(loss, np.zeros(n))
    np.testing.assert_array_equal(lse_pos, np.tile([-np.inf, 0.0], (n, 1)))
    np.testing.assert_array_equal(lse_neg, np.tile([-np.inf, 0.0], (n, 1)))
    np.testing.assert_array_equal(grad_x, np.zeros((n, d)))
    np.testing.assert_array_equal(grad_ref, np.zeros((m, d)))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("remove_diagonal", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_single_row_self_reference_has_zero_loss(op_lib, rng, mode, remove_diagonal, dtype):
    """One row has no negative (and, without its diagonal pair, no positive either)."""
    x = make_embeddings(rng, 1, 5, dtype)
    attrs = dict(ATTRS, remove_diagonal=remove_diagonal, self_reference=True)

    def fn(x, labels, upstream):
        loss, lse_pos, lse_neg = op_lib.keras_margin_circle_loss(
            x, labels, x, labels, Tstate=dtype, **attrs
        )
        grad_x, grad_ref = op_lib.keras_margin_circle_loss_grad(
            upstream, x, labels, x, labels, lse_pos, lse_neg, **attrs
        )
        return loss, grad_x, grad_ref

    loss, grad_x, grad_ref = _run(mode, fn, x, tf.constant([7]), tf.ones([1], dtype))
    np.testing.assert_array_equal(loss, [0.0])
    np.testing.assert_array_equal(grad_x, np.zeros((1, 5)))
    np.testing.assert_array_equal(grad_ref, np.zeros((1, 5)))


@pytest.mark.parametrize("mode", MODES)
def test_single_row_with_reference_set_is_finite(op_lib, rng, mode):
    x, ref = make_embeddings(rng, 1, 5), make_embeddings(rng, 3, 5)
    outputs = _forward_and_grad(
        op_lib, mode, x, tf.constant([1]), ref, tf.constant([1, 2, 1]), tf.ones([1]), False
    )
    loss = outputs[0]
    assert loss.shape == (1,) and loss[0] > 0
    for t in outputs:
        assert np.isfinite(t).all()


# Label values at the edges of each dtype: only equality matters, so they must give exactly
# what dense ids give.
EXTREME_LABELS = {
    np.int32: np.array([-(2**31), 2**31 - 1, -1, 0, 2**30], np.int32),
    np.int64: np.array([-(2**63), 2**63 - 1, -(2**40), 2**40, 2**40 + 1, -1], np.int64),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("label_dtype", [np.int32, np.int64])
@pytest.mark.parametrize("self_reference", [True, False])
def test_extreme_label_values_match_dense_ids(op_lib, rng, mode, label_dtype, self_reference):
    values = EXTREME_LABELS[label_dtype]
    n, m, d = 40, 30, 6
    labels = rng.choice(values, size=n)
    ref_labels = labels if self_reference else rng.choice(values[1:], size=m)
    _, ids = np.unique(np.concatenate([labels, ref_labels]), return_inverse=True)
    dense, dense_ref = ids[:n].astype(np.int32), ids[n:].astype(np.int32)
    x = make_embeddings(rng, n, d)
    ref = x if self_reference else make_embeddings(rng, m, d)
    upstream = rng.random(n).astype(np.float32)
    got = _forward_and_grad(op_lib, mode, x, labels, ref, ref_labels, upstream, self_reference)
    want = _forward_and_grad(op_lib, mode, x, dense, ref, dense_ref, upstream, self_reference)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("self_reference", [True, False])
def test_grad_tolerates_any_saved_state(op_lib, rng, self_reference):
    """lse_pos / lse_neg are op inputs like any other: NaN, +-inf or values inconsistent
    with the embeddings give some result of the right shape, never a crash."""
    n, d = 50, 4
    x = tf.constant(make_embeddings(rng, n, d))
    labels = tf.constant(rng.integers(0, 5, size=n))
    states = [np.nan, np.inf, -np.inf, 1e30, -1e30, 0.0, 3.0]
    lse_pos = tf.constant(rng.choice(states, size=(n, 2)))
    lse_neg = tf.constant(rng.choice(states, size=(n, 2)))
    grad_x, grad_ref = op_lib.keras_margin_circle_loss_grad(
        tf.ones([n]),
        x,
        labels,
        x,
        labels,
        tf.cast(lse_pos, tf.float32),
        tf.cast(lse_neg, tf.float32),
        **dict(ATTRS, self_reference=self_reference),
    )
    assert grad_x.shape == (n, d) and grad_ref.shape == (n, d)
