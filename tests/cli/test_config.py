"""Config files: every shipped config is valid, and every kind of mistake names its key."""

import tomllib
from pathlib import Path

import keras
import pytest

from keras_margin_cli import config as configs
from keras_margin_cli import experiment, main

CONFIGS = sorted((Path(__file__).parents[2] / "configs").glob("*.toml"))
GCE_CONFIG = Path(__file__).parents[2] / "configs" / "gce_noisy_digits.toml"
VALID = """
[data]
source = "digits"
test_fraction = 0.3

[train]
epochs = 2
batch_size = 32

[loss]
name = "Circle"
gamma = 64.0
"""


def write(tmp_path, text, name="experiment.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def load_checked(path, overrides=()):
    """Both steps of checking a config: its own values, then its losses' arguments."""
    config = configs.load(path, overrides)
    configs.check_loss_arguments(config)
    return config


def test_configs_directory_has_every_promised_config():
    names = {path.stem for path in CONFIGS}
    assert {"circle_digits", "hinge_digits", "squared_hinge_binary", "gce_noisy_digits"} <= names
    sources = {configs.load(path).data.source for path in CONFIGS}
    assert sources & {"mnist", "fashion_mnist"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_shipped_config_loads_and_round_trips(path, tmp_path):
    config = configs.load(path)
    assert config.name == path.stem
    copy = configs.load(write(tmp_path, configs.dumps(config), path.name))
    assert (copy.data, copy.model, copy.train, copy.losses) == (
        config.data,
        config.model,
        config.train,
        config.losses,
    )


def test_valid_config_fields(tmp_path):
    config = configs.load(write(tmp_path, VALID))
    assert config.task == "embedding"
    assert config.data.test_fraction == 0.3
    assert config.model.hidden_units == (128,)
    assert config.train.seeds == (0,)
    (loss,) = config.losses
    assert (loss.label, loss.name, loss.arguments) == ("Circle", "Circle", {"gamma": 64.0})
    assert loss.build().get_config()["gamma"] == 64.0


def test_gce_config_compares_two_losses_over_three_seeds():
    config = configs.load(GCE_CONFIG)
    assert [loss.name for loss in config.losses] == [
        "CategoricalCrossentropy",
        "CategoricalGeneralizedCrossEntropy",
    ]
    assert config.losses[1].arguments == {"q": 0.7}
    assert config.data.label_noise == 0.4
    assert len(config.train.seeds) >= 3


@pytest.mark.parametrize(
    "assignment, key, expected",
    [
        ("train.epochs=7", ("train", "epochs"), 7),
        ("train.learning_rate=3e-4", ("train", "learning_rate"), 3e-4),
        ("model.hidden_units=[32, 16]", ("model", "hidden_units"), [32, 16]),
        ("loss.margin=0.1", ("loss", "margin"), 0.1),
        ("data.source=mnist", ("data", "source"), "mnist"),
        ("data.limit=300", ("data", "limit"), 300),
    ],
)
def test_set_overrides_parse_toml_values(assignment, key, expected, tmp_path):
    document = tomllib.loads(VALID)
    configs.apply_override(document, assignment)
    assert document[key[0]][key[1]] == expected


def test_gce_from_logits_in_a_config_trains_a_linear_head(tmp_path):
    config = configs.load(GCE_CONFIG, ["loss.1.from_logits=true"])
    ce, gce = config.losses
    assert gce.build().get_config()["from_logits"] is True
    assert (ce.head, gce.head) == ("softmax", "linear")
    model = experiment.build_model(config, 64, gce)
    assert model.layers[-1].activation is keras.activations.linear
    with pytest.raises(configs.ConfigError, match="from_logits"):
        load_checked(GCE_CONFIG, ["loss.1.from_logits=1"])


def test_set_indexes_loss_arrays(tmp_path):
    config = configs.load(GCE_CONFIG, ["loss.1.q=0.4", "train.seeds=[5]"])
    assert config.losses[1].arguments == {"q": 0.4}
    assert config.train.seeds == (5,)


# (replacement text or --set override, the key the error must name, words it must contain)
BAD = [
    ('source = "digits"', "data.source", "expected one of 'digits'", '"digitz"'),
    ("test_fraction = 0.3", "data.test_fraction", "in (0, 1)", 1.5),
    ("test_fraction = 0.3", "data.test_fraction", "in (0, 1)", '"0.3"'),
    ("epochs = 2", "train.epochs", "integer >= 1", 0),
    ("epochs = 2", "train.epochs", "integer >= 1", 2.5),
    ("epochs = 2", "train.epochs", "integer >= 1", "true"),
    ("batch_size = 32", "train.batch_size", "integer >= 2", -3),
    ("gamma = 64.0", "loss.gamma", "Circle: Argument `gamma`", '"inf"'),
    ("gamma = 64.0", "loss.gamma", "Circle: Argument `gamma`", "nan"),
    ("gamma = 64.0", "loss.gamma", "Circle: Argument `gamma`", -1.0),
    ('name = "Circle"', "loss.name", "expected one of 'Circle'", '"Triplet"'),
]


@pytest.mark.parametrize("line, key, words, value", BAD, ids=lambda v: str(v))
def test_bad_values_name_their_key(line, key, words, value, tmp_path):
    text = VALID.replace(line, f"{line.split(' = ')[0]} = {value}")
    with pytest.raises(configs.ConfigError) as caught:
        load_checked(write(tmp_path, text))
    message = str(caught.value)
    assert message.startswith(f"{key}:"), message
    assert words.split("'")[0] in message
    assert caught.value.origin is None


@pytest.mark.parametrize(
    "override, key, words",
    [
        ("data.colour=1", "data.colour", "unknown key; expected one of source"),
        ("optimizer.name=sgd", "optimizer", "unknown table"),
        ("data.test_classes=[7, 8]", "data", "exactly one of test_fraction and test_classes"),
        ("data.positive_classes=[1]", "data.positive_classes", "only applies to binary"),
        ("model.embedding_dim=1", "model.embedding_dim", "integer >= 2"),
        ("model.hidden_units=[0]", "model.hidden_units[0]", "integer >= 1"),
        ("train.seeds=[1, 1]", "train.seeds", "distinct"),
        ("data.label_noise=1.0", "data.label_noise", "in [0, 1)"),
        ("data.limit=5", "data.limit", "integer >= 20"),
        ("loss.label=a/b", "loss.label", "letters, digits"),
        ("loss.colour=1", "loss.colour", "unknown key; expected one of name, label, gamma, "),
        ("loss.implementation=gpu", "loss.implementation", "must be one of ('auto'"),
        ("train=3", "train", "expected a table, got an integer"),
    ],
)
def test_bad_structure_names_its_key(override, key, words, tmp_path):
    with pytest.raises(configs.ConfigError) as caught:
        load_checked(write(tmp_path, VALID), [override])
    message = str(caught.value)
    assert message.startswith(f"{key}:"), message
    assert words in message
    assert caught.value.origin == override


def test_cross_field_errors(tmp_path):
    binary = VALID.replace('name = "Circle"\ngamma = 64.0', 'name = "Hinge"')
    with pytest.raises(configs.ConfigError, match=r"^data.positive_classes: is required"):
        configs.load(write(tmp_path, binary))
    with pytest.raises(configs.ConfigError, match=r"^data.positive_classes: digits has classes"):
        configs.load(write(tmp_path, binary), ["data.positive_classes=[3, 12]"])
    mixed = VALID + "\n[[extra]]\n"
    with pytest.raises(configs.ConfigError, match=r"^extra: unknown table"):
        configs.load(write(tmp_path, mixed))
    two = VALID.replace("[loss]", "[[loss]]") + '\n[[loss]]\nname = "CategoricalHinge"\n'
    with pytest.raises(configs.ConfigError, match=r"^loss\[1\].name: CategoricalHinge trains a"):
        configs.load(write(tmp_path, two))
    twice = VALID.replace("[loss]", "[[loss]]") + '\n[[loss]]\nname = "Circle"\n'
    with pytest.raises(configs.ConfigError, match=r"^loss\[1\].label: 'Circle' is used twice"):
        configs.load(write(tmp_path, twice))
    held_out = VALID.replace("test_fraction = 0.3", "test_classes = [1, 2, 3, 4, 5, 6, 7, 8, 9]")
    with pytest.raises(configs.ConfigError, match=r"^data.test_classes: leave at least 2"):
        configs.load(write(tmp_path, held_out))
    classifier = VALID.replace('name = "Circle"\ngamma = 64.0', 'name = "CategoricalHinge"')
    with pytest.raises(configs.ConfigError, match=r"^model.embedding_dim: only applies"):
        configs.load(write(tmp_path, classifier), ["model.embedding_dim=8"])


@pytest.mark.parametrize(
    "path, override, words",
    [
        (None, "epochs", "expected key=value"),
        (None, "data.source.x=1", "data.source: is a value, not a table"),
        (GCE_CONFIG, "loss.q=0.5", "loss.q: name a key inside one"),
        (GCE_CONFIG, "loss.5.q=0.5", "loss.5: expected an index below 2"),
    ],
)
def test_bad_set_syntax(path, override, words, tmp_path):
    with pytest.raises(configs.ConfigError) as caught:
        configs.load(path or write(tmp_path, VALID), [override])
    assert str(caught.value).startswith(words)
    assert caught.value.origin == override


def test_syntax_error_and_missing_file(tmp_path):
    with pytest.raises(configs.ConfigError, match="not valid TOML"):
        configs.load(write(tmp_path, "[data\nsource = 1"))
    with pytest.raises(configs.ConfigError, match="cannot read the config"):
        configs.load(tmp_path / "absent.toml")


def test_command_line_prints_one_line_with_file_and_key(tmp_path, capsys):
    path = write(tmp_path, VALID.replace("epochs = 2", "epochs = -2"))
    assert main(["train", str(path), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip()
    assert error == f"keras-margin: error: {path}: train.epochs: expected an integer >= 1, got -2"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "text, overrides, blamed, message",
    [
        # the override's own mistake, in a loss argument (checked once Keras is imported)
        (VALID, ["loss.gama=80"], "--set loss.gama=80", "loss.gama: unknown key; expected one of"),
        (VALID, ["loss.gamma=-5"], "--set loss.gamma=-5", "loss.gamma: Circle: Argument `gamma`"),
        (VALID, ["data.limit=300", "train.epochs=0"], "--set train.epochs=0", "train.epochs:"),
        # an override that makes the file's own keys wrong
        (VALID, ["loss.name=CategoricalHinge"], "--set loss.name=CategoricalHinge", "loss.gamma"),
        # the file's mistakes stay the file's, whatever else is overridden
        (VALID.replace("epochs = 2", "epochs = -2"), ["data.limit=300"], "FILE", "train.epochs:"),
        (VALID.replace("gamma = 64.0", "gama = 6"), ["loss.margin=0.3"], "FILE", "loss.gama:"),
        (VALID + "test_classes = [1]\n", ["data.limit=300"], "FILE", "loss.test_classes:"),
    ],
)
def test_errors_are_blamed_on_the_override_or_the_file(
    text, overrides, blamed, message, tmp_path, capsys
):
    path = write(tmp_path, text)
    command = ["train", str(path), "--out", str(tmp_path / "out")]
    for assignment in overrides:
        command += ["--set", assignment]
    assert main(command) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error
    expected = str(path) if blamed == "FILE" else blamed
    assert error.startswith(f"keras-margin: error: {expected}: {message}"), error


@pytest.mark.parametrize(
    "source_line, overrides, blamed",
    [
        ('source = "digits"', ["data.source=mnist"], "--set data.source=mnist"),
        ('source = "digits"', ["data.limit=300", "data.source=mnist"], "--set data.source=mnist"),
        ('source = "mnist"', ["train.epochs=1"], "FILE"),
    ],
)
def test_a_dataset_that_cannot_load_is_blamed_on_what_chose_it(
    source_line, overrides, blamed, tmp_path, monkeypatch, capsys
):
    def offline():
        raise Exception("URL fetch failure: no network")  # what keras.utils.get_file raises

    monkeypatch.setattr(keras.datasets.mnist, "load_data", offline)
    path = write(tmp_path, VALID.replace('source = "digits"', source_line))
    command = ["train", str(path), "--out", str(tmp_path / "out")]
    for assignment in overrides:
        command += ["--set", assignment]
    assert main(command) == 2
    error = capsys.readouterr().err.strip()
    expected = str(path) if blamed == "FILE" else blamed
    assert error == (
        f"keras-margin: error: {expected}: data.source: keras.datasets.mnist could not be loaded "
        "(URL fetch failure: no network); it downloads on first use into ~/.keras/datasets (or "
        "$KERAS_HOME/datasets), so check the network or that folder"
    )
    assert not (tmp_path / "out").exists()
