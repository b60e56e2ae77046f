"""One contract for every Circle implementation on the active backend, against the composite
path: values, gradients, reference sets, degenerate layouts, low precision, NaN rows.

On TensorFlow the other implementation is the fused op, on JAX the blocked ``lax.scan`` path,
on PyTorch the blocked ``keras_margin::circle_forward`` operator (several tiles and a padded,
or on PyTorch narrower, last tile at these sizes: tiles are 128 columns or more). The composite
path itself is checked against Keras by ``test_keras_oracle``.
"""

import numpy as np
import pytest
from accuracy import CASES, assert_meets_contract, case, float64_circle

from keras_margin.losses import circle_composite
from keras_margin.losses.circle_dispatch import circle_loss_function

from .cases import unit_rows
from .harness import BACKEND, CIRCLE_IMPLEMENTATIONS, MODES, tensor, value_and_gradient
from .harness import numpy as to_numpy

# (id, rows, reference rows or None, classes, remove_diagonal)
LAYOUTS = [
    ("self-3-tiles", 300, None, 7, True),
    ("self-keep-diagonal", 130, None, 5, False),
    ("reference-longer", 90, 333, 6, True),
    ("reference-shorter", 200, 50, 4, True),
    ("one-row", 1, None, 1, True),
    ("one-class", 40, None, 1, True),  # no negatives: every loss is 0
    ("all-distinct", 40, None, 40, True),  # no positives: every loss is 0
]


def inputs_of(layout, rng):
    """The float32 embeddings of a layout, and the other arguments of its loss function."""
    _, n, m, classes, _ = layout
    x = unit_rows(rng, n, 16)
    labels = rng.integers(0, classes, n) if classes < n else np.arange(n)
    if m is None:
        return x, (labels,)
    return x, (labels, unit_rows(rng, m, 16), rng.integers(0, classes, m))


def as_dtype(arrays, dtype):
    return [a.astype(dtype) if a.dtype.kind == "f" else a for a in arrays]


def loss_of(implementation, layout):
    """``implementation``'s per-row function for a layout, taking ``inputs_of``'s arrays."""
    _, n, m, _, remove_diagonal = layout
    circle_loss = (
        circle_composite.circle_loss
        if implementation == "composite"
        else circle_loss_function(implementation, n, m or n)
    )
    kwargs = {"gamma": 32.0, "margin": 0.25, "remove_diagonal": remove_diagonal}
    return lambda x, *rest: circle_loss(x, *rest, **kwargs)


def test_fused_is_the_backends_own_implementation():
    own = {
        "tensorflow": "keras_margin.ops.circle",
        "jax": "keras_margin.jax.circle",
        "torch": "keras_margin.torch.circle",
    }
    if BACKEND not in own:
        with pytest.raises(RuntimeError, match=f"the active Keras backend is '{BACKEND}'"):
            circle_loss_function("fused", 300, 300)
        return
    assert circle_loss_function("fused", 300, 300).__module__ == own[BACKEND]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("layout", LAYOUTS, ids=[layout[0] for layout in LAYOUTS])
@pytest.mark.parametrize("implementation", CIRCLE_IMPLEMENTATIONS)
def test_values_and_gradients_equal_the_composite_path(rng, implementation, layout, mode):
    fn, reference_fn = loss_of(implementation, layout), loss_of("composite", layout)
    x, rest = inputs_of(layout, rng)
    cotangent = rng.uniform(0.5, 1.5, size=len(x))
    value, grad = value_and_gradient(fn, mode, x, *rest, cotangent=cotangent)
    expected, expected_grad = value_and_gradient(reference_fn, mode, x, *rest, cotangent=cotangent)
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-5 * scale)
    grad_scale = max(1.0, float(np.abs(expected_grad).max()))
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-4, atol=1e-5 * grad_scale)
    if layout[0] in ("one-class", "all-distinct", "one-row"):
        assert np.all(value == 0) and np.all(grad == 0)
    else:
        assert np.any(value > 0) and np.any(grad != 0)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("implementation", CIRCLE_IMPLEMENTATIONS)
def test_low_precision_stays_close_to_float32(rng, implementation, dtype):
    layout = LAYOUTS[0]
    fn, reference_fn = loss_of(implementation, layout), loss_of("composite", layout)
    x, rest = inputs_of(layout, rng)
    value = to_numpy(fn(*[tensor(a) for a in as_dtype([x, *rest], dtype)]))
    expected = to_numpy(reference_fn(*[tensor(a) for a in [x, *rest]]))
    assert value.dtype == np.dtype(dtype) or dtype == "bfloat16"
    np.testing.assert_allclose(value.astype("float32"), expected, rtol=3e-2, atol=0.5)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("implementation", CIRCLE_IMPLEMENTATIONS)
def test_a_non_finite_embedding_makes_every_row_nan(rng, implementation, mode):
    x, rest = inputs_of(LAYOUTS[0], rng)
    x[17, 3] = np.nan
    value, _ = value_and_gradient(loss_of(implementation, LAYOUTS[0]), mode, x, *rest)
    assert np.isnan(value).all()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("implementation", CIRCLE_IMPLEMENTATIONS)
def test_meets_the_accuracy_contract(rng, implementation, name, mode):
    """Loss and gradient against float64, at most 10x the composite path's error or within
    float32 rounding of the logits (``tests/accuracy.py``), off the unit sphere included."""
    x, labels, ref, ref_labels, kwargs = case(name)
    rest = (labels,) if ref is None else (labels, ref.astype("float32"), ref_labels)
    upstream = rng.uniform(0.5, 1.5, len(x)).astype("float32")
    reference = float64_circle(
        labels, x, ref_labels, ref, upstream=upstream.astype("float64"), **kwargs
    )
    for field in ("grads", "grad_floors", "recomputed_grad_floors"):
        setattr(reference, field, getattr(reference, field)[:1])

    def evaluated(implementation, mode):
        circle_loss = (
            circle_composite.circle_loss
            if implementation == "composite"
            else circle_loss_function(implementation, len(x), len(x if ref is None else ref))
        )
        fn = lambda x, *rest: circle_loss(x, *rest, **kwargs)  # noqa: E731
        value, grad = value_and_gradient(fn, mode, x.astype("float32"), *rest, cotangent=upstream)
        return value, [grad]

    composite = evaluated("composite", "eager")
    # JAX's blocked path recomputes the logits in its backward under XLA; TensorFlow's op runs
    # one engine whose forward and backward round every logit alike.
    assert_meets_contract(
        evaluated(implementation, mode),
        composite,
        reference,
        f"{name}, {mode}",
        recomputed=BACKEND == "jax" and implementation == "fused",
    )
