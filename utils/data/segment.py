"""Turn word timestamps into training clips within XTTS's limits.

Cut at sentence ends and pauses; split over-long phrases at the widest word gap (commas
preferred); merge short neighbours while the result stays within the limits; pad each clip a
little without reaching into the neighbouring words. Anything that cannot become a valid clip
is returned as skipped with a reason, never dropped silently.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from utils.data.text import approx_token_count, clean_transcript

logger = logging.getLogger(__name__)

SENTENCE_END = (".", "!", "?", "\u2026", "\u3002", "\uff01", "\uff1f", "\u0964", "\u1362")


@dataclass(frozen=True)
class Word:
    """One recognised word with its time span in seconds."""

    start: float
    end: float
    text: str


@dataclass(frozen=True)
class Segment:
    """A clip to cut: audio span (padding included) and transcript."""

    start: float
    end: float
    text: str

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class SegmentLimits:
    """Limits and cutting preferences (defaults match XTTS v2's training limits)."""

    min_s: float = 0.5
    max_s: float = 11.6
    max_tokens: int = 200
    pad_s: float = 0.15
    pause_s: float = 0.5
    max_merge_gap_s: float = 1.2
    short_s: float = 3.0


def _text(words: Sequence[Word]) -> str:
    return clean_transcript("".join(w.text if w.text.startswith(" ") else " " + w.text for w in words))


def _ends_sentence(w: Word) -> bool:
    return w.text.strip().rstrip("\"')]\u201d\u2019").endswith(SENTENCE_END)


def _phrases(words: Sequence[Word], pause_s: float) -> list[list[Word]]:
    out: list[list[Word]] = []
    cur: list[Word] = []
    for i, w in enumerate(words):
        cur.append(w)
        nxt = words[i + 1] if i + 1 < len(words) else None
        if nxt is None or _ends_sentence(w) or nxt.start - w.end >= pause_s:
            out.append(cur)
            cur = []
    return out


def _split_long(phrase: list[Word], fits: Callable[[list[Word]], bool]) -> list[list[Word]]:
    if len(phrase) <= 1 or fits(phrase):
        return [phrase]
    best, best_score = 1, -1.0
    n = len(phrase)
    for i in range(1, n):
        gap = phrase[i].start - phrase[i - 1].end
        comma = 0.3 if phrase[i - 1].text.strip().endswith((",", ";", ":")) else 0.0
        balance = 0.1 * (1.0 - abs(i - n / 2) / (n / 2))  # mild preference for the middle
        score = gap + comma + balance
        if score > best_score:
            best, best_score = i, score
    return _split_long(phrase[:best], fits) + _split_long(phrase[best:], fits)


def segment_words(
    words: Sequence[Word],
    *,
    total_s: float,
    limits: SegmentLimits = SegmentLimits(),
    count_tokens: Callable[[str], int] = approx_token_count,
) -> tuple[list[Segment], list[dict[str, Any]]]:
    """Group words into clips.

    Args:
        words: recognised words in time order.
        total_s: length of the audio (clips are clamped to it).
        limits: duration/token limits and cutting preferences.
        count_tokens: text -> token count (default: a safe upper bound without a vocabulary).

    Returns:
        (segments in time order, skipped spans as dicts with start, end, text, reason, detail).
    """
    words = [w for w in words if w.text.strip()]
    if not words:
        return [], []
    span_max = limits.max_s - 2 * limits.pad_s

    def fits(ws: list[Word]) -> bool:
        return ws[-1].end - ws[0].start <= span_max and count_tokens(_text(ws)) <= limits.max_tokens

    pieces: list[list[Word]] = []
    for ph in _phrases(words, limits.pause_s):
        pieces.extend(_split_long(ph, fits))

    merged: list[list[Word]] = []
    for p in pieces:
        if merged:
            cur = merged[-1]
            gap = p[0].start - cur[-1].end
            cur_d = cur[-1].end - cur[0].start
            p_d = p[-1].end - p[0].start
            if gap <= limits.max_merge_gap_s and (cur_d < limits.short_s or p_d < limits.short_s) and fits(cur + p):
                merged[-1] = cur + p
                continue
        merged.append(list(p))

    segments: list[Segment] = []
    skipped: list[dict[str, Any]] = []
    index = {id(w): i for i, w in enumerate(words)}
    for ws in merged:
        i0, i1 = index[id(ws[0])], index[id(ws[-1])]
        lo = ws[0].start - limits.pad_s
        hi = ws[-1].end + limits.pad_s
        if i0 > 0:
            lo = max(lo, (words[i0 - 1].end + ws[0].start) / 2)
        if i1 + 1 < len(words):
            hi = min(hi, (ws[-1].end + words[i1 + 1].start) / 2)
        lo, hi = max(0.0, lo), min(total_s, hi)
        text = _text(ws)
        seg = Segment(round(lo, 3), round(hi, 3), text)
        if seg.duration < limits.min_s:
            skipped.append({"start": seg.start, "end": seg.end, "text": text, "reason": "too_short",
                            "detail": f"{seg.duration:.2f} s < {limits.min_s} s with no neighbour to merge with"})
        elif seg.duration > limits.max_s or count_tokens(text) > limits.max_tokens:
            skipped.append({"start": seg.start, "end": seg.end, "text": text, "reason": "too_long",
                            "detail": f"{seg.duration:.2f} s / {count_tokens(text)} tokens; a single word over the limits"})
        else:
            segments.append(seg)
    return segments, skipped


def refine_word_times(
    words: Sequence[Word],
    audio: np.ndarray,
    sr: int,
    *,
    rel_db: float = -35.0,
    hop_s: float = 0.01,
    keep_s: float = 0.05,
) -> list[Word]:
    """Pull word edges in to where the audio is actually voiced.

    Whisper often stretches the last word of a sentence far into the following silence (and
    starts the first word early), which hides pauses and puts silence into clips. Each word's
    span is shrunk to its first/last frame louder than ``rel_db`` below the file's loud frames,
    keeping ``keep_s`` of margin. Words with no voiced frame keep their times.
    """
    hop = max(1, int(hop_s * sr))
    n = len(audio) // hop
    if n == 0:
        return list(words)
    frames = audio[: n * hop].reshape(n, hop)
    rms = np.sqrt(np.mean(np.square(frames, dtype=np.float64), axis=1))
    loud = float(np.percentile(rms, 95))
    voiced = rms > max(loud * 10 ** (rel_db / 20.0), 1e-4)
    out = []
    for w in words:
        a, b = int(w.start / hop_s), min(n, int(np.ceil(w.end / hop_s)))
        idx = np.flatnonzero(voiced[a:b]) if b > a else np.array([], dtype=int)
        if idx.size == 0:
            out.append(w)
            continue
        start = max(w.start, (a + idx[0]) * hop_s - keep_s)
        end = min(w.end, (a + idx[-1] + 1) * hop_s + keep_s)
        out.append(Word(start, max(end, start + hop_s), w.text))
    return out
