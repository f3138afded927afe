"""Checks that an output location can be written, made before any slow work starts.

Permission bits are not enough (root ignores them; a read-only mount refuses everyone), so the
check creates and removes a temporary file where the output will go.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from utils.errors import ConfigError


def _existing_ancestor(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _probe(folder: Path, option: str, target: Path) -> None:
    try:
        fd, name = tempfile.mkstemp(prefix=".write-check-", dir=folder)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"{option} {target}: cannot write in {folder} ({reason}); choose a folder you can write to") from None
    os.close(fd)
    os.unlink(name)


def check_writable_dir(path: str | os.PathLike[str], option: str) -> Path:
    """``path`` is (or can become) a folder this process can write in.

    Raises:
        ConfigError: it is a file, or it (or the nearest folder above it that exists) is not writable.
    """
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{option} {path} is a file; pass a folder (it is created if missing)")
    base = _existing_ancestor(path.absolute())
    if not base.is_dir():
        raise ConfigError(f"{option} {path}: {base} is a file, so no folder can be made there; choose another path")
    _probe(base, option, path)
    return path


def check_writable_file(path: str | os.PathLike[str], option: str) -> Path:
    """``path`` can be written as a file (a folder there, or an unwritable folder, is refused)."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise ConfigError(f"{option} {path} is a folder; pass a file name")
    base = _existing_ancestor(path.absolute().parent)
    if not base.is_dir():
        raise ConfigError(f"{option} {path}: {base} is a file, so the file cannot be made there; choose another path")
    _probe(base, option, path)
    return path
