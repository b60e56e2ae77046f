"""Circle's blocked PyTorch operator as PyTorch sees it: ``torch.library.opcheck``, float64
``gradcheck``, ``torch.compile(fullgraph=True)`` against eager, and its O(N + M) saved state.

It runs in the PyTorch backend run (``KERAS_BACKEND=torch python -m pytest tests/backends``);
the shared contract (values and gradients against the composite path, low precision, NaN
rows, float64 accuracy) is ``test_circle_implementations``.
"""

import numpy as np
import pytest

from .cases import unit_rows
from .harness import BACKEND

if BACKEND != "torch":
    pytest.skip("PyTorch's operator, tested in the PyTorch backend run", allow_module_level=True)

import torch  # noqa: E402

from keras_margin.losses import circle_composite  # noqa: E402
from keras_margin.torch import circle as blocked  # noqa: E402

KWARGS = {"gamma": 8.0, "margin": 0.25}


def _tensor(array, dtype=torch.float32, requires_grad=False):
    return torch.tensor(array, dtype=dtype, requires_grad=requires_grad)


def _layout(rng, name, dtype=torch.float32):
    """(embeddings, labels, reference embeddings or None, reference labels or None)."""
    n, m, d = {"self": (150, None, 8), "reference": (9, 300, 4), "tiny": (7, 5, 3)}[name]
    x = _tensor(unit_rows(rng, n, d, "float64"), dtype, True)
    # Classes 0 and 9 have one member each, and neither is in the reference set: anchors 0
    # and 1 have no positive.
    labels = torch.tensor(np.concatenate([[0, 9], rng.integers(1, 4, n - 2)]))
    if m is None:
        return x, labels, None, None
    ref = _tensor(unit_rows(rng, m, d, "float64"), dtype, True)
    return x, labels, ref, torch.tensor(rng.integers(1, 4, m))


def _op_samples(rng):
    """Argument tuples of ``circle_forward``: self-reference and a reference set, the diagonal
    removed (with a row offset) and kept, a set with no member."""
    samples = []
    for name in ("self", "reference", "tiny"):
        x, labels, ref, ref_labels = _layout(rng, name)
        for remove_diagonal, offset in ((True, 0), (True, 3), (False, 0)):
            samples.append(
                (x, labels, ref, ref_labels, torch.tensor(offset), 8.0, 0.25, remove_diagonal)
            )
    one_class = _tensor(unit_rows(rng, 6, 3), requires_grad=True)
    samples.append((one_class, torch.zeros(6, dtype=torch.int64), None, None, torch.tensor(0)))
    samples[-1] += (8.0, -0.3, True)
    return samples


def test_opcheck_forward_and_backward(rng):
    for args in _op_samples(rng):
        torch.library.opcheck(torch.ops.keras_margin.circle_forward.default, args)
        x, labels, ref, ref_labels, offset, *hyper = args
        losses, state = torch.ops.keras_margin.circle_forward(*args)
        upstream = torch.rand_like(losses)
        backward_args = (upstream, x.detach(), labels, ref, ref_labels, offset, state.detach())
        backward_args += tuple(hyper)
        if ref is not None:
            backward_args = backward_args[:3] + (ref.detach(),) + backward_args[4:]
        torch.library.opcheck(torch.ops.keras_margin.circle_backward.default, backward_args)


@pytest.mark.parametrize("margin", [0.25, -0.3])
@pytest.mark.parametrize("remove_diagonal", [True, False])
@pytest.mark.parametrize("name", ["self", "reference", "tiny"])
def test_gradcheck_float64(rng, name, remove_diagonal, margin):
    """Several tiles for the reference set (300 columns), one for the self case. gradcheck's
    fast mode (a random projection of the Jacobian) except on the tiny layout."""
    x, labels, ref, ref_labels = _layout(rng, name, torch.float64)
    if name == "self":  # gradcheck perturbs every entry: keep it small
        x = x[:40].detach().requires_grad_()
        labels = labels[:40]
    kwargs = {"gamma": 8.0, "margin": margin, "remove_diagonal": remove_diagonal}
    fast_mode = name != "tiny"
    if ref is None:
        fn, inputs = (lambda x: blocked.circle_loss(x, labels, **kwargs)), (x,)
    else:
        fn = lambda x, ref: blocked.circle_loss(x, labels, ref, ref_labels, **kwargs)  # noqa: E731
        inputs = (x, ref)
    assert torch.autograd.gradcheck(fn, inputs, fast_mode=fast_mode)


