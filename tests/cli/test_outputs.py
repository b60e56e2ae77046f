"""``--out`` and ``--overwrite``: nothing that keras-margin did not write is ever deleted."""

import json
import os
import shutil
from pathlib import Path

import pytest

import keras_margin_cli
from keras_margin_cli import experiment, outputs

from . import SMALL_SLICE

ROOT = Path(__file__).parents[2]
CONFIG = str(ROOT / "configs" / "hinge_digits.toml")


def fake_run(folder):
    """A finished output as ``train`` leaves it, without the cost of training."""
    with outputs.staged(folder, overwrite=False) as staging:
        (staging / "metrics.json").write_text("{}")
        (staging / "runs" / "a" / "saved_model").mkdir(parents=True)
        (staging / "runs" / "a" / "saved_model" / "saved_model.pb").write_bytes(b"pb")
    return folder


def snapshot(folder):
    """Every path under ``folder`` with its bytes (None for folders and links)."""
    return {
        path.relative_to(folder).as_posix(): (
            path.read_bytes() if path.is_file() and not path.is_symlink() else None
        )
        for path in sorted(folder.rglob("*"))
    }


@pytest.fixture
def no_training(monkeypatch):
    """Fails the test if a refused command gets as far as training."""

    def train(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(experiment, "train", train)


def refused(capsys, *arguments):
    assert keras_margin_cli.main(["train", CONFIG, *arguments, *SMALL_SLICE]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("keras-margin: error: --out ")
    return error


def test_current_folder_is_refused_with_its_files_intact(
    tmp_path, monkeypatch, capsys, no_training
):
    (tmp_path / "notes.txt").write_text("mine")
    fake_run(tmp_path / "runs" / "old")
    before = snapshot(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert "is the current folder" in refused(capsys, "--out", ".", "--overwrite")
    assert "is the current folder" in refused(capsys, "--out", str(tmp_path), "--overwrite")
    assert snapshot(tmp_path) == before


def test_ancestors_of_the_working_folder_are_refused(tmp_path, monkeypatch, capsys, no_training):
    inner = tmp_path / "project" / "src"
    inner.mkdir(parents=True)
    (inner / "code.py").write_text("print(1)")
    before = snapshot(tmp_path)
    monkeypatch.chdir(inner)
    for out in ("..", "../..", str(tmp_path / "project")):
        assert "one that contains it" in refused(capsys, "--out", out, "--overwrite")
    assert snapshot(tmp_path) == before


def test_a_folder_keras_margin_did_not_write_is_never_replaced(tmp_path, capsys, no_training):
    project = tmp_path / "myproject"
    (project / "data").mkdir(parents=True)
    (project / "data" / "train.csv").write_text("1,2,3")
    before = snapshot(project)
    error = refused(capsys, "--out", str(project), "--overwrite")
    assert f"was not written by `keras-margin train` (it has no {outputs.MARKER})" in error
    assert snapshot(project) == before


def test_a_run_folder_with_files_added_is_not_replaced(tmp_path, capsys, no_training):
    run = fake_run(tmp_path / "run")
    (run / "runs" / "a" / "my_notes.txt").write_text("mine")
    before = snapshot(run)
    error = refused(capsys, "--out", str(run), "--overwrite")
    assert "did not write (runs/a/my_notes.txt)" in error
    assert snapshot(run) == before


def test_a_recorded_folder_replaced_by_a_link_is_not_followed(tmp_path, capsys, no_training):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "keep.txt").write_text("mine")
    run = fake_run(tmp_path / "run")
    (run / "runs" / "a" / "saved_model" / "saved_model.pb").unlink()
    (run / "runs" / "a" / "saved_model").rmdir()
    (run / "runs" / "a" / "saved_model").symlink_to(precious)
    error = refused(capsys, "--out", str(run), "--overwrite")
    assert "a path through a symbolic link (runs/a/saved_model)" in error
    assert (precious / "keep.txt").read_text() == "mine"


def test_a_forged_or_broken_marker_is_not_trusted(tmp_path, capsys, no_training):
    for name, text in [
        ("forged", '{"written_by": "someone", "files": [], "folders": []}'),
        ("broken", "{not json"),
    ]:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "data.bin").write_bytes(b"\x00\x01")
        (folder / outputs.MARKER).write_text(text)
        before = snapshot(folder)
        assert "was not written by" in refused(capsys, "--out", str(folder), "--overwrite")
        assert snapshot(folder) == before


def test_symbolic_links_and_files_are_refused(tmp_path, capsys, no_training):
    target = fake_run(tmp_path / "target")
    (tmp_path / "link").symlink_to(target)
    before = snapshot(target)
    error = refused(capsys, "--out", str(tmp_path / "link"), "--overwrite")
    assert f"is a symbolic link; give the folder it points to ({target})" in error
    assert snapshot(target) == before
    (tmp_path / "file.txt").write_text("mine")
    assert "is a file" in refused(capsys, "--out", str(tmp_path / "file.txt"), "--overwrite")
    assert (tmp_path / "file.txt").read_text() == "mine"


def with_marker(tmp_path, **lists):
    """An --out holding a folder ``sub`` and a marker of ours with ``lists``, beside a victim.

    The marker lists ``sub`` unless told otherwise, so that the folder's contents match it and
    only the listed paths themselves can be the reason for a refusal.
    """
    (tmp_path / "victim.txt").write_text("precious")
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    document = {"written_by": outputs.WRITER, "files": [], "folders": ["sub"], **lists}
    (out / outputs.MARKER).write_text(json.dumps(document))
    return out


@pytest.mark.parametrize(
    "entry, reason",
    [
        ("../victim.txt", "a path with a .. part"),
        ("{tmp_path}/victim.txt", "an absolute path"),
        ("sub/../../victim.txt", "a path with a .. part"),
    ],
    ids=["parent", "absolute", "through a sub-folder"],
)
def test_a_marker_listing_a_path_outside_out_deletes_nothing(
    tmp_path, capsys, no_training, entry, reason
):
    entry = entry.format(tmp_path=tmp_path)
    out = with_marker(tmp_path, files=[entry])
    before = snapshot(tmp_path)
    error = refused(capsys, "--out", str(out), "--overwrite")
    assert f"{outputs.MARKER} lists {json.dumps(entry)}, which is {reason}; nothing" in error
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    "link, target, entry",
    [("link", "victim.txt", "link"), ("up", ".", "up/victim.txt")],
    ids=["the entry", "a folder on the way"],
)
def test_a_marker_listing_a_symbolic_link_deletes_nothing(
    tmp_path, capsys, no_training, link, target, entry
):
    out = with_marker(tmp_path, files=[entry])
    (out / link).symlink_to(tmp_path / target)
    before = snapshot(tmp_path)
    error = refused(capsys, "--out", str(out), "--overwrite")
    assert f"lists {json.dumps(entry)}, which is a path through a symbolic link ({link})" in error
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    "lists, complaint",
    [
        ({"files": "../victim.txt"}, '"files" is a string, not a list'),
        ({"folders": {"../victim.txt": "folder"}}, '"folders" is an object, not a list'),
        ({"files": [["../victim.txt"]]}, 'lists ["../victim.txt"], which is a list, not a path'),
        ({"files": [7]}, "lists 7, which is a number, not a path"),
        ({"files": [""]}, 'lists "", which is not a path to a file or folder'),
        ({"folders": None}, '"folders" is null, not a list'),
    ],
    ids=["string", "object", "nested list", "number", "empty", "null"],
)
def test_a_marker_of_the_wrong_types_deletes_nothing(
    tmp_path, capsys, no_training, lists, complaint
):
    out = with_marker(tmp_path, **lists)
    before = snapshot(tmp_path)
    assert complaint in refused(capsys, "--out", str(out), "--overwrite")
    assert snapshot(tmp_path) == before


