"""Every loss under ``torch.compile`` on the PyTorch backend: one graph, the eager values and
gradients, NaN for a bad label where eagerly it raises, and Keras's ``jit_compile=True``
training to the eager weights.

The other backend tests already run each case compiled through ``harness`` (``jit`` mode,
``torch.compile(fullgraph=True)`` here); this module adds what they do not reach: each loss's
class with sample weights and every reduction, Circle's reference set, label dtypes, the
gradients of labels, weights and references, and ``model.fit``.
"""

import keras
import numpy as np
import pytest

from keras_margin import losses

from .cases import LOSSES, inputs, pair, unit_rows
from .harness import BACKEND
from .test_training import TASKS, data, model_for

pytestmark = pytest.mark.skipif(BACKEND != "torch", reason="torch.compile is PyTorch's")

if BACKEND == "torch":
    import torch
    from torch._dynamo.utils import counters

FUNCTIONS = {
    "hinge": losses.hinge,
    "squared_hinge": losses.squared_hinge,
    "categorical_hinge": losses.categorical_hinge,
    "gce": lambda y, p: losses.categorical_generalized_cross_entropy(y, p, q=0.7),
    "circle": lambda y, x: losses.circle(y, x, gamma=16.0, implementation="composite"),
}
REDUCTIONS = ["sum_over_batch_size", "sum", "mean", "mean_with_sample_weight", "none"]


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def run(fn, arrays, compiled):
    """``fn(*tensors)`` and the gradient of a random projection of it with respect to every
    float tensor, eagerly or under ``torch.compile(fullgraph=True)`` (a graph break raises)."""
    tensors = [torch.tensor(a, requires_grad=a.dtype.kind == "f") for a in arrays]
    value = (torch.compile(fn, fullgraph=True) if compiled else fn)(*tensors)
    cotangent = torch.linspace(0.5, 1.5, value.numel()).reshape(value.shape)
    (value * cotangent).sum().backward()
    # Class ids, float ones included, carry no gradient.
    grads = [None if t.grad is None else t.grad.numpy() for t in tensors]
    return value.detach().numpy(), grads


