"""Path safety for the web UI: uploaded names are cleaned, every path stays inside its roots.

A browser can send any string as a path or a file name. Nothing the page names may reach outside
the data and runs folders the server was started with (no ``..``, no absolute paths elsewhere,
no symlink that leads out). Names keep their letters in any script (recordings named in Amharic,
Japanese or Russian stay apart); only what a file system refuses or a person cannot see goes.
"""

from __future__ import annotations

import os
import re
import unicodedata
from collections.abc import Iterable
from pathlib import Path

from utils.errors import ConfigError

# what Linux, macOS or Windows refuse in a name (the data folder may be a shared or synced disk)
_REFUSED = re.compile(r'[/\\:*?"<>|]')
# format characters that some scripts need (zero-width joiner and non-joiner: Persian, Indic)
_KEPT_FORMAT = {"\u200c", "\u200d"}
_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}
MAX_NAME_BYTES = 150  # UTF-8 bytes: room for a " (NN)" suffix under every file system's 255


def _visible(ch: str) -> bool:
    """False for control, surrogate, private-use, unassigned and (most) format characters."""
    return unicodedata.category(ch)[0] != "C" or ch in _KEPT_FORMAT


def safe_name(name: str, default: str = "upload") -> str:
    """A file name with no folder part, no leading dot, in NFC, with its letters in any script.

    ``../../etc/passwd`` becomes ``passwd``; ``録音.wav`` and ``интервью 1.wav`` stay as they are;
    characters a file system refuses (``/\\:*?"<>|``) become ``_``; control characters go.
    """
    base = re.split(r"[\\/]", str(name))[-1]
    base = unicodedata.normalize("NFC", base)
    base = "".join(ch for ch in base if _visible(ch))
    base = _REFUSED.sub("_", base).strip().lstrip(".").strip().rstrip(". ")
    stem, dot, ext = base.rpartition(".")
    if (stem if dot else base).upper() in _RESERVED:
        base = "_" + base
    return _truncate(base, MAX_NAME_BYTES) or default


def word_name(name: str, default: str = "run") -> str:
    """A name for folders that commands print (run names): letters, marks and digits of any script,
    ``.``, ``_`` and ``-``; everything else becomes ``_``, so the name needs no quoting in a shell."""
    base = safe_name(name, default="")
    base = "".join(ch if unicodedata.category(ch)[0] in "LMN" or ch in "._-" else "_" for ch in base)
    base = re.sub(r"_+", "_", base).strip("_")
    return base or default


def _truncate(name: str, max_bytes: int) -> str:
    """``name`` cut to ``max_bytes`` of UTF-8 at a character boundary, keeping a short extension."""
    if len(name.encode("utf-8")) <= max_bytes:
        return name
    stem, dot, ext = name.rpartition(".")
    tail = f".{ext}" if dot and stem and len(ext.encode("utf-8")) <= 8 else ""
    head = stem if tail else name
    budget = max_bytes - len(tail.encode("utf-8"))
    return head.encode("utf-8")[:budget].decode("utf-8", "ignore").rstrip(". ") + tail


def unique_path(folder: Path, name: str) -> Path:
    """A path for ``name`` in ``folder`` that no file takes yet: ``name``, ``name (2)``, ``name (3)`` ...

    The file is created empty here (exclusively), so two uploads of the same name at the same
    moment get different files.
    """
    stem, suffix = Path(name).stem, Path(name).suffix
    for n in range(1, 10_000):
        candidate = folder / (name if n == 1 else f"{stem} ({n}){suffix}")
        try:
            os.close(os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        except FileExistsError:
            continue
        return candidate
    raise ConfigError(f"{folder} already holds 10,000 files named like {name}; upload into a new folder")


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
