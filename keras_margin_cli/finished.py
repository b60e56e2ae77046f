"""A finished ``train`` output as ``evaluate`` reads it: untrusted input, checked up front.

The folder may come from anyone, so before Keras loads anything its ``metrics.json`` must list
at least one run, each with numeric metrics and a ``model.keras`` archive inside the folder.
Everything wrong is one ``FinishedOutputError`` naming the file and the entry.
"""

from __future__ import annotations

import dataclasses
import json
import zipfile
from pathlib import Path, PurePosixPath

from keras_margin_cli import untrusted

METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.toml"
MODEL_FILE = "model.keras"
EXPECTED = "expected a finished `train` output"


class FinishedOutputError(Exception):
    """An output that ``evaluate`` cannot check; the message names what is wrong and where."""


@dataclasses.dataclass(frozen=True)
class RecordedRun:
    where: str  # how errors name it: "DIR/metrics.json: runs[0]"
    id: str
    model: Path  # a zip archive inside the output folder
    metrics: dict  # metric name -> the number train recorded


def member(folder, name):
    """``folder``'s own file ``name``: present, and not reached through a symbolic link."""
    try:
        path = untrusted.inside(folder, name)
    except untrusted.OutsidePathError as error:
        raise FinishedOutputError(
            f"{folder / name} is refused: {error}; evaluate reads only files inside {folder}"
        ) from None
    if path is None or not path.is_file():
        raise FinishedOutputError(f"{folder}: no {name}; {EXPECTED}")
    return path


def _field(run, where, key, kind):
    if key not in run:
        raise FinishedOutputError(f'{where} has no "{key}"')
    value = run[key]
    if not isinstance(value, kind):
        found, expected = untrusted.json_type(value), untrusted.json_type(kind())
        raise FinishedOutputError(f'{where}: "{key}" is {found}, not {expected}')
    return value


def _run(folder, where, run):
    if not isinstance(run, dict):
        raise FinishedOutputError(f"{where} is {untrusted.json_type(run)}, not an object")
    run_id = _field(run, where, "id", str)
    path = _field(run, where, "path", str)
    metrics = _field(run, where, "metrics", dict)
    if not metrics:
        raise FinishedOutputError(f"{where} records no metrics")
    for name, value in metrics.items():
        if type(value) not in (int, float):  # bool is an int, but no metric
            raise FinishedOutputError(
                f"{where}: metric {name} is {untrusted.json_type(value)}, not a number"
            )
    entry = PurePosixPath(path, MODEL_FILE).as_posix()
    try:
        model = untrusted.inside(folder, entry)
    except untrusted.OutsidePathError as error:
        raise FinishedOutputError(
            f'{where}: "path" {json.dumps(path)} is refused: {entry} is {error}; evaluate '
            f"reads only files inside {folder}"
        ) from None
    if model is None:
        raise FinishedOutputError(f"{where}: {folder / entry} does not exist")
    if not zipfile.is_zipfile(model):
        raise FinishedOutputError(
            f"{where}: {model} is not a Keras model (a .keras file is a zip archive)"
        )
    return RecordedRun(where, run_id, model, metrics)


def runs(folder):
    """The runs that ``folder/metrics.json`` records, each checked as described above."""
    metrics_file = member(folder, METRICS_FILE)
    try:
        document = json.loads(metrics_file.read_text())
    except ValueError as error:  # bad JSON, or bytes that are no UTF-8 text
        raise FinishedOutputError(f"{metrics_file}: not valid JSON ({error})") from None
    if not isinstance(document, dict) or "runs" not in document:
        raise FinishedOutputError(f'{metrics_file}: no "runs" list; {EXPECTED}')
    listed = document["runs"]
    if not isinstance(listed, list):
        raise FinishedOutputError(
            f'{metrics_file}: "runs" is {untrusted.json_type(listed)}, not a list'
        )
    if not listed:
        raise FinishedOutputError(f"{metrics_file}: records no runs; there is nothing to compare")
    return [_run(folder, f"{metrics_file}: runs[{i}]", run) for i, run in enumerate(listed)]
