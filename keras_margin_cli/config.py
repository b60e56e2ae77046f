"""Experiment configs: TOML files under ``configs/``, validated before anything is trained.

A config has four tables::

    [data]    source, test split, optional label noise, binary grouping and size limit
    [model]   the multilayer perceptron's hidden layers (and embedding size, for Circle)
    [train]   epochs, batch size, learning rate and the seeds to repeat the run over
    [loss]    name = a loss below, plus its constructor arguments; ``[[loss]]`` tables
              compare several losses on the same data, each with an optional ``label``

Every error is a ``ConfigError`` naming the key (``train.epochs``, ``loss[2].q``) and what
was expected; the command line prefixes the file, or the ``--set`` override the key came from,
so the user gets one line to act on.

Checking is in two steps so that most mistakes are reported without importing TensorFlow:
``load`` checks everything a config says about itself (tables, keys, types, ranges, loss
names), and ``check_loss_arguments`` then builds each loss, which imports Keras.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import inspect
import json
import math
import re
import tomllib
from pathlib import Path

SOURCES = {"digits": 10, "mnist": 10, "fashion_mnist": 10}


class ConfigError(ValueError):
    """A config value that cannot be used, with the dotted key it came from.

    ``origin`` is the ``--set`` assignment responsible for it, or None for the file itself.
    """

    def __init__(self, key, message, origin=None):
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key
        self.origin = origin


@dataclasses.dataclass(frozen=True)
class LossKind:
    """How a loss wants its model head and its labels."""

    task: str  # "embedding", "classifier" or "binary"
    labels: str  # "ids", "one_hot" or "sign" (-1 / +1)
    head: str  # "unit_norm", "linear" or "softmax"
    module: str = "keras_margin.losses"  # where the class of that name lives


LOSS_KINDS = {
    "Circle": LossKind("embedding", "ids", "unit_norm"),
    "CategoricalHinge": LossKind("classifier", "one_hot", "linear"),
    "CategoricalGeneralizedCrossEntropy": LossKind("classifier", "ids", "softmax"),
    "CategoricalCrossentropy": LossKind("classifier", "one_hot", "softmax", "keras.losses"),
    "Hinge": LossKind("binary", "sign", "linear"),
    "SquaredHinge": LossKind("binary", "sign", "linear"),
}
# Keys of a loss table that are the config's own; every other key is a constructor argument.
LOSS_TABLE_KEYS = ("name", "label")


def _type_name(value):
    names = {dict: "a table", list: "an array", str: "a string", bool: "a boolean"}
    names.update({int: "an integer", float: "a number"})
    return names.get(type(value), f"a {type(value).__name__}")


def _integer(low, high=None):
    def check(value, key):
        if type(value) is not int or value < low or (high is not None and value > high):
            bound = f"between {low} and {high}" if high is not None else f">= {low}"
            raise ConfigError(key, f"expected an integer {bound}, got {value!r}")
        return value

    return check


def _fraction(low_inclusive):
    def check(value, key):
        ok = type(value) in (int, float) and math.isfinite(value)
        if not ok or not (value >= 0 if low_inclusive else value > 0) or value >= 1:
            interval = "[0, 1)" if low_inclusive else "(0, 1)"
            raise ConfigError(key, f"expected a number in {interval}, got {value!r}")
        return float(value)

    return check


def _positive_number(value, key):
    if type(value) not in (int, float) or not math.isfinite(value) or value <= 0:
        raise ConfigError(key, f"expected a positive number, got {value!r}")
    return float(value)


def _choice(*options):
    def check(value, key):
        if value not in options:
            expected = ", ".join(map(repr, options))
            raise ConfigError(key, f"expected one of {expected}, got {value!r}")
        return value

    return check


def _integers(low, min_length=1, unique=False):
    element = _integer(low)

    def check(value, key):
        if not isinstance(value, list) or len(value) < min_length:
            raise ConfigError(key, f"expected an array of at least {min_length} integers")
        items = tuple(element(item, f"{key}[{i}]") for i, item in enumerate(value))
        if unique and len(set(items)) != len(items):
            raise ConfigError(key, f"expected distinct values, got {value!r}")
        return items

    return check


def _option(check, default=None):
    return dataclasses.field(default=default, metadata={"check": check})


@dataclasses.dataclass(frozen=True)
class DataConfig:
    source: str = _option(_choice(*SOURCES))
    test_fraction: float | None = _option(_fraction(low_inclusive=False))
    test_classes: tuple[int, ...] | None = _option(_integers(0, unique=True))
    positive_classes: tuple[int, ...] | None = _option(_integers(0, unique=True))
    label_noise: float = _option(_fraction(low_inclusive=True), 0.0)
    limit: int | None = _option(_integer(20))


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    hidden_units: tuple[int, ...] = _option(_integers(1, min_length=0), (128,))
    embedding_dim: int = _option(_integer(2), 64)
    dropout: float = _option(_fraction(low_inclusive=True), 0.0)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    epochs: int = _option(_integer(1))
    batch_size: int = _option(_integer(2))
    learning_rate: float = _option(_positive_number, 1e-3)
    seeds: tuple[int, ...] = _option(_integers(0, unique=True), (0,))


@dataclasses.dataclass(frozen=True)
class LossConfig:
    label: str
    name: str
    arguments: dict

    @property
    def kind(self):
        return LOSS_KINDS[self.name]

    @property
    def head(self):
        """The model's output layer: a loss given ``from_logits = true`` takes raw scores."""
        return "linear" if self.arguments.get("from_logits") is True else self.kind.head

    @property
    def loss_class(self):
        """The loss's class; importing it imports Keras and TensorFlow."""
        return getattr(importlib.import_module(self.kind.module), self.name)

    def build(self):
        return self.loss_class(**self.arguments)


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    name: str
    data: DataConfig
    model: ModelConfig
    train: TrainConfig
    losses: tuple[LossConfig, ...]
    raw: dict  # the validated TOML document, written next to the results
    original: dict | None = None  # the file's document, before the overrides
    overrides: tuple[str, ...] = ()

    @property
    def task(self):
        return self.losses[0].kind.task

    @property
    def num_classes(self):
        return 2 if self.task == "binary" else SOURCES[self.data.source]


