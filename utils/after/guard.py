"""Generation guard: stop XTTS where the text ends, find what comes after the last word, trim it.

A fine-tuned XTTS often fails to emit its stop token: it then babbles, repeats syllables or makes
noise until the token cap, and the stock cap (``gpt_max_audio_tokens``, about 28 s) is the same for
"Hi." as for a paragraph. The guard works on each chunk of text that XTTS speaks:

1. **Length cap from the text.** ``cap_s = max(min_cap_s, pad_s + margin * letters / rate)``,
   where ``letters`` counts the letters and digits of the normalised text (numbers spelled out)
   and ``rate`` is the speaker's letters per second: the training rows' median for a run, the
   reference clips' for an export, else :data:`DEFAULT_LETTERS_PER_S`. The cap in audio codes is
   ``ceil(cap_s * codes_per_s)`` with ``codes_per_s = input_sample_rate / gpt_code_stride_len``
   (22050 / 1024 = 21.5 for XTTS v2), never above the model's own limit nor an explicit
   ``max_new_tokens``.
2. **Checks on the output** (:func:`analyse_output`):
   ``no_stop_token`` (generation ran to the cap), ``token_loop`` (the audio codes end in a
   repeated pattern), ``no_speech`` (Silero VAD finds none), ``trailing_noise`` (more than
   ``max_tail_s`` of sound louder than -45 dBFS after the end of speech; ``trailing_silence`` when
   it is quiet, which trimming fixes and which is no failure), and with an ASR model,
   ``extra_words`` (words transcribed after the text's last word, found by
   :func:`utils.after.asr.align_last_word`: babble).
3. **Trimming** at the end of the last word (ASR word times when there are extra words, else the
   VAD's speech end; the start of a trailing token loop if earlier), keeping ``keep_tail_s`` and a
   10 ms fade.
4. **Retry**: when a check in :data:`RETRY_FLAGS` fails and ``retries`` > 0, the chunk is generated
   again with another seed (the reason is logged); the attempt with the fewest failed checks wins.

Every decision goes into a :class:`ChunkReport`; :mod:`utils.after.synthesize` writes them to the
output's JSON sidecar. The audio levels the checks use (:func:`speech_bounds`, :func:`rms_dbfs`,
:data:`NOISE_DBFS`) are evaluation's too.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from utils.after.asr import align_last_word, letters, normalise
from utils.data.audio import resample
from utils.errors import LanguageError

logger = logging.getLogger(__name__)

DEFAULT_LETTERS_PER_S = 13.0  # typical read speech, when the speaker's own rate is unknown
VAD_SR = 16000
NOISE_DBFS = -45.0  # a tail louder than this is noise, not silence
FADE_S = 0.01
RETRY_FLAGS: frozenset[str] = frozenset({"no_stop_token", "token_loop", "no_speech", "extra_words", "trailing_noise"})


@dataclass
class GuardOptions:
    """Settings of the generation guard (see the module docstring).

    Attributes:
        enabled: False restores the stock behaviour (the model's token cap, no checks, no trim).
        letters_per_s: the speaker's rate; None takes the model's (run, export) or the default.
        margin / pad_s / min_cap_s: the text-based cap ``max(min_cap_s, pad_s + margin * letters / rate)``.
        trim: cut what follows the last word (checks run either way).
        keep_tail_s: silence kept after the last word when trimming.
        max_tail_s: more non-speech than this after the last word is flagged (``trailing_noise``
            fails, ``trailing_silence`` is only trimmed).
        use_asr: align faster-whisper word times with the text (English with the bundled model).
        retries: extra attempts with another seed when a check in :data:`RETRY_FLAGS` fails.
    """

    enabled: bool = True
    letters_per_s: float | None = None
    margin: float = 2.0
    pad_s: float = 1.0
    min_cap_s: float = 2.0
    trim: bool = True
    keep_tail_s: float = 0.1
    max_tail_s: float = 0.6
    use_asr: bool = False
    retries: int = 0


@dataclass
class Attempt:
    """One generation of one chunk and what the checks found."""

    seed: int | None
    codes: int
    stop_token: bool
    duration_s: float
    speech_end_s: float | None
    tail_s: float
    tail_kind: str
    loop_start_s: float | None = None
    asr_text: str | None = None
    last_word_end_s: float | None = None
    extra_words: list[str] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)
    cut_s: float | None = None
    cut_reason: str = ""

    @property
    def failures(self) -> list[str]:
        return [f for f in self.flags if f in RETRY_FLAGS]


@dataclass
class ChunkReport:
    """The guard's decisions for one chunk of text (one entry of the sidecar's ``chunks``)."""

    text: str
    letters: int
    letters_per_s: float
    rate_source: str
    cap_s: float
    max_new_tokens: int
    cap_source: str
    attempts: list[Attempt] = field(default_factory=list)
    chosen: int = 0
    duration_s: float = 0.0
    trimmed_s: float = 0.0

    @property
    def flags(self) -> list[str]:
        return list(self.attempts[self.chosen].flags) if self.attempts else []

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["flags"] = self.flags
        return _rounded(d)


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


# --------------------------------------------------------------------------------------------
# The cap
# --------------------------------------------------------------------------------------------


def text_letters(text: str, language: str) -> int:
    """Letters and digits of ``text`` after the language's normaliser (numbers spelled out)."""
    try:
        return max(1, letters(normalise(text, language)))
    except (LanguageError, NotImplementedError, ValueError, KeyError):
        return max(1, letters(text))


