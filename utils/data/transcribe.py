"""faster-whisper transcription with VAD and word timestamps.

GPU: batched inference (``BatchedInferencePipeline``) in float16. CPU: the sequential model with
its Silero VAD filter, int8.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from utils.data.segment import Word
from utils.errors import ConfigError

logger = logging.getLogger(__name__)

WHISPER_SR = 16000


def _cuda_available() -> bool:
    try:
        import ctranslate2
    except ImportError:
        return False
    return ctranslate2.get_cuda_device_count() > 0


@dataclass
class Transcriber:
    """A loaded faster-whisper model and how to run it."""

    model: Any
    device: str
    batch_size: int = 16
    language: str | None = None
    beam_size: int = 5
    batched: bool | None = None  # None: batched on GPU only

    def __call__(self, audio16k: np.ndarray, progress: Any = None) -> tuple[list[Word], str]:
        """Transcribe 16 kHz mono audio.

        Args:
            progress: optional tqdm bar counting seconds of audio; advanced as segments arrive.

        Returns:
            (words in time order, detected or given language code).
        """
        opts: dict[str, Any] = {"language": self.language, "word_timestamps": True, "beam_size": self.beam_size}
        if self.batched if self.batched is not None else self.device == "cuda":
            from faster_whisper import BatchedInferencePipeline

            pipe = BatchedInferencePipeline(model=self.model)
            segments, info = pipe.transcribe(audio16k, batch_size=self.batch_size, **opts)
        else:
            segments, info = self.model.transcribe(audio16k, vad_filter=True, **opts)
        words: list[Word] = []
        done = 0.0
        try:  # segments is a generator: the model runs (and CUDA libraries load) while iterating
            for seg in segments:
                for w in seg.words or []:
                    words.append(Word(float(w.start), float(w.end), w.word, float(getattr(w, "probability", 1.0))))
                if progress is not None:
                    progress.update(max(0.0, float(seg.end) - done))
                    done = max(done, float(seg.end))
        except RuntimeError as exc:
            if self.device == "cuda" and any(k in str(exc).lower() for k in ("cuda", "cublas", "cudnn")):
                raise ConfigError(
                    f"Whisper failed on the GPU ({str(exc).strip().splitlines()[0][:200]}); CTranslate2 needs "
                    f"CUDA 12 cuBLAS and cuDNN 9 (pip install nvidia-cublas-cu12 nvidia-cudnn-cu12), "
                    f"or run with --device cpu"
                ) from exc
            raise
        if progress is not None:
            progress.update(max(0.0, len(audio16k) / WHISPER_SR - done))
        words.sort(key=lambda w: w.start)
        return words, info.language


def load_transcriber(
    model: str | os.PathLike,
    *,
    device: str = "auto",
    compute_type: str | None = None,
    language: str | None = None,
    batch_size: int = 16,
) -> Transcriber:
    """Load faster-whisper from a local CTranslate2 folder or a model name.

    Args:
        model: folder with model.bin/config.json, or a name such as ``large-v3`` (needs the hub).
        device: ``auto`` (CUDA when present), ``cuda`` or ``cpu``.
        compute_type: default float16 on GPU, int8 on CPU.
        language: force a language (None: detect per file).

    Raises:
        ConfigError: the model cannot be loaded (with what to pass instead).
    """
    from faster_whisper import WhisperModel

    if device == "auto":
        device = "cuda" if _cuda_available() else "cpu"
    compute_type = compute_type or ("float16" if device == "cuda" else "int8")
    is_dir = Path(model).is_dir()
    if not is_dir and (os.sep in str(model) or str(model).startswith(".")):
        raise ConfigError(f"--whisper-model {model}: no such folder; pass a CTranslate2 model folder or a model name")
    try:
        loaded = WhisperModel(str(model), device=device, compute_type=compute_type)
    except Exception as exc:  # faster-whisper/hub raise many types (OSError, ValueError, RuntimeError, hub errors)
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise ConfigError(
            f"cannot load Whisper model {str(model)!r} on {device} ({type(exc).__name__}: {first}); "
            f"pass --whisper-model a local CTranslate2 folder (model.bin, config.json, tokenizer.json) "
            f"when offline, or check the name"
        ) from exc
    logger.info("whisper %s on %s (%s)", model, device, compute_type)
    return Transcriber(loaded, device, batch_size=batch_size, language=language)