def _table(cls, raw, key):
    if not isinstance(raw, dict):
        raise ConfigError(key, f"expected a table, got {_type_name(raw)}")
    fields = {field.name: field for field in dataclasses.fields(cls)}
    for name in raw:
        if name not in fields:
            raise ConfigError(f"{key}.{name}", f"unknown key; expected one of {', '.join(fields)}")
    values = {}
    for field in fields.values():
        if field.name in raw:
            values[field.name] = field.metadata["check"](raw[field.name], f"{key}.{field.name}")
        elif field.default is dataclasses.MISSING:
            raise ConfigError(f"{key}.{field.name}", "missing required key")
    return cls(**values)


def _loss(raw, key):
    if not isinstance(raw, dict):
        raise ConfigError(key, f"expected a table, got {_type_name(raw)}")
    arguments = dict(raw)
    name = arguments.pop("name", None)
    label = arguments.pop("label", name)
    if name not in LOSS_KINDS:
        raise ConfigError(f"{key}.name", f"expected one of {', '.join(LOSS_KINDS)}, got {name!r}")
    if not isinstance(label, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", label):
        expected = "letters, digits, '.', '-' or '_'"
        raise ConfigError(f"{key}.label", f"expected {expected}, got {label!r}")
    return LossConfig(label=label, name=name, arguments=arguments)


def _losses(raw):
    if isinstance(raw, dict):
        found = (_loss(raw, "loss"),)
    elif isinstance(raw, list) and raw:
        found = tuple(_loss(item, f"loss[{i}]") for i, item in enumerate(raw))
    else:
        raise ConfigError("loss", "expected a [loss] table or one or more [[loss]] tables")
    labels = [loss.label for loss in found]
    for i, loss in enumerate(found):
        if labels.index(loss.label) != i:
            raise ConfigError(f"loss[{i}].label", f"{loss.label!r} is used twice")
        if loss.kind.task != found[0].kind.task:
            raise ConfigError(
                f"loss[{i}].name",
                f"{loss.name} trains a {loss.kind.task} model but {found[0].name} trains a "
                f"{found[0].kind.task} model; compared losses must share a task",
            )
    return found


def _check_data(data, model_raw, task):
    classes = SOURCES[data.source]
    if (data.test_fraction is None) == (data.test_classes is None):
        raise ConfigError("data", "set exactly one of test_fraction and test_classes")
    for key in ("test_classes", "positive_classes"):
        for value in getattr(data, key) or ():
            if value >= classes:
                raise ConfigError(f"data.{key}", f"{data.source} has classes 0..{classes - 1}")
    if data.test_classes is not None:
        if task != "embedding":
            raise ConfigError("data.test_classes", "held-out classes need an embedding loss")
        if classes - len(data.test_classes) < 2:
            raise ConfigError("data.test_classes", "leave at least 2 classes for training")
    if (data.positive_classes is not None) != (task == "binary"):
        needs = "is required for" if task == "binary" else "only applies to"
        raise ConfigError("data.positive_classes", f"{needs} binary losses (Hinge, SquaredHinge)")
    if data.positive_classes is not None and len(data.positive_classes) >= classes:
        raise ConfigError("data.positive_classes", "leave at least one class negative")
    if "embedding_dim" in model_raw and task != "embedding":
        raise ConfigError("model.embedding_dim", "only applies to embedding losses (Circle)")


def parse(document, name):
    """Validates a parsed TOML document; returns an ``ExperimentConfig``."""
    for key in document:
        if key not in ("data", "model", "train", "loss"):
            raise ConfigError(key, "unknown table; expected data, model, train and loss")
    for key in ("data", "train", "loss"):
        if key not in document:
            raise ConfigError(key, "missing required table")
    found = _losses(document["loss"])
    data = _table(DataConfig, document["data"], "data")
    model_raw = document.get("model", {})
    model = _table(ModelConfig, model_raw, "model")
    train = _table(TrainConfig, document["train"], "train")
    _check_data(data, model_raw, found[0].kind.task)
    return ExperimentConfig(name, data, model, train, found, document)


def _parse_value(text):
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text  # a bare word, such as loss.name=Hinge


def apply_override(document, assignment):
    """Applies one ``--set key=value``; ``key`` is dotted and numbers index ``[[loss]]``."""
    key, sep, text = assignment.partition("=")
    if not sep or not key:
        raise ConfigError(None, "expected key=value, such as train.epochs=5", assignment)
    *parents, leaf = key.split(".")
    node = document
    for depth, part in enumerate(parents):
        where = ".".join(parents[: depth + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(where, f"expected an index below {len(node)}", assignment)
            node = node[int(part)]
        else:
            node = node.setdefault(part, {})
        if not isinstance(node, dict | list):
            raise ConfigError(where, "is a value, not a table", assignment)
    if isinstance(node, list):
        raise ConfigError(key, "name a key inside one [[loss]] table, such as loss.0.q", assignment)
    node[leaf] = _parse_value(text)


def _key_path(key):
    """``loss[2].q`` and ``loss.2.q`` both as ``["loss", "2", "q"]``."""
    return re.findall(r"[^.\[\]]+", key or "")


def _blame(error, config_file_alone, overrides):
    """Attributes ``error`` to a ``--set`` override unless the file alone fails the same way.

    The override blamed is the last one whose key overlaps the key in error, or else the last
    one.
    """
    if error.origin or not overrides:
        return error
    try:
        config_file_alone()
    except ConfigError as own:
        if str(own) == str(error):
            return error
    error.origin = (_overlapping(overrides, error.key) or list(overrides))[-1]
    return error


def _overlapping(overrides, key):
    """The overrides whose key overlaps ``key``: ``loss`` and ``loss.gamma`` overlap."""
    path = _key_path(key)
    return [
        assignment
        for assignment in overrides
        for set_path in [_key_path(assignment.partition("=")[0])]
        if path[: len(set_path)] == set_path[: len(path)]
    ]


def origin(config, key):
    """The ``--set`` assignment that gave ``key`` of a loaded config its value, or None if the
    file did: for an error found only once the value is used, such as a dataset that cannot be
    downloaded."""
    overlapping = _overlapping(config.overrides, key)
    return overlapping[-1] if overlapping else None


def load(path, overrides=()):
    """Reads, overrides and validates a config file; raises ``ConfigError`` naming the key.

    Loss arguments are left to ``check_loss_arguments``, which needs Keras.
    """
    path = Path(path)
    try:
        original = tomllib.loads(path.read_text())
    except OSError as error:
        raise ConfigError(None, f"cannot read the config: {error.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(None, f"not valid TOML: {error}") from None
    document = copy.deepcopy(original)
    for assignment in overrides:
        apply_override(document, assignment)
    try:
        config = parse(document, path.stem)
    except ConfigError as error:
        raise _blame(error, lambda: parse(original, path.stem), overrides) from None
    return dataclasses.replace(config, original=original, overrides=tuple(overrides))


def _loss_key(config, index):
    return "loss" if isinstance(config.raw["loss"], dict) else f"loss[{index}]"


def _check_losses(config):
    for index, loss in enumerate(config.losses):
        key = _loss_key(config, index)
        parameters = inspect.signature(loss.loss_class).parameters.values()
        accepted = [
            p.name
            for p in parameters
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            and p.name not in LOSS_TABLE_KEYS  # a loss's own `name` is Keras's display name
        ]
        for argument in loss.arguments:
            if argument not in accepted:
                expected = ", ".join((*LOSS_TABLE_KEYS, *accepted))
                raise ConfigError(f"{key}.{argument}", f"unknown key; expected one of {expected}")
        try:
            loss.build()
        except (TypeError, ValueError) as error:
            named = re.search(r"`(\w+)`", str(error))  # losses name their argument in backticks
            if named and named[1] in loss.arguments:
                key = f"{key}.{named[1]}"
            raise ConfigError(key, f"{loss.name}: {error}") from None


def check_loss_arguments(config):
    """Builds every loss of a loaded config (importing Keras); raises ``ConfigError``."""
    try:
        _check_losses(config)
    except ConfigError as error:

        def file_alone():
            _check_losses(parse(config.original, config.name))

        raise _blame(error, file_alone, config.overrides) from None


def _toml_value(value):
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def _toml_table(header, table):
    lines = [header]
    lines += [f"{key} = {_toml_value(value)}" for key, value in table.items()]
    return "\n".join(lines) + "\n"


def dumps(config):
    """The config as TOML, with ``--set`` overrides applied; ``load`` reads it back unchanged."""
    raw = config.raw
    parts = [_toml_table(f"[{key}]", raw[key]) for key in ("data", "model", "train") if key in raw]
    if isinstance(raw["loss"], dict):
        parts.append(_toml_table("[loss]", raw["loss"]))
    else:
        parts += [_toml_table("[[loss]]", item) for item in raw["loss"]]
    return "\n".join(parts)
