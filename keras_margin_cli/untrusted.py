"""Checks for what a run folder says about itself: paths and JSON values read from its files.

A run folder may come from a colleague, an archive or a hand edit, so the paths its files list
are input like any other: used only once they are known to stay inside the folder.
"""

from __future__ import annotations

import stat
from pathlib import PurePosixPath


class OutsidePathError(ValueError):
    """A listed path that is not a plain relative path inside its folder; the message says why."""


def json_type(value):
    """How a JSON value is named in an error: "a string", "an object", "null"..."""
    if value is None:
        return "null"
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    return names.get(type(value), "a number")


def inside(folder, entry):
    """``folder / entry``, once ``entry`` is known to lead to a place inside ``folder``.

    ``entry`` must be a relative path with no ``..`` part and no symbolic link on the way
    (checked, without following, up to the first part that does not exist). Returns None if
    that place does not exist; raises ``OutsidePathError`` for anything that could leave the
    folder. A path that passes cannot leave it, so it needs no ``resolve()``, which would
    follow the links this refuses.
    """
    if not isinstance(entry, str):
        raise OutsidePathError(f"{json_type(entry)}, not a path")
    path = PurePosixPath(entry)
    if not path.parts or "\0" in entry:
        raise OutsidePathError("not a path to a file or folder")
    if path.is_absolute():
        raise OutsidePathError("an absolute path")
    if ".." in path.parts:
        raise OutsidePathError("a path with a .. part")
    found = folder
    for depth, part in enumerate(path.parts, 1):
        found = found / part
        try:
            mode = found.lstat().st_mode
        except (FileNotFoundError, NotADirectoryError):
            return None
        if stat.S_ISLNK(mode):
            link = PurePosixPath(*path.parts[:depth])
            raise OutsidePathError(f"a path through a symbolic link ({link})")
    return found
