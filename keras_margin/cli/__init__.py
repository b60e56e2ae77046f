"""The ``keras-margin`` command line (also ``python -m keras_margin``).

keras-margin train CONFIG [--out DIR] [--set key=value ...] [--overwrite]
keras-margin evaluate DIR
keras-margin bench [--quick] [benchmarks/circle.py options]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import keras

from keras_margin.cli import config as configs
from keras_margin.cli import data as datasets
from keras_margin.cli import experiment, plots

METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.toml"
# Metrics are counts over the test set recomputed from identical predictions; any difference
# beyond float64 summation noise means the reloaded model is not the trained one.
REPRODUCTION_TOLERANCE = 1e-9
BENCHMARK_SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "circle.py"


class CommandError(Exception):
    """A problem the user can fix; printed as one line, without a traceback."""


def _write_experiment(config, staging, verbose):
    split = datasets.load(config.data)
    document = {
        "config": config.name,
        "task": config.task,
        "train_examples": len(split.y_train),
        "test_examples": len(split.y_test),
    }
    if config.task == "embedding":
        document["inputs_baseline"] = experiment.measure(config, split, split.x_test)
    runs = experiment.plan(config)
    records, histories = [], {}
    for number, run in enumerate(runs, 1):
        print(f"[{number}/{len(runs)}] {run.id}", flush=True)
        record, history, predictions = experiment.train(
            config, split, run, staging / run.path, verbose
        )
        records.append(record)
        histories[run.id] = history
        if config.task == "embedding":
            plots.embedding_projection(
                predictions,
                split.y_test,
                staging / run.path / "embeddings.png",
                title=f"{config.name}: test embeddings ({run.id})",
                seed=run.seed,
            )
    plots.training_curves(histories, staging / "training_curves.png")
    document["runs"] = records
    document["summary"] = experiment.summarize(config, records)
    (staging / CONFIG_FILE).write_text(configs.dumps(config))
    # Written last: a directory with metrics.json is a finished experiment.
    (staging / METRICS_FILE).write_text(json.dumps(document, indent=2) + "\n")
    return document


def train(args):
    try:
        config = configs.load(args.config, args.set)
    except configs.ConfigError as error:
        raise CommandError(f"{args.config}: {error}") from None
    out = Path(args.out or Path("runs") / config.name)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise CommandError(f"--out {out} already exists and is not empty; add --overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.incomplete-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp's private 0700, made an ordinary directory
    try:
        document = _write_experiment(config, staging, verbose=args.verbose)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except datasets.DatasetUnavailableError as error:
        raise CommandError(f"{args.config}: data.source: {error}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"{config.name}: {document['test_examples']} held-out examples")
    print("\n".join(experiment.format_summary(document)))
    print(f"wrote {out}")


def evaluate(args):
    out = Path(args.dir)
    if not (out / METRICS_FILE).is_file():
        raise CommandError(f"{out}: no {METRICS_FILE}; expected a finished `train` output")
    try:
        config = configs.load(out / CONFIG_FILE)
    except configs.ConfigError as error:
        raise CommandError(f"{out / CONFIG_FILE}: {error}") from None
    recorded = json.loads((out / METRICS_FILE).read_text())
    split = datasets.load(config.data)
    mismatches = 0
    for run in recorded["runs"]:
        model = keras.saving.load_model(out / run["path"] / "model.keras")
        found = experiment.measure(config, split, experiment.predict(model, split))
        for name, value in found.items():
            expected = run["metrics"][name]
            same = abs(value - expected) <= REPRODUCTION_TOLERANCE
            mismatches += not same
            verdict = "reproduced" if same else "MISMATCH"
            print(f"{run['id']}: {name} {value:.6f} (recorded {expected:.6f}) {verdict}")
    if mismatches:
        raise CommandError(f"{mismatches} metric(s) differ from {out / METRICS_FILE}")
    print(f"all metrics in {out / METRICS_FILE} reproduced")


def bench(args):
    if not BENCHMARK_SCRIPT.is_file():
        raise CommandError(
            f"{BENCHMARK_SCRIPT} not found; the benchmark runs from a source checkout "
            "(python -m pip install -e . in a clone of keras_margin)"
        )
    command = [sys.executable, str(BENCHMARK_SCRIPT), "--no-write", *args.script_options]
    return subprocess.call(command + (["--quick"] if args.quick else []))


def parser():
    root = argparse.ArgumentParser(prog="keras-margin", description=__doc__.splitlines()[0])
    commands = root.add_subparsers(dest="command", required=True)
    run = commands.add_parser("train", help="train, evaluate and export the models of a config")
    run.add_argument("config", help="a TOML file, such as configs/circle_digits.toml")
    run.add_argument("--out", help="output directory (default: runs/CONFIG_NAME)")
    run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, such as train.epochs=5 or loss.0.q=0.5",
    )
    run.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    run.add_argument(
        "--verbose", type=int, choices=(0, 1, 2), default=1, help="Keras fit verbosity"
    )
    run.set_defaults(handler=train)
    check = commands.add_parser("evaluate", help="reload a run's models and redo its metrics")
    check.add_argument("dir", help="a directory written by `keras-margin train`")
    check.set_defaults(handler=evaluate)
    speed = commands.add_parser(
        "bench",
        help="time the fused Circle op against Keras",
        epilog="Other options, such as --n 4096 --d 128, go to benchmarks/circle.py.",
    )
    speed.add_argument("--quick", action="store_true", help="two sizes, fewer repeats")
    speed.set_defaults(handler=bench)
    return root


def main(argv=None):
    root = parser()
    args, args.script_options = root.parse_known_args(argv)
    if args.script_options and args.handler is not bench:
        root.error(f"unrecognized arguments: {' '.join(args.script_options)}")
    try:
        return args.handler(args) or 0
    except CommandError as error:
        print(f"keras-margin: error: {error}", file=sys.stderr)
        return 2