def codes_per_second(model_args: Any) -> float:
    """Audio codes per second of the GPT: ``input_sample_rate / gpt_code_stride_len`` (21.5 for XTTS v2)."""
    sr = float(getattr(model_args, "input_sample_rate", 22050) or 22050)
    stride = float(getattr(model_args, "gpt_code_stride_len", 1024) or 1024)
    return sr / stride


def token_cap(
    text: str,
    language: str,
    *,
    options: GuardOptions,
    letters_per_s: float,
    codes_per_s: float,
    model_limit: int | None = None,
    explicit: int | None = None,
) -> tuple[int, float, str]:
    """``(max_new_tokens, cap_s, source)`` for one chunk (see the module docstring)."""
    n = text_letters(text, language)
    cap_s = max(options.min_cap_s, options.pad_s + options.margin * n / max(letters_per_s, 1e-3))
    tokens, source = int(math.ceil(cap_s * codes_per_s)), "text"
    if explicit is not None and explicit < tokens:
        tokens, source = int(explicit), "max_new_tokens"
    if model_limit is not None and model_limit < tokens:
        tokens, source = int(model_limit), "model limit"
    return tokens, tokens / codes_per_s, source


# --------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------


def find_token_loop(
    codes: Sequence[int], *, max_period: int = 16, min_repeats: int = 4, min_len: int = 12
) -> int | None:
    """Index where a repeated pattern that runs to the end of ``codes`` starts, or None.

    A loop is a period ``p`` (1..max_period) with ``codes[i] == codes[i - p]`` for every ``i`` in
    the tail, covering at least ``max(min_len, min_repeats * p)`` codes.
    """
    codes = list(codes)
    best: int | None = None
    for p in range(1, max_period + 1):
        i = len(codes) - 1
        while i - p >= 0 and codes[i] == codes[i - p]:
            i -= 1
        start = i - p + 1  # codes[start:] repeats with period p
        if len(codes) - start >= max(min_len, min_repeats * p) and (best is None or start < best):
            best = start
    return best


def speech_bounds(audio: np.ndarray, sr: int) -> tuple[float, float] | None:
    """(start, end) in seconds of the speech Silero VAD (inside faster-whisper) finds; None if none."""
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    audio16 = resample(np.asarray(audio, dtype=np.float32), sr, VAD_SR)
    stamps = get_speech_timestamps(audio16, VadOptions(min_silence_duration_ms=300, speech_pad_ms=30))
    return (stamps[0]["start"] / VAD_SR, stamps[-1]["end"] / VAD_SR) if stamps else None


def rms_dbfs(audio: np.ndarray) -> float:
    """RMS level in dB full scale (-100 for empty or digital silence)."""
    if audio.size == 0:
        return -100.0
    return 20.0 * math.log10(max(float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))), 1e-5))


