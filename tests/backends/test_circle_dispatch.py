"""The table of ``keras_margin.losses.circle_dispatch.choose``: which implementation runs."""

import pytest

from keras_margin.losses import circle_dispatch
from keras_margin.losses.circle_dispatch import (
    COMPOSITE,
    JAX_BLOCKED,
    JAX_BLOCKED_MIN_PAIRS,
    TENSORFLOW_OP,
    TORCH_BLOCKED,
    TORCH_BLOCKED_MIN_PAIRS,
    choose,
)

BIG, SMALL = JAX_BLOCKED_MIN_PAIRS, JAX_BLOCKED_MIN_PAIRS - 1
TORCH_BIG, TORCH_SMALL = TORCH_BLOCKED_MIN_PAIRS, TORCH_BLOCKED_MIN_PAIRS - 1


def op_loads():
    return None


def op_missing():
    return "no library"


# (implementation, backend, pairs, op state, chosen module)
TABLE = [
    ("auto", "tensorflow", SMALL, op_loads, TENSORFLOW_OP),
    ("auto", "tensorflow", BIG, op_loads, TENSORFLOW_OP),
    ("fused", "tensorflow", SMALL, op_loads, TENSORFLOW_OP),
    ("composite", "tensorflow", BIG, op_loads, COMPOSITE),
    ("auto", "tensorflow", BIG, op_missing, COMPOSITE),
    ("auto", "jax", SMALL, op_missing, COMPOSITE),
    ("auto", "jax", BIG, op_missing, JAX_BLOCKED),
    ("fused", "jax", SMALL, op_missing, JAX_BLOCKED),
    ("composite", "jax", BIG, op_missing, COMPOSITE),
    ("auto", "torch", TORCH_SMALL, op_missing, COMPOSITE),
    ("auto", "torch", TORCH_BIG, op_missing, TORCH_BLOCKED),
    ("fused", "torch", TORCH_SMALL, op_missing, TORCH_BLOCKED),
    ("composite", "torch", TORCH_BIG, op_missing, COMPOSITE),
    ("auto", "numpy", BIG, op_missing, COMPOSITE),
]


@pytest.mark.filterwarnings("ignore:keras_margin's fused Circle op is unavailable")
@pytest.mark.parametrize("implementation,backend,pairs,op,chosen", TABLE)
def test_choice(implementation, backend, pairs, op, chosen):
    assert choose(implementation, backend, pairs, op) == chosen


def test_fused_raises_where_nothing_fused_runs():
    with pytest.raises(RuntimeError, match="needs the TensorFlow, JAX or PyTorch backend.*'numpy'"):
        choose("fused", "numpy", BIG, op_missing)
    with pytest.raises(RuntimeError, match="needs the compiled op, which is unavailable: no lib"):
        choose("fused", "tensorflow", BIG, op_missing)


def test_a_missing_op_warns_once(monkeypatch):
    monkeypatch.setattr(circle_dispatch, "_fallback_warned", False)
    with pytest.warns(RuntimeWarning, match=r"unavailable \(no library\)"):
        choose("auto", "tensorflow", BIG, op_missing)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        choose("auto", "tensorflow", BIG, op_missing)
