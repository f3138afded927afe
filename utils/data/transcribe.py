"""faster-whisper transcription with VAD and word timestamps.

GPU: batched inference (``BatchedInferencePipeline``, Silero VAD on, ``batch_size`` 16 chunks of
up to 30 s) in float16, with CTranslate2's CUDA 12 cuBLAS loaded from the installed wheel
(:mod:`utils.data.cuda_libs`). CPU: the sequential model with its Silero VAD filter, int8.
``device="auto"`` tries the GPU (a short probe run) and falls back to the CPU with one warning.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from utils.data.words import Word
from utils.errors import ConfigError

logger = logging.getLogger(__name__)

WHISPER_SR = 16000


def _cuda_device_count() -> int:
    try:
        import ctranslate2
    except ImportError:
        return 0
    try:
        return int(ctranslate2.get_cuda_device_count())
    except RuntimeError:  # a broken driver install
        return 0


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
            segments, info = pipe.transcribe(audio16k, batch_size=self.batch_size, vad_filter=True, **opts)
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
                from utils.data.cuda_libs import driver_hint

                first = str(exc).strip().splitlines()[0][:200]
                raise ConfigError(
                    f"Whisper failed on the GPU ({first}); {driver_hint(first)}, or run with --device cpu"
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
    if device not in ("auto", "cuda", "cpu"):
        raise ConfigError(f"--device {device}: choose auto, cuda or cpu")
    is_dir = Path(model).is_dir()
    if not is_dir and (os.sep in str(model) or str(model).startswith(".")):
        raise ConfigError(f"--whisper-model {model}: no such folder; pass a CTranslate2 model folder or a model name")
    if device == "auto" and _cuda_device_count() == 0:
        logger.info("no CUDA GPU visible to CTranslate2: transcribing on the CPU")
    elif device != "cpu":
        try:
            loaded = _load_on_gpu(model, compute_type)
            return Transcriber(loaded, "cuda", batch_size=batch_size, language=language)
        except _GpuUnavailable as why:
            if device == "cuda":
                raise ConfigError(f"--device cuda: {why}; or run with --device cpu") from None
            logger.warning("GPU transcription unavailable (%s); transcribing on the CPU", why)
    loaded = _load_model(model, "cpu", compute_type or "int8")
    return Transcriber(loaded, "cpu", batch_size=batch_size, language=language)


class _GpuUnavailable(Exception):
    """Why Whisper cannot run on the GPU here, with the fix."""


def _load_on_gpu(model: str | os.PathLike, compute_type: str | None) -> Any:
    """Load Whisper on CUDA and run a 1 s probe (cuBLAS loads at the first GPU operation)."""
    from utils.data.cuda_libs import CudaLibraryError, driver_hint, preload_cublas12

    if _cuda_device_count() == 0:
        raise _GpuUnavailable("no CUDA GPU visible to CTranslate2 (check nvidia-smi and CUDA_VISIBLE_DEVICES)")
    compute = compute_type or "float16"
    try:
        preload_cublas12()
        loaded = _load_model(model, "cuda", compute)
        segments, _ = loaded.transcribe(
            np.zeros(WHISPER_SR, np.float32), language="en", beam_size=1, without_timestamps=True
        )
        list(segments)
    except CudaLibraryError as exc:
        raise _GpuUnavailable(str(exc)) from exc
    except (RuntimeError, OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise _GpuUnavailable(f"{first}; {driver_hint(first)}") from exc
    logger.info("transcribing on the GPU (CTranslate2 CUDA, %s, batched)", compute)
    return loaded


def _load_model(model: str | os.PathLike, device: str, compute_type: str) -> Any:
    from faster_whisper import WhisperModel

    try:
        loaded = WhisperModel(str(model), device=device, compute_type=compute_type)
    except ConfigError:
        raise
    except RuntimeError as exc:
        if device == "cuda":
            raise  # the caller tells GPU trouble from a bad model
        raise _model_error(model, device, exc) from exc
    except Exception as exc:  # faster-whisper/hub raise many types (OSError, ValueError, hub errors)
        raise _model_error(model, device, exc) from exc
    logger.info("whisper %s on %s (%s)", model, device, compute_type)
    return loaded


def _model_error(model: str | os.PathLike, device: str, exc: BaseException) -> ConfigError:
    first = (str(exc).strip().splitlines() or [""])[0][:200]
    return ConfigError(
        f"cannot load Whisper model {str(model)!r} on {device} ({type(exc).__name__}: {first}); "
        f"pass --whisper-model a local CTranslate2 folder (model.bin, config.json, tokenizer.json) "
        f"when offline, or check the name"
    )