def _values_and_grads(fn, x, labels, ref, ref_labels, same_tensor):
    x = x.detach().clone().requires_grad_()
    if same_tensor:
        ref, ref_labels = x, labels
    elif ref is not None:
        ref = ref.detach().clone().requires_grad_()
    losses = fn(x, labels, ref, ref_labels)
    upstream = torch.linspace(0.5, 1.5, len(losses))
    inputs = [x] if ref is None or same_tensor else [x, ref]
    grads = torch.autograd.grad((losses * upstream).sum(), inputs)
    return [losses.detach(), *grads]


CASES = [
    ("self", False, "none"),
    ("self", True, "same tensor"),
    ("reference", False, "reference set"),
    ("tiny", False, "tiny reference set"),
]


@pytest.mark.parametrize("name,same_tensor,_", CASES, ids=[case[2] for case in CASES])
def test_compiled_fullgraph_equals_eager(rng, name, same_tensor, _):
    torch._dynamo.reset()
    x, labels, ref, ref_labels = _layout(rng, name)

    def fn(x, labels, ref, ref_labels):
        return blocked.circle_loss(x, labels, ref, ref_labels, remove_diagonal=True, **KWARGS)

    eager = _values_and_grads(fn, x, labels, ref, ref_labels, same_tensor)
    compiled = _values_and_grads(
        torch.compile(fn, fullgraph=True), x, labels, ref, ref_labels, same_tensor
    )
    composite = _values_and_grads(
        lambda *args: circle_composite.circle_loss(*args, remove_diagonal=True, **KWARGS),
        x,
        labels,
        ref,
        ref_labels,
        same_tensor,
    )
    losses = eager[0]
    assert torch.equal(losses[:2], torch.zeros(2))  # no positive
    assert (losses > 0).any()
    for got, want, reference in zip(compiled, eager, composite, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(got, reference, rtol=1e-4, atol=1e-4)


def test_compiled_rows_with_no_positives_or_no_negatives(rng):
    """One class: no row has a negative; all distinct: no row has a positive. Every loss and
    gradient is 0, not NaN, compiled as eagerly."""
    torch._dynamo.reset()
    x = _tensor(unit_rows(rng, 12, 4), requires_grad=True)
    compiled = torch.compile(blocked.circle_loss, fullgraph=True)
    for labels in (torch.zeros(12, dtype=torch.int64), torch.arange(12)):
        for fn in (blocked.circle_loss, compiled):
            losses = fn(x, labels, remove_diagonal=True, **KWARGS)
            (grad,) = torch.autograd.grad(losses.sum(), x)
            assert torch.equal(losses, torch.zeros(12)) and torch.equal(grad, torch.zeros_like(x))


def test_a_non_finite_embedding_makes_every_row_nan_compiled(rng):
    torch._dynamo.reset()
    x, labels, ref, ref_labels = _layout(rng, "reference")
    ref = ref.detach().clone()
    ref[5, 1] = float("nan")
    compiled = torch.compile(blocked.circle_loss, fullgraph=True)
    losses = compiled(x, labels, ref, ref_labels, remove_diagonal=True, **KWARGS)
    assert torch.isnan(losses).all()


@pytest.mark.parametrize("reference", [False, True])
def test_only_o_n_plus_m_state_is_saved_for_the_backward(rng, reference):
    """Everything autograd keeps between the forward and the backward: the inputs themselves
    and O(N + M) more, never an N x M matrix (here 1,024 x 2,048 pairs: four tiles of 512)."""
    n, m, d = 1024, 2048 if reference else 1024, 16
    x = _tensor(unit_rows(rng, n, d), requires_grad=True)
    labels = torch.tensor(rng.integers(0, 50, n))
    ref = _tensor(unit_rows(rng, m, d), requires_grad=True) if reference else None
    ref_labels = torch.tensor(rng.integers(0, 50, m)) if reference else None
    saved = []

    def pack(tensor):
        saved.append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        losses = blocked.circle_loss(x, labels, ref, ref_labels, remove_diagonal=True, **KWARGS)
    largest = max(t.numel() for t in saved)
    assert largest <= max(n, m) * d, [tuple(t.shape) for t in saved]
    inputs = {x.data_ptr()} | ({ref.data_ptr()} if reference else set())
    beyond_inputs = sum(t.numel() for t in saved if t.data_ptr() not in inputs)
    assert beyond_inputs <= 8 * (n + m), [tuple(t.shape) for t in saved]
    losses.sum().backward()
    assert x.grad.shape == x.shape and (not reference or ref.grad.shape == ref.shape)