def test_a_marker_changed_during_the_run_deletes_nothing(tmp_path):
    (tmp_path / "victim.txt").write_text("precious")
    run = fake_run(tmp_path / "run")
    recorded = json.loads((run / outputs.MARKER).read_text())
    kept = r"lists \"\.\./victim\.txt\".*this run's results are in .*run\.new"
    with pytest.raises(outputs.UnsafeOutputError, match=kept), outputs.staged(run, True) as staging:
        (staging / "new.txt").write_text("new")
        recorded["files"].append("../victim.txt")
        (run / outputs.MARKER).write_text(json.dumps(recorded))
    assert (tmp_path / "victim.txt").read_text() == "precious"
    assert (run / "runs" / "a" / "saved_model" / "saved_model.pb").read_bytes() == b"pb"
    assert sorted(os.listdir(tmp_path)) == ["run", "run.new", "victim.txt"]


def test_a_folder_swapped_for_a_link_after_the_check_is_not_followed(tmp_path, monkeypatch):
    """The last check and the replacement are separate steps; nothing between them can steer it."""
    elsewhere = tmp_path / "elsewhere" / "saved_model"
    elsewhere.mkdir(parents=True)
    (elsewhere / "saved_model.pb").write_bytes(b"mine")
    run = fake_run(tmp_path / "run")
    checked = outputs.check

    def check_then_swap(out, overwrite):
        recorded = checked(out, overwrite)
        shutil.rmtree(out / "runs" / "a")
        (out / "runs" / "a").symlink_to(elsewhere.parent)
        return recorded

    monkeypatch.setattr(outputs, "check", check_then_swap)
    left = r"files added to the old .*run during the run are in .*\.run\.replaced"
    with pytest.raises(outputs.UnsafeOutputError, match=left), outputs.staged(run, True) as staging:
        (staging / "new.txt").write_text("new")
    assert (elsewhere / "saved_model.pb").read_bytes() == b"mine"
    assert (run / "new.txt").read_text() == "new"
    assert snapshot(tmp_path / ".run.replaced") == {"runs": None, "runs/a": None}


