"""Circle loss forward+backward: Keras vs the fused op vs the bare matrix products.

``keras-margin bench`` runs this module and prints its table; in a source checkout,
``benchmarks/circle.py`` runs it and writes the table to the ``## Circle`` section of
benchmarks/RESULTS.md (through benchmarks/results.py, which keeps the other sections). Every
configuration runs in a fresh Python process, so that its peak resident memory (VmHWM) is its
own.

    python benchmarks/circle.py                 # N = 1024 ... 65536, D = 128 and 512
    python benchmarks/circle.py --quick         # keras:jit and fused:jit, N = 4096, D = 128
    python benchmarks/circle.py --n 4096 16384 --d 128 --modes fused:function keras:jit
    python benchmarks/circle.py --n 4096 --d 128 --modes fused:jit keras:jit --rounds 3
    python benchmarks/circle.py --n 4096 --d 128 --modes fused:jit --rounds 3 \
        --compare-with before=../before   # another checkout with its own built op, interleaved

Modes are IMPL:STYLE with IMPL in {keras, fused, fused-hlo, fused-ref, matmul} and STYLE in
{eager, function, jit}; ``fused-hlo`` is ``fused`` with the blocked HLO lowering forced where
XLA on the CPU would call the CPU engine (the proxy for GPUs and TPUs); ``fused-ref`` is the op
against a reference set of N / 2 other rows (M != N, no symmetric tiles); a ``-baseline``
suffix keeps the op library's own engine build where the CPU would run the AVX-512 one
(``KERAS_MARGIN_ENGINE_ISA=baseline``); ``matmul`` is x @ x^T plus
the two products of the backward pass (dS @ x and dS^T @ x), the floor of any unfused
implementation. The ``-jax`` implementations run on Keras's JAX backend under ``jax.jit``:
``keras-jax`` is ``keras.losses.Circle``, ``composite-jax`` and ``fused-jax`` are
``keras_margin.losses.Circle`` with the composite path and the blocked ``lax.scan`` path;
without jax installed they are left out.

This file is also each configuration's worker process, run by its path and, with
``--compare-with``, with another checkout first on the path, so at the top it imports only the
standard library: that checkout's ``keras_margin_cli`` may lack this package's modules.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import re
import statistics
import subprocess
import sys
import time

SECTION = "Circle"
ALL_MODES = [
    "keras:eager",
    "keras:function",
    "keras:jit",
    "fused:eager",
    "fused:function",
    "fused:jit",
    "fused-hlo:jit",
    "fused-baseline:function",
    "fused-ref:function",
    "fused-ref-baseline:function",
    "matmul:eager",
    "matmul:function",
    "keras-jax:jit",
    "composite-jax:jit",
    "fused-jax:jit",
]
GAMMA, MARGIN = 80.0, 0.4


def _listed(values) -> str:
    return ", ".join(map(str, values))


FULL_SIZES, FULL_DIMS = [2**k for k in range(10, 17)], [128, 512]
# A first look in well under a minute: each configuration's process takes about 10 s on two
# cores to import its backend and warm up, so --quick runs two, the fused op against
# keras.losses.Circle where both are fastest.
QUICK_SIZES, QUICK_DIMS, QUICK_MODES, QUICK_REPEATS = [4096], [128], ["keras:jit", "fused:jit"], 3
QUICK_HELP = (
    f"{' and '.join(QUICK_MODES)} only, at N={_listed(QUICK_SIZES)}, D={_listed(QUICK_DIMS)}, "
    f"{QUICK_REPEATS} repeats: about 25 s on 2 cores"
)

# Peak bytes per N^2 similarity entry above the baseline, measured at N = 4096 (D = 128) and
# rounded up by ~20%. Modes not listed use O(N * D) memory and are never skipped.
BYTES_PER_PAIR = {
    "keras:eager": 130,
    "keras:function": 80,
    "keras:jit": 26,
    "matmul:eager": 12,
    "matmul:function": 12,
    "keras-jax:jit": 26,
    "composite-jax:jit": 26,
}
MEMORY_FRACTION = 0.6  # of MemTotal: leaves room for the baseline and the rest of the machine


def _proc_kib_field(path: str, field: str) -> int:
    """A "Field:  N kB" line of a /proc file, in bytes."""
    with open(path) as f:
        for line in f:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not found in {path}")


def _mem_total_bytes() -> int:
    return _proc_kib_field("/proc/meminfo", "MemTotal")


def _vm_hwm_bytes() -> int:
    return _proc_kib_field("/proc/self/status", "VmHWM")


def _on_jax(mode: str) -> bool:
    return mode.split(":")[0].endswith("-jax")


def estimated_bytes(mode: str, n: int) -> int | None:
    per_pair = BYTES_PER_PAIR.get(mode)
    return None if per_pair is None else per_pair * n * n


# ----------------------------------------------------------------------------- worker side


def _inputs(n: int, d: int):
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, rng.integers(0, max(2, n // 8), size=n).astype(np.int32)


def _measure(call, repeats: int) -> dict:
    """Times ``call()`` (one step, results on the host): a warm-up call, then ``repeats``."""
    baseline = _vm_hwm_bytes()
    start = time.perf_counter()
    call()  # trace / compile / warm up
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "first_s": first,
        "peak_bytes": _vm_hwm_bytes(),
        "baseline_bytes": baseline,
    }


def _jax_worker(impl: str, n: int, d: int, repeats: int) -> dict:
    import jax
    import keras

    x, labels = _inputs(n, d)
    if impl == "keras-jax":
        loss_obj = keras.losses.Circle(gamma=GAMMA, margin=MARGIN, remove_diagonal=True)
    else:
        import keras_margin

        loss_obj = keras_margin.losses.Circle(
            gamma=GAMMA,
            margin=MARGIN,
            remove_diagonal=True,
            implementation=impl.removesuffix("-jax"),
        )
    step = jax.jit(jax.value_and_grad(lambda x, labels: loss_obj(labels, x)))
    x, labels = jax.numpy.asarray(x), jax.numpy.asarray(labels)
    return _measure(lambda: jax.block_until_ready(step(x, labels)), repeats)


def _worker(mode: str, n: int, d: int, repeats: int) -> dict:
    impl, style = mode.split(":")
    if _on_jax(mode):
        return _jax_worker(impl, n, d, repeats)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    x, labels = _inputs(n, d)
    x, labels = tf.constant(x), tf.constant(labels)

    if impl == "fused-hlo":
        os.environ["KERAS_MARGIN_XLA_BLOCKED_HLO"] = "1"  # read when the lowering compiles
    if impl.endswith("-baseline"):
        os.environ["KERAS_MARGIN_ENGINE_ISA"] = "baseline"  # read at the op's first call
        impl = impl.removesuffix("-baseline")
    if impl == "fused-ref":
        import keras_margin

        ref = tf.constant(_inputs(n // 2, d)[0][::-1].copy())
        ref_labels = labels[: n // 2]

        def step(x):
            with tf.GradientTape() as tape:
                tape.watch([x, ref])
                loss = keras_margin.losses.circle(
                    labels, x, ref_labels, ref, gamma=GAMMA, margin=MARGIN, implementation="fused"
                )
            return loss, tape.gradient(loss, [x, ref])

    elif impl in ("keras", "fused", "fused-hlo"):
        if impl == "keras":
            loss_obj = keras.losses.Circle(gamma=GAMMA, margin=MARGIN, remove_diagonal=True)
        else:
            import keras_margin

            loss_obj = keras_margin.losses.Circle(
                gamma=GAMMA, margin=MARGIN, remove_diagonal=True, implementation="fused"
            )

        def step(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                loss = loss_obj(labels, x)
            return loss, tape.gradient(loss, x)

    elif impl == "matmul":

        def step(x):
            s = tf.matmul(x, x, transpose_b=True)
            return tf.matmul(s, x), tf.matmul(s, x, transpose_a=True)

    else:
        raise ValueError(impl)

    if style != "eager":
        step = tf.function(step, jit_compile=(style == "jit"))

    return _measure(lambda: tf.nest.map_structure(lambda t: t.numpy(), step(x)), repeats)


# ----------------------------------------------------------------------------- driver side


def run_config(
    mode: str, n: int, d: int, repeats: int, timeout: float, checkout: str | None = None
) -> dict:
    """One configuration in a fresh process, importing keras_margin from ``checkout`` (a
    source tree with its op built) instead of the installed package when given."""
    est = estimated_bytes(mode, n)
    if est is not None and est > MEMORY_FRACTION * _mem_total_bytes():
        return {"skipped": f"OOM (est. {est / 2**30:.0f} GiB)"}
    # -P: this file's folder stays off sys.path, where the package's config.py, data.py and
    # metrics.py would shadow any top-level modules of those names.
    cmd = [sys.executable, "-P", __file__, "--worker", mode, str(n), str(d), str(repeats)]
    backend = "jax" if _on_jax(mode) else "tensorflow"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", KERAS_BACKEND=backend)
    if checkout is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [checkout, env.get("PYTHONPATH")]))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"skipped": f"timeout (> {timeout:.0f} s)"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        reason = "killed (out of memory?)" if proc.returncode in (-9, 137) else "error"
        tail = (proc.stderr.strip().splitlines() or [""])[-1][:120]
        return {"skipped": f"{reason}: {tail}" if reason == "error" else reason}
    return json.loads(lines[-1])


def combine_passes(passes: list[dict]) -> dict:
    """One result from a configuration's passes: the median of their medians, the least
    minimum, and the largest peak with its process's baseline."""
    timed = [r for r in passes if "skipped" not in r]
    if len(timed) < len(passes):
        return next(r for r in passes if "skipped" in r)
    peak = max(timed, key=lambda r: r["peak_bytes"])
    return {
        "median_s": statistics.median(r["median_s"] for r in timed),
        "min_s": min(r["min_s"] for r in timed),
        "peak_bytes": peak["peak_bytes"],
        "baseline_bytes": peak["baseline_bytes"],
    }


