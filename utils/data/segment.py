"""Turn word timestamps into training clips within XTTS's limits, cut only in pauses.

Cut at sentence ends and pauses; never join words of two speakers; split over-long phrases at
the widest inter-word gap (punctuation preferred); merge short neighbours while the result stays
within the limits. Clip edges go inside the quiet gaps that :mod:`utils.data.boundaries` finds
in the audio (or, without audio, the space between word times), padded without reaching the
neighbouring word. Anything that cannot become a clean clip is returned as skipped with a reason.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from utils.data.boundaries import Gap, Levels, edges_in_gap, lead_gap, time_gaps, trail_gap, word_gaps
from utils.data.text import approx_token_count, clean_transcript
from utils.data.words import Word

logger = logging.getLogger(__name__)

SENTENCE_END = (".", "!", "?", "\u2026", "\u3002", "\uff01", "\uff1f", "\u0964", "\u1362")
CLAUSE_END = (",", ";", ":", "\u060c", "\u3001", "\uff0c", "\u1363", "\u1364")


@dataclass(frozen=True)
class Segment:
    """A clip to cut: audio span (padding included), transcript, speaker index and edge margins."""

    start: float
    end: float
    text: str
    speaker: int = 0
    margin_start: float | None = None
    margin_end: float | None = None
    logprob: float | None = None
    speech_s: float = 0.0

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


UNCERTAIN_SPEAKER = -1  # a word near a change of voice that cannot be given to either side
_UNCERTAIN = "a change of voice lies in these words, and the evidence cannot tell where: in no clip"


def _text(words: Sequence[Word]) -> str:
    return clean_transcript("".join(w.text if w.text.startswith(" ") else " " + w.text for w in words))


def _ends_sentence(w: Word) -> bool:
    return w.text.strip().rstrip("\"')]\u201d\u2019").endswith(SENTENCE_END)


def _ends_clause(w: Word) -> bool:
    return w.text.strip().rstrip("\"')]\u201d\u2019").endswith(CLAUSE_END + SENTENCE_END)


@dataclass
class _Plan:
    """Words with the gap after each (None: no clean cut) and a speaker index per word."""

    words: list[Word]
    gaps: list[Gap | None]
    speakers: list[int]

    def hard(self, i: int) -> bool:
        """A speaker change between word i and i+1."""
        return self.speakers[i] != self.speakers[i + 1]


def _phrases(plan: _Plan, pause_s: float) -> list[tuple[int, int]]:
    """(first, last) word index of each phrase: cut at speaker changes, sentence ends, pauses."""
    out, first = [], 0
    n = len(plan.words)
    for i in range(n - 1):
        g = plan.gaps[i]
        if plan.hard(i) or (g is not None and (_ends_sentence(plan.words[i]) or g.width >= pause_s)):
            out.append((first, i))
            first = i + 1
    out.append((first, n - 1))
    return out


def _split_long(plan: _Plan, a: int, b: int, fits: Callable[[int, int], bool]) -> list[tuple[int, int]]:
    """Split words a..b at the widest clean gap (punctuation preferred) until each piece fits."""
    if a == b or fits(a, b):
        return [(a, b)]
    best, best_score = None, -math.inf
    n = b - a + 1
    for i in range(a, b):
        g = plan.gaps[i]
        if g is None:
            continue
        k = i - a + 1
        punct = 0.3 if _ends_clause(plan.words[i]) else 0.0
        balance = 0.1 * (1.0 - abs(k - n / 2) / (n / 2))  # mild preference for the middle
        score = g.width + punct + balance
        if score > best_score:
            best, best_score = i, score
    if best is None:  # no pause to cut at: stays whole and is reported as too long
        return [(a, b)]
    return _split_long(plan, a, best, fits) + _split_long(plan, best + 1, b, fits)


def _merge_short(
    plan: _Plan, pieces: list[tuple[int, int]], limits: SegmentLimits, fits: Callable[[int, int], bool]
) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    w = plan.words
    for a, b in pieces:
        if merged:
            ma, mb = merged[-1]
            g = plan.gaps[mb]
            short = w[mb].end - w[ma].start < limits.short_s or w[b].end - w[a].start < limits.short_s
            if g is not None and not plan.hard(mb) and g.width <= limits.max_merge_gap_s and short and fits(ma, b):
                merged[-1] = (ma, b)
                continue
        merged.append((a, b))
    return merged


def segment_words(
    words: Sequence[Word],
    *,
    total_s: float,
    limits: SegmentLimits = SegmentLimits(),
    count_tokens: Callable[[str], int] = approx_token_count,
    levels: Levels | None = None,
    speakers: Sequence[int] | None = None,
) -> tuple[list[Segment], list[dict]]:
    """Group words into clips cut in pauses.

    Args:
        words: recognised words in time order.
        total_s: length of the audio (clips are clamped to it).
        limits: duration/token limits and cutting preferences.
        count_tokens: text -> token count (default: a safe upper bound without a vocabulary).
        levels: frame levels of the audio; gaps are found in it (None: from word times only).
        speakers: a speaker index per word; words of two speakers never share a clip, and words
            of :data:`UNCERTAIN_SPEAKER` are in none (skipped as ``uncertain_speaker``).

    Returns:
        (segments in time order, skipped spans as dicts with start, end, text, reason, detail).
    """
    keep = [i for i, w in enumerate(words) if w.text.strip()]
    ws = [words[i] for i in keep]
    if not ws:
        return [], []
    spk = [int(speakers[i]) for i in keep] if speakers is not None else [0] * len(ws)
    gaps = word_gaps(ws, levels) if levels is not None else time_gaps(ws)
    plan = _Plan(ws, gaps, spk)
    span_max = limits.max_s - 2 * limits.pad_s

    def fits(a: int, b: int) -> bool:
        return ws[b].end - ws[a].start <= span_max and count_tokens(_text(ws[a : b + 1])) <= limits.max_tokens

    pieces: list[tuple[int, int]] = []
    for a, b in _phrases(plan, limits.pause_s):
        pieces.extend(_split_long(plan, a, b, fits))
    pieces = _merge_short(plan, pieces, limits, fits)
    if levels is not None:
        lead, trail = lead_gap(levels, ws[0].start), trail_gap(levels, ws[-1].end, total_s)
    else:
        lead, trail = Gap(0.0, ws[0].start, 0.0), Gap(ws[-1].end, total_s, total_s)
    segments: list[Segment] = []
    skipped: list[dict] = []
    for a, b in pieces:
        if plan.speakers[a] == UNCERTAIN_SPEAKER:
            skipped.append(_skip(ws, a, b, "uncertain_speaker", _UNCERTAIN))
            continue
        a, b, dropped = _pause_ends(plan, a, b)
        skipped.extend(dropped)
        if b < a:
            continue
        seg, why = _cut(plan, a, b, lead, trail, total_s, limits, count_tokens, levels)
        if why is None:
            segments.append(seg)
        else:
            skipped.append(why)
    return segments, skipped


def _skip(ws: Sequence[Word], a: int, b: int, reason: str, detail: str) -> dict:
    return {
        "start": round(ws[a].start, 3),
        "end": round(ws[b].end, 3),
        "text": _text(ws[a : b + 1]),
        "reason": reason,
        "detail": detail,
    }


def _pause_ends(plan: _Plan, a: int, b: int) -> tuple[int, int, list[dict]]:
    """Words a..b less those at either end that no pause separates from the next speaker's words.

    Only a change of speaker ends a piece where there may be no pause (every other cut is made in
    one). At such a change the piece keeps its words from the first pause on (and up to the last
    one); the words before it are reported as ``no_clean_cut`` instead of losing the whole piece,
    or all of it when it has no pause at all (returned as an empty range, ``b < a``): it could
    only be cut inside a word.
    """
    ws, n = plan.words, len(plan.words)

    def pause(i: int) -> bool:
        return plan.gaps[i] is not None

    first, last = a, b
    if a > 0 and plan.hard(a - 1) and not pause(a - 1):
        while first <= b and not pause(first - 1):
            first += 1
    if b < n - 1 and plan.hard(b) and not pause(b):
        while last >= first and not pause(last):
            last -= 1
    if first > last:
        left = a - 1 if a > 0 and plan.hard(a - 1) and not pause(a - 1) else b
        return a, a - 1, [_no_clean_cut(ws, a, b, left)]
    return (
        first,
        last,
        [_no_clean_cut(ws, lo, hi, left) for lo, hi, left in ((a, first - 1, a - 1), (last + 1, b, b)) if lo <= hi],
    )


def _no_clean_cut(ws: Sequence[Word], lo: int, hi: int, left: int) -> dict:
    """Words lo..hi left out: no pause between words ``left`` and ``left + 1`` (another speaker)."""
    return _skip(
        ws,
        lo,
        hi,
        "no_clean_cut",
        f"no pause between {ws[left].text.strip()!r} and {ws[left + 1].text.strip()!r} (another speaker) near "
        f"{ws[left + 1].start:.2f} s to cut at: the words up to the next pause are left out",
    )


def _cut(
    plan: _Plan,
    a: int,
    b: int,
    lead: Gap,
    trail: Gap,
    total_s: float,
    limits: SegmentLimits,
    count_tokens: Callable[[str], int],
    levels: Levels | None,
) -> tuple[Segment | None, dict | None]:
    """Place the edges of words a..b in their gaps; a reason when that is not possible."""
    ws = plan.words
    text = _text(ws[a : b + 1])
    lo, hi = _edges(plan, a, b, lead, trail, total_s, limits.pad_s)
    base = {"start": round(ws[a].start, 3), "end": round(ws[b].end, 3), "text": text}
    if lo is None or hi is None:
        where = (a - 1, a) if lo is None else (b, b + 1)
        left, right = ws[where[0]], ws[where[1]]
        return None, {
            **base,
            "reason": "no_clean_cut",
            "detail": f"no pause between {left.text.strip()!r} and {right.text.strip()!r} "
            f"near {right.start:.2f} s to cut at",
        }
    lo, hi = float(max(0.0, lo)), float(min(total_s, hi))
    span = {**base, "start": round(lo, 3), "end": round(hi, 3)}
    problem = _length_problem(hi - lo, text, limits, count_tokens)
    if problem is not None:
        return None, {**span, **problem}
    m0 = levels.margin(lo) if levels is not None and lo > 0 else None
    m1 = levels.margin(hi) if levels is not None and hi < total_s - 1e-3 else None
    if (m0 is not None and m0 <= 0.0) or (m1 is not None and m1 <= 0.0):
        return None, {
            **span,
            "reason": "edge_in_speech",
            "detail": f"an edge falls in a voiced frame (margins {m0}, {m1})",
        }
    probs = [max(w.probability, 1e-6) for w in ws[a : b + 1]]
    logprob = sum(math.log(p) for p in probs) / len(probs)
    speech = sum(w.end - w.start for w in ws[a : b + 1])
    return Segment(
        round(lo, 3),
        round(hi, 3),
        text,
        plan.speakers[a],
        None if m0 is None else round(m0, 3),
        None if m1 is None else round(m1, 3),
        round(logprob, 4),
        round(speech, 3),
    ), None


def _edges(
    plan: _Plan, a: int, b: int, lead: Gap, trail: Gap, total_s: float, pad_s: float
) -> tuple[float | None, float | None]:
    """Start and end of the clip of words a..b inside the gaps around them (None: no gap on that side)."""
    ws = plan.words
    before = plan.gaps[a - 1] if a > 0 else None
    after = plan.gaps[b] if b + 1 < len(ws) else None
    lo = max(0.0, lead.end - pad_s) if a == 0 else (edges_in_gap(before, pad_s)[1] if before else None)
    hi = min(total_s, trail.start + pad_s) if b + 1 == len(ws) else (edges_in_gap(after, pad_s)[0] if after else None)
    return lo, hi


def _length_problem(
    seconds: float, text: str, limits: SegmentLimits, count_tokens: Callable[[str], int]
) -> dict[str, str] | None:
    """Why a clip of ``seconds`` with ``text`` cannot be kept as it is (None: within the limits)."""
    if seconds < limits.min_s:
        return {"reason": "too_short", "detail": f"{seconds:.2f} s < {limits.min_s} s with no neighbour to merge with"}
    if seconds > limits.max_s or count_tokens(text) > limits.max_tokens:
        return {
            "reason": "too_long",
            "detail": f"{seconds:.2f} s / {count_tokens(text)} tokens and no pause inside to split at",
        }
    return None
