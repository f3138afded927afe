"""Recognise one recording in several files: fingerprints of the decoded audio.

Two fingerprints per input, both of 16 kHz mono audio, so container, codec, sample rate, channel
count and gain do not matter:

- exact: a hash of the 16-bit samples (a lossless copy, e.g. WAV and FLAC of the same audio);
- coarse: log energy in 8 frequency bands per 100 ms frame. Two inputs are the same recording
  when their lengths agree within 2 % (+0.5 s) and the band energies correlate above
  ``NEAR_THRESHOLD`` at the best of a few frame shifts (lossy codecs add a delay of a few
  tens of milliseconds).

Fingerprints of a dataset folder's inputs are kept in ``fingerprints/`` as ``.npy`` files
(loaded with ``allow_pickle=False``).
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

FP_SR = 16000
FRAME_S = 0.1
N_BANDS = 8
NEAR_THRESHOLD = 0.9
MAX_SHIFT = 3


@dataclass(frozen=True)
class AudioPrint:
    """Fingerprint of one decoded recording."""

    exact: str
    bands: np.ndarray  # (frames, N_BANDS) float32, log energy in dB
    duration: float


# log-spaced from 100 Hz to 7.6 kHz
BANDS_HZ: tuple[tuple[float, float], ...] = tuple(
    (float(a), float(b))
    for a, b in zip(np.geomspace(100.0, 7600.0, N_BANDS + 1)[:-1], np.geomspace(100.0, 7600.0, N_BANDS + 1)[1:])
)


def audio_print(audio16k: np.ndarray, bands: np.ndarray | None = None) -> AudioPrint:
    """Fingerprint of 16 kHz mono float audio.

    Args:
        bands: power in ``BANDS_HZ`` per 10 ms frame when already computed
            (``boundaries.band_power``), else computed here.
    """
    from utils.data.boundaries import band_power

    pcm = np.round(np.clip(audio16k, -1.0, 1.0) * 32767).astype("<i2")
    exact = hashlib.blake2b(pcm.tobytes(), digest_size=16).hexdigest()
    if bands is None:
        bands = band_power(audio16k, FP_SR, BANDS_HZ)
    per = int(round(FRAME_S / 0.01))
    m = len(bands) // per
    coarse = bands[: m * per].reshape(m, per, N_BANDS).mean(axis=1)
    return AudioPrint(exact, (10 * np.log10(coarse + 1e-10)).astype(np.float32), len(audio16k) / FP_SR)


def similarity(a: AudioPrint, b: AudioPrint) -> float:
    """1.0 for the same samples; else the best band-energy correlation over small shifts (0 if lengths differ)."""
    if a.exact == b.exact:
        return 1.0
    if abs(a.duration - b.duration) > 0.02 * max(a.duration, b.duration) + 0.5:
        return 0.0
    best = 0.0
    for s in range(-MAX_SHIFT, MAX_SHIFT + 1):
        x = a.bands[max(0, s) :]
        y = b.bands[max(0, -s) :]
        n = min(len(x), len(y))
        if n < 5:
            continue
        x, y = x[:n] - x[:n].mean(axis=0), y[:n] - y[:n].mean(axis=0)
        den = float(np.sqrt((x * x).sum() * (y * y).sum()))
        if den > 0:
            best = max(best, float((x * y).sum()) / den)
    return best


def save_print(folder: str | os.PathLike, source_id: str, fp: AudioPrint) -> Path:
    """Store a fingerprint as ``folder/fingerprints/<source_id>.npy`` (the exact hash goes in the report)."""
    path = Path(folder) / "fingerprints" / f"{source_id}.npy"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, fp.bands, allow_pickle=False)
    return path


def load_print(folder: str | os.PathLike, source_id: str, exact: str, duration: float) -> AudioPrint | None:
    """A stored fingerprint, or None when its file is missing or unreadable."""
    path = Path(folder) / "fingerprints" / f"{source_id}.npy"
    try:
        bands = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None
    return AudioPrint(exact, bands, duration)