def _gib(b: float) -> str:
    return f"{b / 2**30:.2f}"


def _row(mode: str, n: int, d: int, r: dict, day: str) -> str:
    impl, style = mode.split(":")
    if "skipped" in r:
        return f"| {n} | {d} | {impl} | {style} | {r['skipped']} | | | {day} |"
    return (
        f"| {n} | {d} | {impl} | {style} | {r['median_s']:.3f} ({r['min_s']:.3f}) "
        f"| {_gib(r['peak_bytes'])} | {_gib(r['baseline_bytes'])} | {day} |"
    )


def _row_key(row: str) -> tuple[int, int, int] | None:
    cells = [c.strip() for c in row.strip().strip("|").split("|")]
    if len(cells) < 4 or not cells[0].isdigit():
        return None
    mode = f"{cells[2]}:{cells[3]}"
    order = ALL_MODES.index(mode) if mode in ALL_MODES else len(ALL_MODES)
    return int(cells[1]), int(cells[0]), order


def _previous_rows(results) -> dict[tuple[int, int, int], str]:
    """Table rows of the current ``## Circle`` section, so that a run for a few
    configurations updates their rows and keeps the others."""
    if not results.RESULTS.exists():
        return {}
    text = results.RESULTS.read_text()
    match = re.search(rf"^## {SECTION}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    rows = {}
    for line in (match.group(1) if match else "").splitlines():
        key = _row_key(line) if line.startswith("| ") else None
        if key is not None:
            # Rows written before the table had a run column.
            rows[key] = line if line.count("|") == 9 else line + " earlier |"
    return rows


def render(rows: list[str], command: str, kept: bool) -> str:
    """The section's text: what was run and how, then ``rows``; ``kept`` says that rows of
    earlier runs are among them."""
    from importlib.metadata import version

    from keras_margin_cli import machine  # not at the top: see this module's docstring

    jax = f"JAX {version('jax')} (CPU)" if _jax_installed() else "no JAX"
    lines = [
        f"Forward + backward of the Circle loss (gamma={GAMMA:g}, margin={MARGIN:g}, "
        "no reference set, unit-norm float32 embeddings, about 8 rows per class), "
        f"{machine.cpu_model()}, {os.cpu_count()} CPUs, {_mem_total_bytes() / 2**30:.0f} GiB RAM, "
        f"TensorFlow {version('tensorflow')}, {jax}. "
        f"Last run ({datetime.date.today().isoformat()}): "
        f"`{command}`{'; rows of earlier runs are kept' if kept else ''}. The machine's speed "
        "varies from day to day, so compare only rows of one run (the `run` column).",
        "",
        "- time: median over the repeats after one warm-up call (which includes tracing and "
        "XLA compilation), and with `--rounds R` the median of R such medians, taken in R "
        "passes over all the configurations; min in parentheses.",
        "- peak RSS: VmHWM of the process that ran only this configuration; the baseline is "
        "its VmHWM after importing the backend and building the inputs.",
        "- `keras`: `keras.losses.Circle`; `fused`: `keras_margin.losses.Circle("
        "implementation='fused')` (without XLA the CPU kernel; under `jit` the op's XLA "
        "lowering, which on the CPU calls the same engine); `fused-hlo`: the same with the "
        "blocked HLO lowering forced, as GPUs and TPUs run it; `fused-ref`: the op against a "
        "reference set of N / 2 other rows; `-baseline`: the op library's own (AVX2) engine "
        "where the CPU would run the AVX-512 build; `matmul`: x @ x^T, dS @ x and "
        "dS^T @ x only; `keras-jax`: `keras.losses.Circle` on Keras's JAX backend, "
        "`composite-jax` and `fused-jax`: `keras_margin.losses.Circle` there with "
        "`implementation='composite'` and `'fused'` (the blocked `lax.scan` path), each "
        "forward+backward in one `jax.jit` function.",
        f"- OOM rows were not run: their estimated peak exceeds {MEMORY_FRACTION:.0%} of the RAM.",
        "",
        "| N | D | implementation | mode | fwd+bwd time (s) | peak RSS (GiB) | baseline (GiB) "
        "| run |",
        "|---:|---:|---|---|---:|---:|---:|---|",
        *rows,
    ]
    return "\n".join(lines) + "\n"


def _write_comparison(label: str, compared: list, command: str, results) -> None:
    """This checkout's and ``label``'s medians side by side, from one interleaved run."""
    rows = []
    for (mode, n, d), mine, theirs in compared:
        impl, style = mode.split(":")
        if "skipped" in mine or "skipped" in theirs:
            rows.append(f"| {n} | {d} | {impl} | {style} | {mine.get('skipped', '')} "
                        f"| {theirs.get('skipped', '')} | |")  # fmt: skip
            continue
        rows.append(
            f"| {n} | {d} | {impl} | {style} | {mine['median_s']:.3f} | {theirs['median_s']:.3f} "
            f"| {theirs['median_s'] / mine['median_s']:.2f} |"
        )
    body = render(rows, command, kept=False).split("\n| N |")[0] + (
        f"\n- `{label}`: the checkout given to `--compare-with`, run in alternation with this "
        f"one; ratio = {label} / this checkout (above 1: this checkout is faster).\n\n"
        f"| N | D | implementation | mode | this checkout (s) | {label} (s) | ratio |\n"
        "|---:|---:|---|---|---:|---:|---:|\n" + "\n".join(rows) + "\n"
    )
    if results is not None:
        results.write_section(f"{SECTION}: this checkout against {label}", body)
    print(body)


def _jax_installed() -> bool:
    return importlib.util.find_spec("jax") is not None


def plan(args) -> tuple[list[tuple[str, int, int]], list[str]]:
    """The configurations (mode, N, D) to run, and a line for each kind it leaves out."""
    sizes = args.n or (QUICK_SIZES if args.quick else FULL_SIZES)
    dims = args.d or (QUICK_DIMS if args.quick else FULL_DIMS)
    modes = args.modes or (QUICK_MODES if args.quick else ALL_MODES)
    notes = []
    if args.quick:
        left = [
            f"{name} {_listed(value for value in full if value not in chosen)}"
            for name, given, full, chosen in [
                ("N =", args.n, FULL_SIZES, sizes),
                ("D =", args.d, FULL_DIMS, dims),
                ("modes", args.modes, ALL_MODES, modes),
            ]
            if not given and set(full) - set(chosen)
        ]
        if left:
            notes.append(f"--quick leaves out {'; '.join(left)}: run without --quick for them")
    if not _jax_installed() and any(map(_on_jax, modes)):
        notes.append(f"left out {_listed(filter(_on_jax, modes))}: jax is not installed")
        modes = [mode for mode in modes if not _on_jax(mode)]
    return [(mode, n, d) for d in dims for n in sizes for mode in modes], notes


def main(argv: list[str], results=None, prog: str | None = None) -> None:
    """Runs the benchmark and prints its table.

    Args:
        argv: The command-line options.
        results: benchmarks/results.py, which writes the table to RESULTS.md (unless
            ``--no-write``); without it, as from an installed package, the table is printed.
        prog: The command's name, for its usage line and the table's heading.
    """
    if argv[:1] == ["--worker"]:
        mode, n, d, repeats = argv[1], int(argv[2]), int(argv[3]), int(argv[4])
        print(json.dumps(_worker(mode, n, d, repeats)), flush=True)
        return

    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=QUICK_HELP)
    parser.add_argument("--n", type=int, nargs="+", help="batch sizes (default 1024..65536)")
    parser.add_argument("--d", type=int, nargs="+", help="embedding sizes (default 128 512)")
    parser.add_argument("--modes", nargs="+", choices=ALL_MODES, help="default: all")
    parser.add_argument("--repeats", type=int, help="timed runs per configuration")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per configuration")
    parser.add_argument(
        "--rounds", type=int, default=1, help="interleaved passes over all configurations"
    )
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument(
        "--compare-with",
        metavar="LABEL=DIR",
        help="also run every configuration with the keras_margin of the checkout DIR (its op "
        "built in place), interleaved with this one, and write the ratios to their own section",
    )
    args = parser.parse_args(argv)
    command = " ".join([prog or "python -m keras_margin_cli.benchmark", *argv])
    if args.no_write:
        results = None
    other = None
    if args.compare_with:
        label, _, directory = args.compare_with.partition("=")
        if not label or not os.path.isdir(os.path.join(directory, "keras_margin")):
            parser.error("--compare-with: expected LABEL=DIR, DIR a checkout of keras_margin")
        other = (label, os.path.abspath(directory))

    configs, notes = plan(args)
    checkouts = [None] + ([other[1]] if other else [])
    total = args.rounds * len(configs) * len(checkouts)
    for note in notes:
        print(note)
    print(f"{total} runs, each in a process of its own:", flush=True)
    passes = {(config, c): [] for config in configs for c in checkouts}
    # Passes interleave the configurations (and the checkouts, in alternating order), so that
    # a slow spell of the machine touches all of them instead of a few (timings here drift by
    # tens of percent within minutes).
    done = 0
    for p in range(args.rounds):
        for mode, n, d in configs:
            for checkout in checkouts if p % 2 == 0 else checkouts[::-1]:
                done += 1
                where = "" if checkout is None else f" [{other[0]}]"
                what = f"pass {p + 1} " if args.rounds > 1 else ""
                print(f"[{done}/{total}] {what}N={n:6d} D={d:4d} {mode:16s}{where} ", end="")
                sys.stdout.flush()  # the line's start shows what is running
                repeats = args.repeats or (QUICK_REPEATS if args.quick or n >= 32768 else 5)
                started = time.perf_counter()
                r = run_config(mode, n, d, repeats, args.timeout, checkout)
                passes[((mode, n, d), checkout)].append(r)
                shown = r.get("skipped") or (
                    f"{r['median_s']:.3f} s, peak {_gib(r['peak_bytes'])} GiB"
                )
                print(f"{shown} ({time.perf_counter() - started:.0f} s)", flush=True)
    measured = [(m, n, d, combine_passes(passes[((m, n, d), None)])) for m, n, d in configs]
    if other:
        compared = [
            (
                config,
                combine_passes(passes[(config, None)]),
                combine_passes(passes[(config, other[1])]),
            )
            for config in configs
        ]
        _write_comparison(other[0], compared, command, results)
        return
    rows = {} if results is None else _previous_rows(results)
    day = datetime.date.today().isoformat()
    for mode, n, d, r in measured:
        rows[(d, n, ALL_MODES.index(mode))] = _row(mode, n, d, r, day)
    text = render([rows[k] for k in sorted(rows)], command, kept=results is not None)
    if results is None:
        print(text)
    else:
        results.write_section(SECTION, text)
        print(f"wrote the '## {SECTION}' section of {results.RESULTS}")


if __name__ == "__main__":
    main(sys.argv[1:])
