"""Helpers for the after-training tests (espeak-ng clips, wav I/O)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf


def espeak(path: Path, text: str, *, voice: str = "en-us", speed: int = 160) -> Path:
    """Speak ``text`` with espeak-ng into a 22.05 kHz mono wav (the toolkit's own :func:`espeak_to_wav`)."""
    from utils.demo import espeak_to_wav

    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    return espeak_to_wav(text, path, voice=voice, speed=speed)


def read(path: Path) -> tuple[np.ndarray, int]:
    audio, sr = sf.read(str(path), dtype="float32")
    return audio, sr


def write(path: Path, audio: np.ndarray, sr: int) -> Path:
    sf.write(str(path), audio, sr, subtype="PCM_16")
    return path
