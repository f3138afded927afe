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


def _band_edges(n_bins: int) -> np.ndarray:
    # log-spaced from 100 Hz to 7.6 kHz over a 512-point FFT at 16 kHz
    hz = np.geomspace(100.0, 7600.0, N_BANDS + 1)
    return np.clip(np.round(hz / (FP_SR / 2) * (n_bins - 1)).astype(int), 1, n_bins - 1)


def audio_print(audio16k: np.ndarray) -> AudioPrint:
    """Fingerprint of 16 kHz mono float audio."""
    pcm = np.round(np.clip(audio16k, -1.0, 1.0) * 32767).astype("<i2")
    exact = hashlib.blake2b(pcm.tobytes(), digest_size=16).hexdigest()
    hop, win = 160, 512
    n = max(0, (len(audio16k) - win) // hop + 1)
    if n == 0:
        return AudioPrint(exact, np.zeros((0, N_BANDS), dtype=np.float32), len(audio16k) / FP_SR)
    edges = _band_edges(win // 2 + 1)
    window = np.hanning(win).astype(np.float32)
    blocks = []
    for k0 in range(0, n, 8192):  # blocks of frames keep memory flat for hour-long inputs
        idx = np.arange(win)[None, :] + hop * np.arange(k0, min(n, k0 + 8192))[:, None]
        spec = np.abs(np.fft.rfft(audio16k[idx] * window, axis=1)) ** 2
        blocks.append(np.stack([spec[:, a:b].sum(axis=1) for a, b in zip(edges[:-1], edges[1:])], axis=1))
    bands = np.concatenate(blocks)
    per = int(FRAME_S * FP_SR / hop)
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
        x = a.bands[max(0, s):]
        y = b.bands[max(0, -s):]
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
