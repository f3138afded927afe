"""Path safety for the web UI: uploaded names are sanitised, every path stays inside its roots.

A browser can send any string as a path or a file name. Nothing the page names may reach outside
the data and runs folders the server was started with (no ``..``, no absolute paths elsewhere,
no symlink that leads out).
"""

from __future__ import annotations

import os
import re
import unicodedata
from collections.abc import Iterable
from pathlib import Path

from utils.errors import ConfigError

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
MAX_NAME = 100


def safe_name(name: str, default: str = "upload") -> str:
    """A file name with no folder part, no leading dots and only ``[A-Za-z0-9._-]``.

    ``../../etc/passwd`` becomes ``passwd``; ``my clip (1).wav`` becomes ``my_clip_1_.wav``.
    """
    base = re.split(r"[\\/]", str(name))[-1]
    base = unicodedata.normalize("NFKD", base).encode("ascii", "ignore").decode("ascii")
    base = _UNSAFE.sub("_", base).lstrip("._-")
    if len(base) > MAX_NAME:
        stem, dot, ext = base.rpartition(".")
        base = (stem[: MAX_NAME - len(ext) - 1] + "." + ext) if dot and len(ext) <= 8 else base[:MAX_NAME]
    return base or default


def inside(path: Path, root: Path) -> bool:
    """True when ``path`` (resolved, symlinks followed) is ``root`` or below it."""
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


def confine(path: str | os.PathLike, roots: Iterable[Path], *, what: str = "path", must_exist: bool = True) -> Path:
    """Resolve ``path`` (relative ones against the first root) and refuse it outside ``roots``.

    Raises:
        ConfigError: empty, outside every root, or (``must_exist``) missing.
    """
    roots = [Path(r) for r in roots]
    text = str(path).strip() if path is not None else ""
    if not text:
        raise ConfigError(f"no {what} given; choose one inside {_names(roots)}")
    candidate = Path(text).expanduser()
    if not candidate.is_absolute():
        candidate = roots[0] / candidate
    resolved = candidate.resolve()
    if not any(inside(resolved, root) for root in roots):
        raise ConfigError(
            f"{what} {text} is outside the folders this server may use ({_names(roots)}); choose one inside them"
        )
    if must_exist and not resolved.exists():
        raise ConfigError(f"{what} {text} does not exist; choose an existing one inside {_names(roots)}")
    return resolved


def _names(roots: list[Path]) -> str:
    return ", ".join(str(r) for r in roots)
