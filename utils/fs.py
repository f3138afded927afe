"""Checks that an output location can be written, made before any slow work starts; whole-file writes.

Permission bits are not enough (root ignores them; a read-only mount refuses everyone), so the
check creates and removes a temporary file where the output will go. :func:`replace_atomically`
writes a file under a temporary name beside it and renames it, so a reader (another process,
another rank, a later run) never sees half of it.
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
        raise ConfigError(
            f"{option} {target}: cannot write in {folder} ({reason}); choose a folder you can write to"
        ) from None
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


def replace_atomically(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """``write(tmp)`` to a temporary name beside ``path``, then rename it onto ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")  # unique across processes and machines
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> Path:
    """JSON written whole (:func:`replace_atomically`)."""
    text = json.dumps(data, indent=2, default=str)
    return replace_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