def assert_compiled_equals_eager(fn, *arrays):
    value, grads = run(fn, arrays, compiled=False)
    compiled_value, compiled_grads = run(fn, arrays, compiled=True)
    # The graph really ran: dynamo captured it (fullgraph=True has already ruled out breaks).
    assert counters["stats"]["unique_graphs"] >= 1
    np.testing.assert_allclose(compiled_value, value, rtol=1e-5, atol=1e-6)
    assert np.isfinite(value).all()
    for compiled_grad, grad in zip(compiled_grads, grads, strict=True):
        if grad is None:
            assert compiled_grad is None
        else:
            np.testing.assert_allclose(compiled_grad, grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", LOSSES)
def test_each_loss_function_compiles_to_its_eager_values_and_gradients(rng, name):
    y_true, y_pred = inputs(name, rng)
    assert_compiled_equals_eager(lambda p, y: FUNCTIONS[name](y, p), y_pred, y_true)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name", LOSSES)
def test_each_loss_class_compiles_with_sample_weights(rng, name, reduction):
    loss = pair(name, reduction=reduction)[0]
    y_true, y_pred = inputs(name, rng)
    weights = rng.uniform(0.5, 2.0, size=y_pred.shape[0]).astype("float32")
    assert_compiled_equals_eager(
        lambda p, y, w: loss(y, p, sample_weight=w), y_pred, y_true, weights
    )
    if reduction == "sum_over_batch_size":
        assert_compiled_equals_eager(lambda p, y: loss(y, p), y_pred, y_true)


@pytest.mark.parametrize("remove_diagonal", [True, False])
def test_circle_with_reference_embeddings_compiles(rng, remove_diagonal):
    x, ref = unit_rows(rng, 10, 8), unit_rows(rng, 14, 8)
    labels, ref_labels = rng.integers(0, 3, 10), rng.integers(0, 3, 14)

    def fn(x, ref, labels, ref_labels):
        return losses.circle(
            labels,
            x,
            ref_labels=ref_labels,
            ref_embeddings=ref,
            gamma=16.0,
            remove_diagonal=remove_diagonal,
            implementation="composite",
        )

    assert_compiled_equals_eager(fn, x, ref, labels, ref_labels)


@pytest.mark.parametrize("dtype", ["int32", "uint8", "uint64", "float32"])
@pytest.mark.parametrize("name", ["gce", "circle"])
def test_class_id_dtypes_compile(rng, name, dtype):
    y_true, y_pred = inputs(name, rng)
    fn = FUNCTIONS[name]
    assert_compiled_equals_eager(lambda p, y: fn(y, p), y_pred, y_true.astype(dtype))


BAD_LABELS = [
    ("gce-out-of-range", "gce", np.array([0, 4, 1, 2, 3, 0]), [1], "in \\[0, 4\\)"),
    ("gce-negative", "gce", np.array([0, 1, -1, 2, 3, 0]), [2], "in \\[0, 4\\)"),
    ("gce-fractional", "gce", np.array([0.0, 1.0, 2.5, 2.0, 3.0, 0.0]), [2], "whole-number"),
    (
        "circle-fractional",
        "circle",
        np.array([0.0, 0.0, 1.5, 1.0, 2.0, 2.0, 0.0, 1.0, 2.0, 3.0]),
        [2],
        "whole-number",
    ),
]


@pytest.mark.parametrize("case", BAD_LABELS, ids=[case[0] for case in BAD_LABELS])
def test_a_bad_label_raises_eagerly_and_is_nan_compiled(rng, case):
    _, name, y_true, bad_rows, message = case
    _, y_pred = inputs(name, rng)
    fn = FUNCTIONS[name]
    with pytest.raises(ValueError, match=message):
        fn(torch.tensor(y_true), torch.tensor(y_pred))
    values = torch.compile(fn, fullgraph=True)(torch.tensor(y_true), torch.tensor(y_pred)).numpy()
    assert np.isnan(values[bad_rows]).all()
    assert np.isfinite(np.delete(values, bad_rows)).all()
    # Through the class, the reduced loss is NaN.
    loss = pair(name)[0]
    compiled_loss = torch.compile(lambda y, p: loss(y, p), fullgraph=True)
    assert np.isnan(compiled_loss(torch.tensor(y_true), torch.tensor(y_pred)).numpy())


def fit(task, loss, jit_compile):
    """Weights and losses after two steps of ``fit``, and dynamo's counters of the run."""
    torch._dynamo.reset()
    counters.clear()
    model = model_for(task)
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss=loss, jit_compile=jit_compile)
    x, y = data(task)
    history = model.fit(x, y, batch_size=24, epochs=1, shuffle=False, verbose=0)
    stats = {key: dict(value) for key, value in counters.items()}
    return model.get_weights(), history.history["loss"], stats


@pytest.fixture(scope="module")
def keras_own_breaks():
    """Dynamo's graph breaks in Keras's own train step (its backward, optimizer and name
    scopes), measured with a loss of plain ``keras.ops``, and the ops it captures."""
    _, _, stats = fit("gce", lambda y, p: keras.ops.mean(keras.ops.square(p), axis=-1), True)
    return stats["graph_break"], stats["stats"]["calls_captured"]


@pytest.mark.parametrize("task", list(TASKS))
def test_jit_compile_training_equals_eager(task, keras_own_breaks):
    weights, history, _ = fit(task, TASKS[task][0](), False)
    compiled_weights, compiled_history, stats = fit(task, TASKS[task][0](), True)
    breaks, baseline_calls = keras_own_breaks
    # The compiled train step ran, with the loss inside its graph: no graph break beyond
    # Keras's own, and more captured calls than the trivial loss.
    assert stats["graph_break"] == breaks
    assert stats["stats"]["calls_captured"] > baseline_calls
    np.testing.assert_allclose(compiled_history, history, rtol=1e-5)
    for compiled, eager in zip(compiled_weights, weights, strict=True):
        np.testing.assert_allclose(compiled, eager, rtol=1e-5, atol=1e-6)
