"""The fused op meets Circle's accuracy contract (``tests/accuracy.py``) off the unit sphere.

Each case runs through the CPU kernel (eager), the XLA custom call into the same engine
(``jit``) and the blocked HLO lowering that GPUs and TPUs compile (``jit-hlo``), in float32,
against a float64 evaluation; the composite path's error on the same input sets the bar. The
cases are those of the gradient bug of the 16-float-lane engine (rows of norm 10, and norms
mixed within every tile), where a logit fused into the following subtraction made a row's
dominant pair weigh e^(its rounding error), and the corners of the argument ranges.

Where the CPU has AVX-512 the cases also run, in a fresh process, on the op library's own
baseline build (the engine build is chosen once per process); elsewhere the baseline is the
only build that can run, and the in-process run is on it.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
from accuracy import CASES, assert_meets_contract, case, float64_circle

import keras_margin
from keras_margin import ops

from .helpers import loss_and_gradients

MODES = ["eager", "jit", "jit-hlo"]


def evaluate(implementation, mode, x, labels, ref, ref_labels, kwargs, upstream):
    def fn(x, ref):
        return keras_margin.losses.circle(
            labels,
            x,
            ref_labels=ref_labels,
            ref_embeddings=ref,
            implementation=implementation,
            **kwargs,
        )

    as32 = lambda a: None if a is None else a.astype(np.float32)  # noqa: E731
    return loss_and_gradients(fn, as32(x), as32(ref), upstream.astype(np.float32), mode)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", CASES)
def test_fused_meets_the_contract(rng, name, mode):
    assert ops.custom_op_available(), ops.custom_op_unavailable_reason()
    x, labels, ref, ref_labels, kwargs = case(name)
    upstream = rng.uniform(0.5, 1.5, len(x)).astype(np.float32).astype(np.float64)
    reference = float64_circle(labels, x, ref_labels, ref, upstream=upstream, **kwargs)
    args = (x, labels, ref, ref_labels, kwargs, upstream)
    composite = evaluate("composite", "eager", *args)
    fused = evaluate("fused", mode, *args)
    assert_meets_contract(fused, composite, reference, f"{name}, {mode}, {ops.engine_isa()}")


def test_the_baseline_build_meets_the_contract_too():
    """On an AVX-512 CPU the cases run again on the baseline build, in a fresh process; on any
    other CPU the baseline build is the one that ran them above."""
    if ops.engine_isa() != "avx512":
        assert ops.engine_isa() in ("avx2", "portable")
        return
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            __file__,
            "-k",
            "test_fused_meets_the_contract",
        ],  # fmt: skip
        env={**os.environ, "KERAS_MARGIN_ENGINE_ISA": "baseline"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert f"{len(CASES) * len(MODES)} passed" in result.stdout
