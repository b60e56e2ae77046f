"""The ``keras-margin`` command line (also ``python -m keras_margin_cli``).

keras-margin train CONFIG [--out DIR] [--set key=value ...] [--overwrite] [--quiet | --verbose]
keras-margin evaluate DIR [--verbose]
keras-margin bench [--quick] [keras_margin_cli.benchmark options]

This package is separate from ``keras_margin`` because importing that one imports Keras and
TensorFlow (it registers the losses): here they are imported only once a command needs them,
so ``--help``, ``--version`` and most config errors answer at once.
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib import metadata
from pathlib import Path

from keras_margin_cli import config as configs
from keras_margin_cli import finished, outputs, tensorflow_logs
from keras_margin_cli.finished import CONFIG_FILE, METRICS_FILE

# Metrics are counts over the test set recomputed from identical predictions; any difference
# beyond float64 summation noise means the reloaded model is not the trained one.
REPRODUCTION_TOLERANCE = 1e-9
INTERRUPTED = 130  # the shell's code for a command stopped by SIGINT


class CommandError(Exception):
    """A problem the user can fix; printed as one line, without a traceback."""


def _config_error(error, path):
    source = f"--set {error.origin}" if error.origin else path
    return CommandError(f"{source}: {error}")


def _data_error(error, config, path):
    """A dataset that cannot be loaded, blamed on the ``--set`` override that chose it, if any."""
    key = "data.source"
    return _config_error(configs.ConfigError(key, error, configs.origin(config, key)), path)


def _write_experiment(config, staging, progress):
    from keras_margin_cli import data as datasets
    from keras_margin_cli import experiment, plots

    split = datasets.load(config.data)
    document = {
        "config": config.name,
        "task": config.task,
        "train_examples": len(split.y_train),
        "test_examples": len(split.y_test),
        "environment": experiment.environment(),
    }
    if config.task == "embedding":
        document["inputs_baseline"] = experiment.measure(config, split, split.x_test)
    runs = experiment.plan(config)
    records, curves = [], []
    for number, run in enumerate(runs, 1):
        print(f"[{number}/{len(runs)}] {run.id}", flush=True)
        record, predictions = experiment.train(config, split, run, staging / run.path, progress)
        records.append(record)
        curves.append((run.loss.label, record["history"]))
        if config.task == "embedding":
            plots.embedding_projection(
                predictions,
                split.y_test,
                staging / run.path / "embeddings.png",
                title=f"{config.name}: test embeddings ({run.id})",
                seed=run.seed,
            )
    plots.training_curves(curves, staging / "training_curves.png", config.data.label_noise > 0)
    document["runs"] = records
    document["summary"] = experiment.summarize(config, records)
    (staging / CONFIG_FILE).write_text(configs.dumps(config))
    # Written last: a folder with metrics.json is a finished experiment.
    (staging / METRICS_FILE).write_text(json.dumps(document, indent=2) + "\n")
    return document


def _progress(args):
    """Keras's ``fit`` verbosity: a progress bar on a terminal, a line per epoch in a log."""
    if args.quiet:
        return 0
    return 1 if sys.stdout.isatty() else 2


def train(args):
    try:
        config = configs.load(args.config, args.set)
    except configs.ConfigError as error:
        raise _config_error(error, args.config) from None
    tensorflow_logs.import_tensorflow(args.verbose)
    from keras_margin_cli import data as datasets
    from keras_margin_cli import experiment

    # The config and its overrides are checked in full before the output folder: a typo
    # reported behind an earlier run's folder would send the user to fix the wrong thing.
    try:
        configs.check_loss_arguments(config)
    except configs.ConfigError as error:
        raise _config_error(error, args.config) from None
    out = Path(args.out or Path("runs") / config.name)
    try:
        outputs.check(out, args.overwrite)
    except outputs.UnsafeOutputError as error:
        raise CommandError(error) from None
    try:
        with outputs.staged(out, args.overwrite) as staging:
            document = _write_experiment(config, staging, _progress(args))
    except outputs.UnsafeOutputError as error:
        raise CommandError(error) from None
    except datasets.DatasetUnavailableError as error:
        raise _data_error(error, config, args.config) from None
    print(f"{config.name}: {document['test_examples']} held-out examples")
    print("\n".join(experiment.format_summary(document)))
    print(f"wrote {out}")


def _plural(count, noun):
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _one_line(error):
    return " ".join(f"{type(error).__name__}: {error}".split())


