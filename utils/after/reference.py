"""Choose speaker reference clips for synthesis from a run's training data; the speaker's rate.

The rule (:data:`RULE`): a good XTTS reference is 6-12 s long, has speech throughout (no long
pause, little silence at either end), no clipped samples, a high signal-to-noise ratio and a
speaking rate typical of the speaker. Every analysed clip gets a list of the criteria it misses;
clips are ranked by (number of criteria missed, distance of the duration from 6-12 s, quality
score), so when no clip meets everything (the demo's clips are 2-4 s) the best available ones
are chosen and the choice says which criteria they miss and why.

All measures are plain signal statistics on 10 ms frames (no model needed):
- speech frames: frame RMS above max(noise floor + 12 dB, loudest frame - 40 dB), with gaps
  shorter than 0.3 s bridged (word gaps are not pauses);
- SNR: 95th minus 10th percentile of frame RMS (dB), capped at 100 (digital silence);
- clipping: share of samples at |x| >= 0.99;
- speaking rate: letters of the normalised transcript per second of speech span.

:func:`speaker_rate` is the speaker's typical seconds per letter over the training rows (from the
wav headers), which the generation guard's length cap and evaluation's timing flags compare with.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from utils.after.asr import letters, metric_text, normalise
from utils.data.audio import load_audio, resample
from utils.data.csv_io import read_coqui_csv
from utils.errors import DataError
from utils.runs import locate_recorded, read_run_config, run_language

logger = logging.getLogger(__name__)

MIN_REF_S = 6.0
MAX_REF_S = 12.0
MIN_SNR_DB = 25.0
MIN_SPEECH_FRACTION = 0.75
MAX_PAUSE_S = 1.0
MAX_EDGE_SILENCE_S = 0.6
MAX_CLIPPED_FRACTION = 1e-4
MAX_RATE_RATIO = 1.35  # speaking rate within [1/1.35, 1.35] x the speaker's median
DEFAULT_S_PER_LETTER = 0.075  # ~13 letters/s, when the speaker's own rate is unknown
RULE = (
    f"duration {MIN_REF_S:g}-{MAX_REF_S:g} s; speech fraction >= {MIN_SPEECH_FRACTION:g}, no pause > "
    f"{MAX_PAUSE_S:g} s, "
    f"<= {MAX_EDGE_SILENCE_S:g} s silence at each end; clipped samples <= {MAX_CLIPPED_FRACTION:g}; "
    f"SNR >= {MIN_SNR_DB:g} dB; speaking rate within x{MAX_RATE_RATIO:g} of the speaker's median. "
    "Ranked by criteria missed, then distance from the duration range, then quality (SNR, speech fraction, rate)."
)

_FRAME_S = 0.025
_HOP_S = 0.010
_BRIDGE_S = 0.3
_ANALYSIS_SR = 16000


@dataclass
class ClipFacts:
    """Measures of one candidate clip and the criteria it misses."""

    path: Path
    text: str
    duration: float
    speech_fraction: float = 0.0
    longest_pause: float = 0.0
    leading_silence: float = 0.0
    trailing_silence: float = 0.0
    clipped_fraction: float = 0.0
    snr_db: float = 0.0
    chars_per_s: float = 0.0
    problems: list[str] = field(default_factory=list)
    score: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in d.items()}


@dataclass
class ReferenceChoice:
    """The chosen clips, every analysed candidate and a note on how the choice went."""

    chosen: list[ClipFacts]
    candidates: list[ClipFacts]
    note: str
    rule: str = RULE

    def to_dict(self, max_candidates: int = 20) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "note": self.note,
            "chosen": [c.to_dict() for c in self.chosen],
            "candidates_analysed": len(self.candidates),
            "top_candidates": [c.to_dict() for c in self.candidates[:max_candidates]],
        }


# --------------------------------------------------------------------------------------------
# Measures
# --------------------------------------------------------------------------------------------


def frame_db(audio: np.ndarray, sr: int, frame_s: float = _FRAME_S, hop_s: float = _HOP_S) -> np.ndarray:
    """RMS of each frame in dBFS (floor -100 dB)."""
    frame, hop = max(1, int(frame_s * sr)), max(1, int(hop_s * sr))
    if audio.size < frame:
        audio = np.pad(audio, (0, frame - audio.size))
    n = 1 + (audio.size - frame) // hop
    idx = np.arange(frame)[None, :] + hop * np.arange(n)[:, None]
    rms = np.sqrt(np.mean(np.square(audio[idx], dtype=np.float64), axis=1))
    return 20.0 * np.log10(np.maximum(rms, 1e-5))


def speech_mask(db: np.ndarray, hop_s: float = _HOP_S, bridge_s: float = _BRIDGE_S) -> tuple[np.ndarray, float]:
    """Frames that carry speech (gaps under ``bridge_s`` filled) and the estimated SNR in dB."""
    floor = float(np.percentile(db, 10))
    loud = float(np.percentile(db, 95))
    snr = min(100.0, max(0.0, loud - floor))
    threshold = max(floor + 12.0, float(db.max()) - 40.0)
    mask = db > threshold
    gap = int(round(bridge_s / hop_s))
    idx = np.flatnonzero(mask)
    for a, b in zip(idx[:-1], idx[1:], strict=True):
        if 1 < b - a <= gap:
            mask[a:b] = True
    return mask, snr


def _runs(mask: np.ndarray, value: bool) -> list[tuple[int, int]]:
    """(start, length) of each run of ``value`` in a boolean array."""
    out, start = [], None
    for i, v in enumerate(mask):
        if v == value and start is None:
            start = i
        elif v != value and start is not None:
            out.append((start, i - start))
            start = None
    if start is not None:
        out.append((start, len(mask) - start))
    return out


def analyse_clip(path: str | os.PathLike, text: str = "", language: str = "en") -> ClipFacts:
    """Measure one clip (see the module docstring); ``problems`` is filled by :func:`choose_references`."""
    audio, sr = load_audio(path, target_sr=None)
    clipped = float(np.count_nonzero(np.abs(audio) >= 0.99)) / max(1, audio.size)
    audio16 = resample(audio, sr, _ANALYSIS_SR)
    db = frame_db(audio16, _ANALYSIS_SR)
    mask, snr = speech_mask(db)
    facts = ClipFacts(path=Path(path), text=text, duration=audio.size / sr, clipped_fraction=clipped, snr_db=snr)
    speech = np.flatnonzero(mask)
    if speech.size == 0:
        return facts
    first, last = int(speech[0]), int(speech[-1])
    span = (last - first + 1) * _HOP_S
    inner = mask[first : last + 1]
    pauses = [length for _, length in _runs(inner, False)]
    facts.speech_fraction = float(mask.mean())
    facts.longest_pause = max(pauses, default=0) * _HOP_S
    facts.leading_silence = first * _HOP_S
    facts.trailing_silence = max(0.0, facts.duration - (last + 1) * _HOP_S - (_FRAME_S - _HOP_S))
    if text:
        facts.chars_per_s = letters(normalise(text, language)) / max(span, 1e-3)
    return facts


# --------------------------------------------------------------------------------------------
# Choice
# --------------------------------------------------------------------------------------------


def _problems(f: ClipFacts, median_rate: float | None) -> list[str]:
    p = []
    if not MIN_REF_S <= f.duration <= MAX_REF_S:
        p.append(f"duration {f.duration:.1f} s outside {MIN_REF_S:g}-{MAX_REF_S:g} s")
    if f.clipped_fraction > MAX_CLIPPED_FRACTION:
        p.append(f"clipping: {f.clipped_fraction:.2%} of samples at full scale")
    if f.snr_db < MIN_SNR_DB:
        p.append(f"SNR {f.snr_db:.0f} dB < {MIN_SNR_DB:g} dB")
    if f.speech_fraction < MIN_SPEECH_FRACTION:
        p.append(f"speech in {f.speech_fraction:.0%} of the clip < {MIN_SPEECH_FRACTION:.0%}")
    if f.longest_pause > MAX_PAUSE_S:
        p.append(f"pause of {f.longest_pause:.1f} s > {MAX_PAUSE_S:g} s")
    if max(f.leading_silence, f.trailing_silence) > MAX_EDGE_SILENCE_S:
        p.append(
            f"silence at the ends ({f.leading_silence:.1f} s / {f.trailing_silence:.1f} s) > {MAX_EDGE_SILENCE_S:g} s"
        )
    if median_rate and f.chars_per_s > 0:
        ratio = f.chars_per_s / median_rate
        if not 1 / MAX_RATE_RATIO <= ratio <= MAX_RATE_RATIO:
            p.append(
                f"speaking rate {f.chars_per_s:.1f} letters/s is x{ratio:.2f} the speaker's median {median_rate:.1f}"
            )
    return p


def _quality(f: ClipFacts, median_rate: float | None) -> float:
    rate = abs(math.log(f.chars_per_s / median_rate)) if (median_rate and f.chars_per_s > 0) else 0.0
    return min(f.snr_db, 60.0) / 60.0 + f.speech_fraction - rate


def _duration_distance(d: float) -> float:
    return max(0.0, MIN_REF_S - d, d - MAX_REF_S)


def choose_references(
    clips: Iterable[tuple[str | os.PathLike, str]],
    *,
    count: int = 3,
    language: str = "en",
    max_candidates: int = 200,
) -> ReferenceChoice:
    """Choose up to ``count`` reference clips from ``(audio path, transcript)`` pairs.

    The durations come from the file headers; the ``max_candidates`` clips closest to the
    6-12 s range are analysed (:func:`analyse_clip`), then ranked (see :data:`RULE`).

    Raises:
        DataError: no readable clip.
    """
    headers = []
    for path, text in clips:
        try:
            info = sf.info(str(path))
        except (sf.LibsndfileError, RuntimeError, OSError):
            logger.info("reference choice: %s is unreadable; skipped", path)
            continue
        headers.append((Path(path), text, info.frames / max(1, info.samplerate)))
    if not headers:
        raise DataError(
            "no readable audio among the training clips; cannot choose a speaker reference (pass --speaker-wav)"
        )
    headers.sort(key=lambda h: (_duration_distance(h[2]), -h[2]))
    facts = [analyse_clip(p, t, language) for p, t, _ in headers[:max_candidates]]
    rates = [f.chars_per_s for f in facts if f.chars_per_s > 0]
    median_rate = float(np.median(rates)) if rates else None
    for f in facts:
        f.problems = _problems(f, median_rate)
        f.score = _quality(f, median_rate)
    facts.sort(key=lambda f: (len(f.problems), _duration_distance(f.duration), -f.score))
    chosen = facts[:count]
    return ReferenceChoice(chosen=chosen, candidates=facts, note=_note(chosen, facts, headers))


def _note(chosen: list[ClipFacts], facts: list[ClipFacts], headers: list) -> str:
    clean = sum(1 for f in facts if not f.problems)
    if chosen and not any(f.problems for f in chosen):
        return f"{len(chosen)} clip(s) meet every criterion ({clean} of {len(facts)} analysed do)"
    longest = max(h[2] for h in headers)
    parts = [f"only {clean} of {len(facts)} analysed clips meet every criterion; the best available were chosen"]
    if longest < MIN_REF_S:
        parts.append(
            f"no training clip is {MIN_REF_S:g} s or longer (longest {longest:.1f} s), so shorter ones were used"
        )
    missed = Counter(p.split(" ")[0] for f in chosen for p in f.problems)
    if missed:
        parts.append("chosen clips miss: " + ", ".join(f"{k} ({v})" for k, v in missed.items()))
    return "; ".join(parts)


# --------------------------------------------------------------------------------------------
# Run folders
# --------------------------------------------------------------------------------------------


def run_rows(run_dir: str | os.PathLike, split: str = "train") -> list[Any]:
    """The rows a run kept for ``split`` ("train"/"eval"): its CSV minus the preflight's exclusions.

    Raises:
        DataError: no preflight_report.json in the run, or its CSV is gone.
    """
    report_path = Path(run_dir) / "preflight_report.json"
    try:
        report = json.loads(report_path.read_text(encoding="utf-8"))[split]
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(
            f"cannot read the {split} rows of {run_dir} from {report_path.name} ({exc}); pass the reference clips "
            "yourself (--speaker-wav)" + (" and the sentences (--sentences)" if split == "eval" else "")
        ) from exc
    csv_path = locate_recorded(run_dir, report["csv"])  # as recorded, or relative as older runs wrote it
    if not csv_path.is_file():
        raise DataError(
            f"{csv_path} (the run's {split} metadata) is gone; pass the reference clips yourself (--speaker-wav)"
        )
    excluded = {e["row"] for e in report.get("excluded", [])}
    return [r for r in read_coqui_csv(csv_path) if r.row not in excluded]


def main_speaker(rows: list[Any]) -> str | None:
    """The most frequent speaker_name among ``rows``."""
    counts = Counter(r.speaker_name for r in rows)
    return counts.most_common(1)[0][0] if counts else None


def choose_references_for_run(
    run_dir: str | os.PathLike, *, count: int = 3, speaker: str | None = None, language: str | None = None
) -> ReferenceChoice:
    """:func:`choose_references` on a run's training rows of one speaker (default: the most frequent)."""
    rows = run_rows(run_dir, "train")
    speaker = speaker or main_speaker(rows)
    rows = [r for r in rows if r.speaker_name == speaker]
    if language is None:
        language = run_language(read_run_config(run_dir))
    choice = choose_references([(r.path, r.text) for r in rows], count=count, language=language)
    logger.info(
        "reference clips for speaker %r: %s; %s", speaker, ", ".join(c.path.name for c in choice.chosen), choice.note
    )
    return choice


def speaker_rate(clips: Iterable[tuple[Any, str]], language: str) -> float:
    """Median seconds per letter over ``(audio path, text)`` pairs (wav headers only); the default if none."""
    rates = []
    for path, text in list(clips)[:500]:
        try:
            info = sf.info(str(path))
        except (sf.LibsndfileError, RuntimeError, OSError):
            continue
        n = letters(metric_text(text, language))
        if n:
            rates.append(info.frames / info.samplerate / n)
    return float(np.median(rates)) if rates else DEFAULT_S_PER_LETTER
