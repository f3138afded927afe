"""Where clips may be cut: quiet gaps between words, measured on the audio.

ASR word times are off by tens to hundreds of milliseconds, so cutting at them puts clip edges
inside words. Here the audio decides: 10 ms frame levels against a threshold set from the file's
own noise floor and speech level; between two neighbouring words the widest quiet run near their
boundary is the gap, and its quietest frame is the cut point. Clip edges are placed inside a gap
with a pad that never reaches the next word, and each edge's margin (distance to the nearest
voiced frame) is measured for the report.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from utils.data.words import Word

logger = logging.getLogger(__name__)

HOP_S = 0.01


@dataclass(frozen=True)
class Levels:
    """Frame levels of one recording (10 ms frames)."""

    db: np.ndarray
    quiet: np.ndarray
    threshold_db: float
    hop_s: float = HOP_S

    @property
    def total_s(self) -> float:
        return len(self.db) * self.hop_s

    def frame(self, t: float) -> int:
        return int(np.clip(round(t / self.hop_s), 0, len(self.db)))

    def margin(self, t: float, max_s: float = 1.0) -> float:
        """Seconds from ``t`` to the nearest voiced frame (0 when ``t`` is in a voiced frame)."""
        i = min(max(int(t / self.hop_s), 0), len(self.quiet) - 1)
        if not self.quiet[i]:
            return 0.0
        k = int(max_s / self.hop_s)
        lo, hi = max(0, i - k), min(len(self.quiet), i + k + 1)
        loud = np.flatnonzero(~self.quiet[lo:hi]) + lo
        if loud.size == 0:
            return max_s
        # distance to the nearest edge of a voiced frame
        d = np.where(loud < i, t - (loud + 1) * self.hop_s, loud * self.hop_s - t)
        return float(max(0.0, d.min()))


@dataclass(frozen=True)
class Gap:
    """A quiet run between two words: [start, end] in seconds and the quietest point."""

    start: float
    end: float
    cut: float

    @property
    def width(self) -> float:
        return self.end - self.start


def band_power(
    audio: np.ndarray, sr: int, bands_hz: Sequence[tuple[float, float]], hop_s: float = HOP_S, win_s: float = 0.032
) -> np.ndarray:
    """Power in frequency bands per ``hop_s`` frame (Hann window of ``win_s`` centred on the frame).

    Returns:
        (frames, bands) array; frame i covers [i * hop_s, (i + 1) * hop_s). One short-time
        Fourier transform serves the frame levels and the fingerprint.
    """
    hop, win = max(1, int(round(hop_s * sr))), max(2, int(round(win_s * sr)))
    n = len(audio) // hop
    out = np.zeros((n, len(bands_hz)))
    if n == 0:
        return out
    x = np.pad(np.asarray(audio, dtype=np.float32), (win // 2 - hop // 2, win))
    bins = np.fft.rfftfreq(win, 1.0 / sr)
    pick = np.stack([(bins >= lo) & (bins <= hi) for lo, hi in bands_hz], axis=1).astype(np.float64) / (win * win)
    window = np.hanning(win).astype(np.float32)
    for k0 in range(0, n, 4096):  # blocks of frames keep memory flat for hour-long inputs
        idx = np.arange(win)[None, :] + hop * np.arange(k0, min(n, k0 + 4096))[:, None]
        f = np.fft.rfft(x[idx] * window, axis=1)
        out[k0 : k0 + len(f)] = (f.real**2 + f.imag**2) @ pick  # band sums as one matrix product
    return out


def frame_levels(
    audio: np.ndarray,
    sr: int,
    hop_s: float = HOP_S,
    min_rise_db: float = 8.0,
    peak_rise_db: float = 10.0,
    near_s: float = 0.15,
    power: np.ndarray | None = None,
) -> Levels:
    """Frame level in dB (speech band, 80 Hz up) and which frames are quiet.

    Rumble below 80 Hz (handling, air conditioning) swings the level over whole pauses and is
    left out. The threshold sits ``min_rise_db`` above the noise floor (5th percentile), or 25 dB
    below the speech level (95th percentile) when that is higher and still under a quarter of
    the way from floor to speech: silent gaps in noisy audio and in clean digital silence both
    count.

    Args:
        power: the speech-band power per frame when already computed (see :func:`band_power`).
    """
    if power is None:
        power = band_power(audio, sr, [(80.0, sr / 2)], hop_s)[:, 0]
    n = len(power)
    if n == 0:
        return Levels(np.zeros(0), np.zeros(0, dtype=bool), 0.0, hop_s)
    db = 10 * np.log10(power + 1e-10)
    floor, speech = float(np.percentile(db, 5)), float(np.percentile(db, 95))
    thr = max(floor + min_rise_db, min(floor + 0.25 * (speech - floor), speech - 25.0))
    quiet = db < thr
    # hysteresis: a weak loud run (never ``peak_rise_db`` above the threshold) far from any strong
    # one is a noise swell (pink noise moves several dB over tens of ms); near a word it is a weak
    # consonant (a final 's' or 't' after its closure) and stays speech
    runs = _runs(~quiet)
    strong = np.zeros(n, dtype=bool)
    for a, b in runs:
        if db[a:b].max() >= thr + peak_rise_db:
            strong[a:b] = True
    reach = int(round(near_s / hop_s))
    near = np.convolve(strong.astype(np.int8), np.ones(2 * reach + 1, dtype=np.int8), mode="same") > 0
    for a, b in runs:
        if not near[a:b].any():
            quiet[a:b] = True
    return Levels(db, quiet, thr, hop_s)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of each run of True in ``mask``."""
    d = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist()))