def analyse_output(
    audio: np.ndarray,
    sr: int,
    text: str,
    language: str,
    *,
    options: GuardOptions,
    codes: Sequence[int] | None = None,
    max_new_tokens: int | None = None,
    stop_token: int | None = None,
    transcriber: Any = None,
    seed: int | None = None,
) -> Attempt:
    """Run the checks of the module docstring on one output; ``cut_s`` is where to trim (or None)."""
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    duration = audio.size / sr
    gen = [int(c) for c in codes] if codes is not None else []
    stopped = bool(gen) and stop_token is not None and gen[-1] == stop_token
    if stopped:
        gen = gen[:-1]
    bounds = speech_bounds(audio, sr) if audio.size else None
    end = bounds[1] if bounds else None
    tail = audio[int((end or 0.0) * sr) :]
    att = Attempt(
        seed=seed,
        codes=len(gen),
        stop_token=stopped,
        duration_s=duration,
        speech_end_s=end,
        tail_s=max(0.0, duration - (end or 0.0)),
        tail_kind="noise" if rms_dbfs(tail) > NOISE_DBFS else "silence",
    )
    if codes is not None and not stopped and max_new_tokens is not None and len(gen) >= max_new_tokens:
        att.flags.append("no_stop_token")
    cuts: list[tuple[float, str]] = []
    loop = find_token_loop(gen) if gen else None
    if loop is not None:
        att.loop_start_s = duration * loop / max(1, len(gen))
        att.flags.append("token_loop")
        cuts.append((att.loop_start_s, "token loop"))
    if end is None:
        att.flags.append("no_speech")
    elif att.tail_s > options.max_tail_s:
        att.flags.append("trailing_noise" if att.tail_kind == "noise" else "trailing_silence")
    if end is not None:
        cuts.append((end + options.keep_tail_s, "end of speech (VAD)"))
    if transcriber is not None and end is not None:
        _asr_check(att, audio, sr, text, language, transcriber, options, cuts)
    if cuts:
        cut, reason = min(cuts)
        if cut < duration - 0.02:
            att.cut_s, att.cut_reason = cut, reason
    return att


def _asr_check(
    att: Attempt,
    audio: np.ndarray,
    sr: int,
    text: str,
    language: str,
    transcriber: Any,
    options: GuardOptions,
    cuts: list[tuple[float, str]],
) -> None:
    words = transcriber.words(audio, sr, max_new_tokens=len(text) + 20)
    att.asr_text = " ".join(w for w, _s, _e in words).strip()
    if not words:
        return
    last, extra = align_last_word(text, words, language)
    if last >= 0:
        att.last_word_end_s = words[last][2]
    if extra and sum(len(w) for w in extra) >= 3:
        att.extra_words = extra
        att.flags.append("extra_words")
        end = att.last_word_end_s if att.last_word_end_s is not None else 0.0
        cuts.append((end + options.keep_tail_s, "end of the last word (ASR)"))


def trim(audio: np.ndarray, sr: int, cut_s: float) -> np.ndarray:
    """``audio`` up to ``cut_s`` with a short fade-out (no click at the cut)."""
    n = max(0, min(audio.size, int(round(cut_s * sr))))
    out = np.array(audio[:n], dtype=np.float32)
    fade = min(n, int(FADE_S * sr))
    if fade:
        out[n - fade :] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
    return out


# --------------------------------------------------------------------------------------------
# Capturing the audio codes
# --------------------------------------------------------------------------------------------


@contextmanager
def recording_codes(gpt: Any) -> Iterator[list[Any]]:
    """Record what ``gpt.generate`` returns (the audio codes) while ``Xtts.inference`` runs.

    ``Xtts.inference`` (coqui-tts 0.28) keeps the codes to itself and returns only the wav and
    latents; wrapping the GPT's public ``generate`` on the instance lets the guard see them
    without copying Coqui's inference. The wrapper is removed afterwards.
    """
    original = gpt.generate
    had_own = "generate" in vars(gpt)
    captured: list[Any] = []

    def generate(*args: Any, **kwargs: Any) -> Any:
        codes = original(*args, **kwargs)
        captured.append(codes)
        return codes

    gpt.generate = generate
    try:
        yield captured
    finally:
        if had_own:
            gpt.generate = original
        else:
            del gpt.generate


@contextmanager
def token_limit(gpt: Any, max_new_tokens: int | None) -> Iterator[None]:
    """``gpt.generate`` makes at most ``max_new_tokens`` audio codes, with one length setting.

    Coqui's ``GPT.generate`` (coqui-tts 0.28) always passes transformers ``max_length =
    max_gen_mel_tokens + prompt length``; a ``max_new_tokens`` beside it made transformers warn on
    every call that both are set. The cap goes into the GPT's public ``max_gen_mel_tokens`` for the
    duration instead: the same number of new codes. None leaves the model's own limit.
    """
    if max_new_tokens is None:
        yield
        return
    limit = gpt.max_gen_mel_tokens
    gpt.max_gen_mel_tokens = int(max_new_tokens)
    try:
        yield
    finally:
        gpt.max_gen_mel_tokens = limit