def test_an_earlier_run_needs_overwrite(tmp_path, capsys, no_training):
    run = fake_run(tmp_path / "run")
    assert "holds an earlier run; add --overwrite" in refused(capsys, "--out", str(run))


@pytest.mark.parametrize(
    "override, error",
    [
        # found once Keras is imported, by building the loss
        ("loss.gama=80", "--set loss.gama=80: loss.gama: unknown key; expected one of"),
        ("loss.gamma=-5", "--set loss.gamma=-5: loss.gamma: Circle: Argument `gamma`"),
        # found from the config alone
        ("train.epochs=0", "--set train.epochs=0: train.epochs: expected an integer >= 1"),
    ],
)
def test_config_mistakes_come_before_an_earlier_run(override, error, tmp_path, capsys, no_training):
    run = fake_run(tmp_path / "run")
    before = snapshot(run)
    config = str(ROOT / "configs" / "circle_digits.toml")
    assert keras_margin_cli.main(["train", config, "--set", override, "--out", str(run)]) == 2
    printed = capsys.readouterr().err
    assert printed.count("\n") == 1 and printed.startswith(f"keras-margin: error: {error}"), printed
    assert snapshot(run) == before


def test_overwrite_replaces_only_what_the_marker_lists(tmp_path):
    run = fake_run(tmp_path / "run")
    # Recorded paths the user removed are no obstacle, nor is what was under a removed folder.
    (run / "metrics.json").unlink()
    shutil.rmtree(run / "runs" / "a")
    with outputs.staged(run, overwrite=True) as staging:
        (staging / "new.txt").write_text("new")
    assert snapshot(run) == {outputs.MARKER: (run / outputs.MARKER).read_bytes(), "new.txt": b"new"}
    assert json.loads((run / outputs.MARKER).read_text())["files"] == ["new.txt"]
    assert sorted(os.listdir(tmp_path)) == ["run"]


def test_files_added_during_the_run_keep_both_results(tmp_path):
    run = fake_run(tmp_path / "run")
    kept = r"this run's results are in .*run\.new"
    with pytest.raises(outputs.UnsafeOutputError, match=kept), outputs.staged(run, True) as staging:
        (staging / "new.txt").write_text("new")
        (run / "added.txt").write_text("mine")
    assert (run / "added.txt").read_text() == "mine"
    assert (run / "runs" / "a" / "saved_model" / "saved_model.pb").read_bytes() == b"pb"
    assert (tmp_path / "run.new" / "new.txt").read_text() == "new"
    assert sorted(os.listdir(tmp_path)) == ["run", "run.new"]


def test_an_interrupted_run_leaves_no_staging_folder(tmp_path):
    run = fake_run(tmp_path / "run")
    before = snapshot(run)
    with pytest.raises(KeyboardInterrupt), outputs.staged(run, overwrite=True) as staging:
        (staging / "partial.txt").write_text("half")
        raise KeyboardInterrupt
    assert snapshot(run) == before
    assert sorted(os.listdir(tmp_path)) == ["run"]


def test_train_overwrites_its_own_output(tmp_path, capsys):
    out = tmp_path / "out"
    assert keras_margin_cli.main(["train", CONFIG, "--out", str(out), *SMALL_SLICE]) == 0
    recorded = json.loads((out / outputs.MARKER).read_text())
    assert {"metrics.json", "model.keras", "saved_model/saved_model.pb"} <= set(recorded["files"])
    first = json.loads((out / "metrics.json").read_text())
    assert first["runs"][0]["path"] == "."
    (out / "training_curves.png").unlink()
    assert keras_margin_cli.main(["train", CONFIG, "--out", str(out), *SMALL_SLICE]) == 2
    assert "holds an earlier run; add --overwrite" in capsys.readouterr().err
    assert (
        keras_margin_cli.main(["train", CONFIG, "--out", str(out), "--overwrite", *SMALL_SLICE])
        == 0
    )
    assert (out / "training_curves.png").is_file()
    assert json.loads((out / outputs.MARKER).read_text()) == recorded
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_an_unwritable_parent_is_one_clear_error(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("mine")
    unwritable = r"--out .*: cannot create .*file\.txt"
    with (
        pytest.raises(outputs.UnsafeOutputError, match=unwritable),
        outputs.staged(blocker / "out", False),
    ):
        raise AssertionError("staging should not have been created")
    assert blocker.read_text() == "mine"