def evaluate(args):
    out = Path(args.dir)
    try:
        runs = finished.runs(out)
        config_file = finished.member(out, CONFIG_FILE)
    except finished.FinishedOutputError as error:
        raise CommandError(error) from None
    try:
        config = configs.load(config_file)
    except configs.ConfigError as error:
        raise _config_error(error, config_file) from None
    tensorflow_logs.import_tensorflow(args.verbose)
    import keras

    from keras_margin_cli import data as datasets
    from keras_margin_cli import experiment

    try:
        split = datasets.load(config.data)
    except datasets.DatasetUnavailableError as error:
        raise _data_error(error, config, config_file) from None
    compared = mismatches = 0
    for run in runs:
        # Anything a model file from elsewhere can make Keras raise is a fault of that file;
        # load_model keeps its safe_mode, so no code in the file runs.
        try:
            model = keras.saving.load_model(run.model)
        except Exception as error:
            raise CommandError(f"{run.model}: cannot be loaded: {_one_line(error)}") from None
        try:
            predictions = experiment.predict(model, split)
        except Exception as error:
            raise CommandError(
                f"{run.model}: cannot predict the test set of {config_file}: {_one_line(error)}"
            ) from None
        found = experiment.measure(config, split, predictions)
        if sorted(found) != sorted(run.metrics):
            raise CommandError(
                f"{run.where} records metrics {', '.join(sorted(run.metrics))}; "
                f"{config_file} measures {', '.join(sorted(found))}"
            )
        for name, value in found.items():
            expected = run.metrics[name]
            same = abs(value - expected) <= REPRODUCTION_TOLERANCE
            compared += 1
            mismatches += not same
            verdict = "reproduced" if same else "MISMATCH"
            print(f"{run.id}: {name} {value:.6f} (recorded {expected:.6f}) {verdict}")
    counted = f"{_plural(compared, 'metric')} of {_plural(len(runs), 'run')} compared"
    if mismatches:
        raise CommandError(f"{mismatches} metric(s) differ from {out / METRICS_FILE} ({counted})")
    print(f"all metrics in {out / METRICS_FILE} reproduced ({counted})")


def bench(args):
    from keras_margin_cli import benchmark

    options = [*args.script_options, *(["--quick"] if args.quick else [])]
    benchmark.main(options, prog="keras-margin bench")


def _version():
    found = []
    for package in ("keras-margin", "keras", "tensorflow"):
        try:
            found.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            found.append(f"{package} not installed")
    return f"{found[0]} ({', '.join(found[1:])})"


def parser():
    # Imported here, not with the package: `python -m keras_margin_cli.benchmark` would
    # otherwise find the module imported before it runs.
    from keras_margin_cli import benchmark

    root = argparse.ArgumentParser(
        prog="keras-margin",
        description="Train, evaluate and benchmark keras_margin's losses (also run as "
        "python -m keras_margin_cli).",
    )
    root.add_argument("--version", action="version", version=_version())
    commands = root.add_subparsers(dest="command", required=True)
    logs = argparse.ArgumentParser(add_help=False)
    logs.add_argument(
        "--verbose",
        action="store_true",
        help="show TensorFlow's log lines and warnings (also shown if TF_CPP_MIN_LOG_LEVEL is set)",
    )
    run = commands.add_parser(
        "train", parents=[logs], help="train, evaluate and export the models of a config"
    )
    run.add_argument("config", help="a TOML file, such as configs/circle_digits.toml")
    run.add_argument("--out", help="output folder (default: runs/CONFIG_NAME)")
    run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, such as train.epochs=5 or loss.0.q=0.5",
    )
    run.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an --out that an earlier `keras-margin train` wrote",
    )
    run.add_argument("--quiet", action="store_true", help="no per-epoch progress from Keras")
    run.set_defaults(handler=train)
    check = commands.add_parser(
        "evaluate",
        parents=[logs],
        help="reload a run's models and check that they reproduce its metrics.json",
    )
    check.add_argument("dir", help="a folder written by `keras-margin train`")
    check.set_defaults(handler=evaluate)
    speed = commands.add_parser(
        "bench",
        help="time the fused Circle op against Keras",
        epilog="Other options, such as --n 4096 --d 128, go to the benchmark; "
        "python -m keras_margin_cli.benchmark --help lists them.",
    )
    speed.add_argument("--quick", action="store_true", help=benchmark.QUICK_HELP)
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
    except KeyboardInterrupt:
        print(f"keras-margin: interrupted; {args.command} stopped", file=sys.stderr)
        return INTERRUPTED
