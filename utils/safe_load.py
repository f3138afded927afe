"""Loading model files without running code from them.

A ``.pth`` file is a pickle. Unpickling an arbitrary file runs whatever its ``__reduce__`` asks for,
and fine-tuned XTTS models are shared and downloaded by strangers. Every model file the toolkit
reads (Trainer checkpoints, exported ``model.pth``, ``dvae.pth``, ``speakers_xtts.pth``) goes
through :func:`load_torch_file`: ``torch.load(weights_only=True)``, which accepts tensors and plain
containers only, plus exactly the Coqui config classes that official XTTS v2 checkpoints pickle
(:data:`ALLOWED_GLOBALS`). There is no fallback to a full unpickle.

A refused file becomes :class:`UnsafeModelFileError` (one line, exit code 2 on the command line).
"""

from __future__ import annotations

import logging
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

from utils.errors import DataError

logger = logging.getLogger(__name__)

# (module, class) pairs that Coqui's own XTTS checkpoints pickle besides tensors: the official
# XTTS v2 model.pth stores its XttsConfig. coqui-tts registers these (and a few more, for other
# models) with torch.serialization.add_safe_globals in TTS/__init__.py; here they are allowed only
# for the duration of one load, so loading works before or without importing TTS.
ALLOWED_GLOBALS: tuple[tuple[str, str], ...] = (
    ("TTS.tts.configs.xtts_config", "XttsConfig"),
    ("TTS.tts.models.xtts", "XttsArgs"),
    ("TTS.tts.models.xtts", "XttsAudioConfig"),
    ("TTS.config.shared_configs", "BaseDatasetConfig"),
    ("collections", "defaultdict"),
)


class UnsafeModelFileError(DataError):
    """A model file that holds more than tensors and plain data (it could run code)."""


def _allowed() -> list[Any]:
    import importlib

    found = []
    for module, name in ALLOWED_GLOBALS:
        try:
            found.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):  # coqui-tts absent or renamed: that class stays refused
            logger.debug("safe global %s.%s not importable", module, name)
    return found


def _refused_global(exc: BaseException) -> str:
    """The global the safe unpickler refused, read from torch's message ("GLOBAL os.system ...")."""
    text = str(exc)
    for marker in ("Unsupported global: GLOBAL ", "GLOBAL "):
        if marker in text:
            return text.split(marker, 1)[1].split()[0].rstrip(".,")
    return (text.strip().splitlines() or ["unknown content"])[0][:120]


def load_torch_file(path: str | os.PathLike[str], *, mmap: bool = False, map_location: Any = "cpu") -> Any:
    """``torch.load`` that never runs code from the file.

    Args:
        path: a ``.pth``/``.pt`` file.
        mmap: map tensors lazily (the file must be in torch's zip format).
        map_location: where tensors go (default the CPU).

    Raises:
        UnsafeModelFileError: the file pickles objects other than tensors, plain containers and
            the allowed Coqui config classes.
        DataError: the file is missing, truncated or not a PyTorch file.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file; pass an existing checkpoint or model file")
    mmap = mmap and zipfile.is_zipfile(path)  # torch's legacy (non-zip) format cannot be mapped
    try:
        with torch.serialization.safe_globals(_allowed()):
            return torch.load(str(path), map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        raise UnsafeModelFileError(
            f"{path}: not a plain tensor checkpoint (it asks for {_refused_global(exc)}): refusing to load code "
            f"from it; use a checkpoint written by this toolkit or by Coqui"
        ) from exc
    except (RuntimeError, OSError, EOFError, ValueError, KeyError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise DataError(f"cannot read {path} ({first}); the file is incomplete or not a PyTorch file") from exc


def check_model_files(paths: list[Path] | tuple[Path, ...]) -> None:
    """Refuse a folder's model files before a library (Coqui) loads them on its own.

    Each file is unpickled safely with lazily mapped tensors, so this costs little even for a
    2 GB ``model.pth``; the real load then meets only files known to hold plain data.

    Raises:
        UnsafeModelFileError, DataError: as :func:`load_torch_file`, for the first bad file.
    """
    for path in paths:
        load_torch_file(path, mmap=True)
