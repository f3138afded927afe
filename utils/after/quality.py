"""Quality measures that do not come from XTTS itself, all offline.

- :class:`GE2ESimilarity`: speaker similarity with Resemblyzer's GE2E encoder (a speaker-
  verification LSTM trained apart from XTTS; its weights ship inside the ``resemblyzer`` wheel).
  XTTS's own speaker encoder is what the model is conditioned on, so it rewards the model's own
  bias, and on an untrained model it scores even noise near 1.0.
- :func:`dnsmos`: Microsoft's DNSMOS P.835 no-reference scores (SIG speech distortion, BAK
  background noise, OVRL overall, 1-5) and P.808 MOS, from the ONNX models inside the
  ``speechmos`` wheel, run with onnxruntime. It scores noise and distortion, not naturalness.

Both take float audio at any sample rate and resample to 16 kHz.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from utils.data.audio import resample

logger = logging.getLogger(__name__)

QUALITY_SR = 16000
DNSMOS_KEYS = ("ovrl_mos", "sig_mos", "bak_mos", "p808_mos")
DNSMOS_WINDOW_S = 9.01  # speechmos' INPUT_LENGTH


def _to16k(audio: np.ndarray, sr: int) -> np.ndarray:
    return resample(np.asarray(audio, dtype=np.float32).reshape(-1), sr, QUALITY_SR)


class GE2ESimilarity:
    """Resemblyzer's GE2E speaker encoder (256-d embeddings; cosine 1.0 is the same voice).

    The encoder is loaded on first use. Audio is prepared as Resemblyzer prescribes
    (``preprocess_wav``: 16 kHz, volume normalised, long silences cut).
    """

    def __init__(self, device: str = "cpu") -> None:
        self.device = device
        self._encoder: Any = None

    @property
    def encoder(self) -> Any:
        if self._encoder is None:
            from resemblyzer import VoiceEncoder

            self._encoder = VoiceEncoder(self.device, verbose=False)
        return self._encoder

    def embed(self, audio: np.ndarray, sr: int) -> np.ndarray | None:
        """L2-normalised embedding of one clip; None when no speech is left after preprocessing."""
        from resemblyzer import preprocess_wav

        wav = _to16k(audio, sr)
        if not wav.size or float(np.max(np.abs(wav))) < 1e-4:  # silence: Resemblyzer would divide by zero
            return None
        wav = preprocess_wav(wav, source_sr=QUALITY_SR)
        if wav.size < QUALITY_SR // 4:  # under 0.25 s of speech: too little to embed
            return None
        emb = np.asarray(self.encoder.embed_utterance(wav), dtype=np.float64)
        return emb / max(float(np.linalg.norm(emb)), 1e-12)

    def target(self, clips: Sequence[tuple[np.ndarray, int]]) -> np.ndarray | None:
        """Mean embedding of the reference clips (normalised), the voice outputs are compared with."""
        embs = [e for e in (self.embed(a, sr) for a, sr in clips) if e is not None]
        if not embs:
            return None
        mean = np.mean(embs, axis=0)
        return mean / max(float(np.linalg.norm(mean)), 1e-12)

    def similarity(self, audio: np.ndarray, sr: int, target: np.ndarray | None) -> float | None:
        """Cosine of ``audio``'s embedding with ``target``; None when either is missing."""
        if target is None:
            return None
        emb = self.embed(audio, sr)
        return None if emb is None else float(np.dot(emb, target))


def dnsmos(audio: np.ndarray, sr: int) -> dict[str, float | None]:
    """DNSMOS scores of one clip (:data:`DNSMOS_KEYS`, 1-5, higher is better).

    The model reads 9.01 s windows, one second apart, and averages them. A shorter clip is
    repeated to exactly one window here (speechmos would double it until it is longer, up to
    18 s, and score up to nine overlapping windows of the same repeated audio: the same score,
    several times the time). Silence gets None for every key.
    """
    from speechmos import dnsmos as _dnsmos

    wav = _to16k(audio, sr)
    peak = float(np.max(np.abs(wav))) if wav.size else 0.0
    if peak < 1e-4:
        return {k: None for k in DNSMOS_KEYS}
    if peak > 1.0:  # speechmos rejects samples outside [-1, 1]
        wav = wav / peak
    window = int(DNSMOS_WINDOW_S * QUALITY_SR) + 1
    if wav.size < window:
        wav = np.tile(wav, int(np.ceil(window / wav.size)))[:window]
    scores = _dnsmos.run(wav.astype(np.float32), sr=QUALITY_SR)
    return {k: round(float(scores[k]), 4) if scores.get(k) is not None else None for k in DNSMOS_KEYS}