def _quiet_runs(levels: Levels, lo: int, hi: int) -> list[tuple[int, int]]:
    return [(lo + a, lo + b) for a, b in _runs(levels.quiet[lo:hi])]


def find_gap(
    levels: Levels, left_end: float, right_start: float, *, lo_s: float, hi_s: float, min_gap_s: float = 0.03
) -> Gap | None:
    """The widest quiet run in [lo_s, hi_s] near the boundary between two words, or None.

    Runs that touch the window's edges are clipped to it. Among runs of at least ``min_gap_s``
    the score is width minus half the distance to the ASR boundary, so a wide pause wins over a
    short dip inside a word next to it.
    """
    lo, hi = levels.frame(lo_s), levels.frame(hi_s)
    centre = (left_end + right_start) / 2
    best, best_score = None, -np.inf
    for a, b in _quiet_runs(levels, lo, hi):
        width = (b - a) * levels.hop_s
        if width < min_gap_s - 1e-9:
            continue
        mid = (a + b) / 2 * levels.hop_s
        score = width - 0.5 * abs(mid - centre)
        if score > best_score:
            best, best_score = (a, b), score
    if best is None:
        return None
    a, b = best
    # a run cut off by the window goes on in the audio: the whole pause is the gap
    while a > 0 and levels.quiet[a - 1]:
        a -= 1
    while b < len(levels.quiet) and levels.quiet[b]:
        b += 1
    # quietest frame, one frame away from both words when the run allows it
    q0, q1 = (a + 1, b - 1) if b - a >= 3 else (a, b)
    k = q0 + int(np.argmin(levels.db[q0:q1]))
    return Gap(a * levels.hop_s, b * levels.hop_s, (k + 0.5) * levels.hop_s)


def snap_words(words: Sequence[Word], levels: Levels, keep_s: float = 0.02) -> list[Word]:
    """Shrink each word's span to its voiced frames (Whisper stretches words into silence)."""
    out = []
    for w in words:
        a, b = levels.frame(w.start), max(levels.frame(w.end), levels.frame(w.start) + 1)
        idx = np.flatnonzero(~levels.quiet[a:b])
        if idx.size == 0:
            out.append(w)
            continue
        start = max(w.start, (a + idx[0]) * levels.hop_s - keep_s)
        end = min(w.end, (a + idx[-1] + 1) * levels.hop_s + keep_s)
        out.append(Word(start, max(end, start + levels.hop_s), w.text, w.probability))
    return out


def word_gaps(words: Sequence, levels: Levels, *, look_s: float = 0.25, min_gap_s: float = 0.03) -> list[Gap | None]:
    """For each pair of neighbouring words, the quiet gap between them (None: no clean cut there).

    The search window reaches ``look_s`` past each word's ASR edge but never past the middle of
    either word.
    """
    gaps: list[Gap | None] = []
    for a, b in zip(words, words[1:]):
        lo = max((a.start + a.end) / 2, a.end - look_s)
        hi = min((b.start + b.end) / 2, b.start + look_s)
        gaps.append(find_gap(levels, a.end, b.start, lo_s=lo, hi_s=hi, min_gap_s=min_gap_s) if hi > lo else None)
    # Two neighbouring boundaries that found the same pause: the word between them was timed into
    # the pause. ASR starts are more reliable than its (stretched) ends, so the word goes to the
    # side of the pause its start is on, and only that side's boundary keeps the pause.
    for i in range(len(gaps) - 1):
        g, h = gaps[i], gaps[i + 1]
        if g is not None and h is not None and h.start < g.end:
            if words[i + 1].start < (g.start + g.end) / 2:
                gaps[i] = None
            else:
                gaps[i + 1] = None
    return gaps


def lead_gap(levels: Levels, first_start: float, look_s: float = 0.25) -> Gap:
    """The quiet run before the first word (ends at the first voiced frame)."""
    i = levels.frame(first_start + look_s)
    j = levels.frame(max(0.0, first_start - look_s))
    loud = np.flatnonzero(~levels.quiet[j:i]) + j
    start_voiced = loud[0] * levels.hop_s if loud.size else first_start
    return Gap(0.0, start_voiced, 0.0)


def trail_gap(levels: Levels, last_end: float, total_s: float, look_s: float = 0.25) -> Gap:
    """The quiet run after the last word (starts after the last voiced frame)."""
    j = levels.frame(max(0.0, last_end - look_s))
    i = levels.frame(last_end + look_s)
    loud = np.flatnonzero(~levels.quiet[j:i]) + j
    end_voiced = (loud[-1] + 1) * levels.hop_s if loud.size else last_end
    return Gap(end_voiced, total_s, total_s)


def time_gaps(words: Sequence) -> list[Gap | None]:
    """Gaps from word times alone (no audio): the space between words, None where they touch."""
    return [Gap(a.end, b.start, (a.end + b.start) / 2) if b.start > a.end else None for a, b in zip(words, words[1:])]


def edges_in_gap(gap: Gap, pad_s: float) -> tuple[float, float]:
    """(end of the clip before, start of the clip after) inside ``gap``.

    A gap wider than two pads gives each side its pad; a narrower one is cut once, at its
    quietest point.
    """
    if gap.width >= 2 * pad_s:
        return gap.start + pad_s, gap.end - pad_s
    return gap.cut, gap.cut
