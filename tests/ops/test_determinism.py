"""Bitwise reproducibility of the fused op's CPU kernels (values and gradients).

The engine's block sizes fix the order of every floating-point sum and its schedule fixes
which tile updates which rows when, so results repeat exactly for a given block plan. The
plan follows the intra-op pool's size, except under tf.config.experimental.
enable_op_determinism(), where it follows the machine's CPU count and so does not change
with set_intra_op_parallelism_threads. The thread count can only be set before TensorFlow
runs anything, hence one fresh process (determinism_probe.py) per configuration. Under jit
on CPU the op is a custom call into the same engine, whose plan always follows the CPU
count. The blocked HLO lowering (what GPUs and TPUs compile), forced on the CPU, loops over
its tiles in a fixed order.
"""

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = Path(__file__).with_name("determinism_probe.py")


@functools.cache
def _probe(threads, determinism, jit=False, blocked_hlo=False):
    """{case: [distinct hashes over two calls in one process]} for one configuration."""
    command = [sys.executable, str(PROBE), "--threads", str(threads), "--repeats", "2"]
    if determinism:
        command.append("--determinism")
    if jit:
        command.append("--jit")
    if blocked_hlo:
        command.append("--blocked-hlo")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["threads"] == threads
    return report["hashes"]


def _assert_stable_within_process(hashes):
    unstable = {case: runs for case, runs in hashes.items() if len(runs) != 1}
    assert not unstable, f"repeated calls in one process differ: {unstable}"


@pytest.mark.parametrize("threads", [1, 2])
def test_repeated_calls_agree_under_op_determinism(threads):
    _assert_stable_within_process(_probe(threads, determinism=True))


def test_thread_count_does_not_change_results_under_op_determinism():
    one, two = _probe(1, determinism=True), _probe(2, determinism=True)
    differing = sorted(case for case in one if one[case] != two[case])
    assert not differing, f"1 vs 2 intra-op threads differ for {differing}"


def test_repeated_runs_agree_without_op_determinism():
    """Without the flag the plan still depends only on the thread count, so runs with the
    same count agree, within a process and across processes."""
    first = _probe(2, determinism=False)
    _assert_stable_within_process(first)
    second = _probe.__wrapped__(2, determinism=False)
    assert first == second


@pytest.mark.parametrize("threads", [1, 2])
def test_jit_custom_call_repeats_under_op_determinism(threads):
    _assert_stable_within_process(_probe(threads, determinism=True, jit=True))


def test_jit_custom_call_ignores_the_thread_count_and_matches_the_kernel():
    """The custom call always plans its blocks for the machine's CPU count, as the CPU kernel
    does under op determinism, and runs the same engine: results are the same bits across
    intra-op thread counts, across processes and as the kernel's."""
    one, two = _probe(1, True, jit=True), _probe(2, True, jit=True)
    assert one == two
    assert _probe.__wrapped__(2, True, jit=True) == two
    # Without the flag too: the custom call's plan never follows the pool.
    assert _probe(1, False, jit=True) == two
    kernel = _probe(2, determinism=True)
    differing = sorted(case for case in kernel if kernel[case] != two[case])
    assert not differing, f"jit vs CPU kernel differ for {differing}"


@pytest.mark.parametrize("threads", [1, 2])
def test_blocked_hlo_repeats_under_op_determinism(threads):
    """The blocked HLO lowering forced on the CPU: repeated calls and a second process with the
    same thread count give the same bits."""
    first = _probe(threads, True, jit=True, blocked_hlo=True)
    _assert_stable_within_process(first)
    assert _probe.__wrapped__(threads, True, jit=True, blocked_hlo=True) == first
