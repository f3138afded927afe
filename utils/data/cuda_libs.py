"""CTranslate2's CUDA 12 cuBLAS beside torch's CUDA 13, in one process.

faster-whisper runs on CTranslate2 4.8, whose GPU code opens ``libcublas.so.12`` with ``dlopen``
at its first GPU operation (the name is in its shared object; it has no CUDA 13 build). torch 2.11
from PyPI is a CUDA 13 build and brings ``libcublas.so.13``. The two sonames differ, so both can
live in one process; what is missing on a machine set up from the lock is only a way for
CTranslate2 to find version 12: the ``nvidia-cublas-cu12`` wheel (extra ``gpu-asr``) puts it in
``site-packages/nvidia/cublas/lib``, which is on no loader path. :func:`preload_cublas12` loads it
from there by full path (``RTLD_GLOBAL``), so the later ``dlopen("libcublas.so.12")`` finds the
library already loaded. Loading needs no GPU.

The CTranslate2 wheel needs no cuDNN, and ``nvidia-cudnn-cu12`` must not be installed beside
torch: both cuDNN wheels write ``nvidia/cudnn/lib/libcudnn.so.9``.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

CUBLAS12 = ("libcublasLt.so.12", "libcublas.so.12")  # Lt first: libcublas needs it
MIN_DRIVER_CUDA12 = "525.60.13"  # CUDA 12.x minor-version compatibility floor (Linux)

_loaded: dict[str, str] = {}


class CudaLibraryError(RuntimeError):
    """The CUDA 12 libraries CTranslate2 needs are missing or cannot be loaded."""


def cublas12_dirs() -> list[Path]:
    """Folders that may hold ``libcublas.so.12``: the wheel's folder in every site-packages."""
    out: list[Path] = []
    for entry in sys.path:
        d = Path(entry) / "nvidia" / "cublas" / "lib"
        if d.is_dir() and d not in out:
            out.append(d)
    return out


def find_cublas12() -> dict[str, Path]:
    """Full paths of the cuBLAS 12 libraries from the installed ``nvidia-cublas-cu12`` wheel.

    Raises:
        CudaLibraryError: not installed (with the install command).
    """
    for d in cublas12_dirs():
        found = {name: d / name for name in CUBLAS12 if (d / name).is_file()}
        if len(found) == len(CUBLAS12):
            return found
    raise CudaLibraryError(
        "CTranslate2 (faster-whisper) needs CUDA 12 cuBLAS (libcublas.so.12), which is not installed; "
        "run scripts/setup_env.sh (the lock includes nvidia-cublas-cu12) or pip install 'nvidia-cublas-cu12>=12.4,<13'"
    )


def preload_cublas12() -> dict[str, str]:
    """Load cuBLAS 12 from the installed wheel so CTranslate2's ``dlopen`` finds it (idempotent).

    Returns:
        {library name: path loaded}.

    Raises:
        CudaLibraryError: missing, or the loader refused it (e.g. a wrong architecture).
    """
    if _loaded:
        return dict(_loaded)
    if os.environ.get("XTTS_FT_SKIP_CUBLAS12_PRELOAD"):
        return {}
    for name, path in find_cublas12().items():
        try:
            ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
        except OSError as exc:
            raise CudaLibraryError(f"cannot load {path} ({exc}); reinstall nvidia-cublas-cu12") from exc
        _loaded[name] = str(path)
    logger.debug("preloaded %s", ", ".join(_loaded.values()))
    return dict(_loaded)


def loaded_path(soname: str) -> str | None:
    """Where this process has ``soname`` mapped (from /proc/self/maps), or None."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    for line in maps.splitlines():
        parts = line.split()
        if len(parts) >= 6 and os.path.basename(parts[-1]) == soname:
            return parts[-1]
    return None


def driver_hint(error: str) -> str:
    """The fix to name for a CUDA error text from CTranslate2."""
    low = error.lower()
    if "driver" in low and ("insufficient" in low or "older" in low or "version" in low):
        return (
            f"the NVIDIA driver is too old for CUDA 12 (CTranslate2 needs driver >= {MIN_DRIVER_CUDA12}; "
            f"torch 2.11's CUDA 13 needs >= 580); update the driver"
        )
    if "libcublas" in low:
        return "install the CUDA 12 cuBLAS wheel: pip install 'nvidia-cublas-cu12>=12.4,<13' (in the lock)"
    return "check the NVIDIA driver (nvidia-smi)"
