"""The ``--out`` folder of ``train``: staged, moved into place, and replaced only if ours.

A run is written into a hidden staging folder beside ``--out`` and renamed into place at the
end, so an interrupted or failed run never leaves a folder that looks finished. A finished
folder holds ``MARKER``, the list of every file and folder the run wrote. ``--overwrite``
replaces a folder only when the marker accounts for everything in it, and removes only what
the marker lists: a folder keras-margin did not write, or files a user added to one, are never
deleted.
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

MARKER = ".keras-margin-run.json"
WRITER = "keras-margin train"
SHOWN_UNEXPECTED = 3  # how many unexpected entries an error names


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
    """What the marker in ``folder`` says the run wrote, or None without a valid marker."""
    marker = folder / MARKER
    if not marker.is_file() or marker.is_symlink():
        return None
    try:
        document = json.loads(marker.read_text())
        if document["written_by"] != WRITER:
            return None
        return {path: kind for kind in ("file", "folder") for path in document[f"{kind}s"]}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check(out, overwrite):
    """Raises ``UnsafeOutputError`` unless ``train`` may write its results to ``out``."""
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
        return
    if not out.is_dir():
        raise UnsafeOutputError(f"--out {out} is a file, not a folder")
    found = _contents(out)
    if not found:
        return
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


def _remove_recorded(folder):
    """Deletes what the marker in ``folder`` lists; leaves ``folder`` if anything else is left."""
    recorded = _recorded(folder) or {}
    for path in sorted(recorded, key=lambda p: p.count("/"), reverse=True):
        target = folder / path
        with contextlib.suppress(OSError):
            if recorded[path] == "folder":
                target.rmdir()  # only once empty: a file nobody recorded keeps its folder
            elif target.is_file() and not target.is_symlink():
                target.unlink()
    with contextlib.suppress(OSError):
        (folder / MARKER).unlink()
        folder.rmdir()
    return not folder.exists()


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
                check(out, overwrite)
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
            if not _remove_recorded(replaced):
                raise UnsafeOutputError(
                    f"wrote {out}, but files added to the old {out} during the run are in "
                    f"{replaced}"
                )
    finally:
        shutil.rmtree(staging, ignore_errors=True)
