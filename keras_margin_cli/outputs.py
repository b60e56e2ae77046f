"""The ``--out`` folder of ``train``: staged, moved into place, and replaced only if ours.

A run is written into a hidden staging folder beside ``--out`` and renamed into place at the
end, so an interrupted or failed run never leaves a folder that looks finished. A finished
folder holds ``MARKER``, the list of every file and folder the run wrote. ``--overwrite``
replaces a folder only when the marker accounts for everything in it, and removes only what
the marker lists: a folder keras-margin did not write, or files a user added to one, are never
deleted. The marker itself is not trusted either: a folder whose marker lists a path that could
leave it (absolute, with a ``..`` part, through a symbolic link) is not replaced at all.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import stat
import tempfile
from pathlib import Path

from keras_margin_cli import untrusted

MARKER = ".keras-margin-run.json"
WRITER = "keras-margin train"
SHOWN_UNEXPECTED = 3  # how many unexpected entries an error names
_FOLDER_NO_LINK = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW


class UnsafeOutputError(Exception):
    """An ``--out`` that ``train`` must not write to or replace; the message says why."""


def _contents(folder):
    """``{relative path: "file" | "folder" | "other"}`` for everything under ``folder``.

    Symbolic links are "other" and are not followed.
    """
    found = {}
    for parent, folders, files in os.walk(folder):
        for name in folders + files:
            path = Path(parent, name)
            mode = path.lstat().st_mode
            kind = "folder" if stat.S_ISDIR(mode) else "file" if stat.S_ISREG(mode) else "other"
            found[path.relative_to(folder).as_posix()] = kind
    return found


def _recorded(folder):
    """What the marker in ``folder`` says the run wrote, or None without a marker of ours.

    Returns ``{relative path: "file" | "folder"}`` for the listed paths that still exist; an
    entry the user has since deleted is skipped. Raises ``UnsafeOutputError`` naming the first
    entry that is not a plain path inside ``folder``, since a marker can be edited or come
    from someone else.
    """
    marker = folder / MARKER
    if not marker.is_file() or marker.is_symlink():
        return None
    try:
        document = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(document, dict) or document.get("written_by") != WRITER:
        return None
    refused = f"--out {folder}: its {MARKER}"
    advice = "nothing was deleted; check the folder yourself or give another --out"
    recorded = {}
    for kind in ("file", "folder"):
        key = f"{kind}s"
        if key not in document:
            raise UnsafeOutputError(f'{refused} has no "{key}" list; {advice}')
        entries = document[key]
        if not isinstance(entries, list):
            found = untrusted.json_type(entries)
            raise UnsafeOutputError(f'{refused}: "{key}" is {found}, not a list; {advice}')
        for entry in entries:
            try:
                path = untrusted.inside(folder, entry)
            except untrusted.OutsidePathError as error:
                raise UnsafeOutputError(
                    f"{refused} lists {json.dumps(entry)}, which is {error}; {advice}"
                ) from None
            if path is not None:
                recorded[path.relative_to(folder).as_posix()] = kind
    return recorded


def check(out, overwrite):
    """Raises ``UnsafeOutputError`` unless ``train`` may write its results to ``out``.

    Returns what the marker of an earlier run in ``out`` lists, checked: the only paths that
    replacing it may delete.
    """
    if out.is_symlink():
        raise UnsafeOutputError(
            f"--out {out} is a symbolic link; give the folder it points to "
            f"({out.resolve()}) or a new path"
        )
    here = Path.cwd().resolve()
    if out.resolve() == here or out.resolve() in here.parents:
        raise UnsafeOutputError(
            f"--out {out} is the current folder or one that contains it; "
            "give a new folder, such as runs/NAME"
        )
    if not out.exists():
        return {}
    if not out.is_dir():
        raise UnsafeOutputError(f"--out {out} is a file, not a folder")
    found = _contents(out)
    if not found:
        return {}
    recorded = _recorded(out)
    if recorded is None:
        raise UnsafeOutputError(
            f"--out {out} is not empty and was not written by `{WRITER}` (it has no "
            f"{MARKER}); --overwrite only replaces earlier keras-margin outputs, so give "
            "another --out"
        )
    recorded[MARKER] = "file"
    unexpected = sorted(path for path, kind in found.items() if recorded.get(path) != kind)
    if unexpected:
        shown = ", ".join(unexpected[:SHOWN_UNEXPECTED])
        more = len(unexpected) - SHOWN_UNEXPECTED
        shown += f" and {more} more" if more > 0 else ""
        raise UnsafeOutputError(
            f"--out {out} holds files that `{WRITER}` did not write ({shown}); move them "
            "away or give another --out"
        )
    if not overwrite:
        raise UnsafeOutputError(f"--out {out} holds an earlier run; add --overwrite to replace it")
    return recorded


def mark(folder):
    """Writes the marker listing everything in ``folder``; call it when the run is complete."""
    found = _contents(folder)
    document = {
        "written_by": WRITER,
        "files": sorted(path for path, kind in found.items() if kind == "file"),
        "folders": sorted(path for path, kind in found.items() if kind == "folder"),
    }
    (folder / MARKER).write_text(json.dumps(document, indent=1) + "\n")


@contextlib.contextmanager
def _interrupts_deferred():
    """Holds Ctrl-C until the block ends, so that a replacement is never left half done."""
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def _open_folder(parent, names):
    """A descriptor of the folder ``names`` leads to from the descriptor ``parent``.

    Each step is opened without following a symbolic link, so that a folder swapped for one
    fails the step (``OSError``) instead of leading elsewhere.
    """
    descriptor = os.dup(parent)
    for name in names:
        try:
            child = os.open(name, _FOLDER_NO_LINK, dir_fd=descriptor)
        finally:
            os.close(descriptor)
        descriptor = child
    return descriptor


def _remove_recorded(folder, recorded):
    """Deletes ``recorded`` (from ``check``) and the marker; ``folder`` too if that empties it.

    The paths were checked on the folder before it was moved here, but it may have changed
    since: every step goes through descriptors that never follow a link. Returns whether
    ``folder`` is gone.
    """
    try:
        root = os.open(folder, _FOLDER_NO_LINK)
    except OSError:
        return False
    try:
        for path in sorted([*recorded, MARKER], key=lambda p: p.count("/"), reverse=True):
            *parents, name = path.split("/")
            with contextlib.suppress(OSError):
                parent = _open_folder(root, parents)
                try:
                    if recorded.get(path) == "folder":
                        os.rmdir(name, dir_fd=parent)  # only once empty: an unlisted file stays
                    elif stat.S_ISREG(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode):
                        os.unlink(name, dir_fd=parent)
                finally:
                    os.close(parent)
    finally:
        os.close(root)
    with contextlib.suppress(OSError):
        folder.rmdir()
    return not os.path.lexists(folder)


def _unused_sibling(out, suffix, hidden=False):
    name = f".{out.name}.{suffix}" if hidden else f"{out.name}.{suffix}"
    for number in range(1, 1000):
        candidate = out.with_name(name if number == 1 else f"{name}{number}")
        if not os.path.lexists(candidate):
            return candidate
    raise UnsafeOutputError(f"no free name beside {out} for {name}")


@contextlib.contextmanager
def staged(out, overwrite):
    """Yields a staging folder; on success it becomes ``out``, else it is removed.

    ``out`` is checked again just before it is replaced, in case it changed during training;
    if it can no longer be replaced, the results are kept beside it under a new name.
    """
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.incomplete-", dir=out.parent))
    except OSError as error:
        raise UnsafeOutputError(
            f"--out {out}: cannot create {error.filename}: {error.strerror}"
        ) from None
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp's private 0700, made an ordinary folder
    try:
        yield staging
        mark(staging)
        with _interrupts_deferred():
            try:
                recorded = check(out, overwrite)
            except UnsafeOutputError as error:
                kept = _unused_sibling(out, "new")
                staging.rename(kept)
                raise UnsafeOutputError(f"{error}; this run's results are in {kept}") from None
            if not out.exists():
                staging.rename(out)
                return
            replaced = _unused_sibling(out, "replaced", hidden=True)
            out.rename(replaced)
            staging.rename(out)
            if not _remove_recorded(replaced, recorded):
                raise UnsafeOutputError(
                    f"wrote {out}, but files added to the old {out} during the run are in "
                    f"{replaced}"
                )
    finally:
        shutil.rmtree(staging, ignore_errors=True)
