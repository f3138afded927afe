"""Transcript checks: flag clips whose text likely disagrees with their audio, for a person to review.

Three checks, each with its threshold stated here and in the report:

- speaking rate: characters per second more than ``RATE_FACTOR`` times above or below the
  speaker's median (needs at least ``MIN_CLIPS_FOR_RATE`` clips of that speaker);
- ASR confidence: mean log word probability under ``MIN_LOGPROB`` (a geometric-mean word
  probability under 0.5);
- optional second ASR pass: character error rate of the transcript against a re-transcription
  of the clip above ``MAX_CER``.

Flagged clips stay in the dataset; ``review.csv`` (audio_file, text, speaker, reason, detail)
lists them, one line per clip and reason, so a person (or the web UI) can fix or drop them.
"""

from __future__ import annotations

import csv
import logging
import os
import re
import statistics
import unicodedata
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

REVIEW_NAME = "review.csv"
RATE_FACTOR = 1.6
MIN_CLIPS_FOR_RATE = 5
MIN_LOGPROB = -0.7
MAX_CER = 0.3


def _norm(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).casefold()
    text = "".join(ch if not unicodedata.category(ch).startswith("P") else " " for ch in text)
    return re.sub(r"\s+", " ", text).strip()


def cer(reference: str, hypothesis: str) -> float:
    """Character error rate (edit distance over reference length) of normalised texts."""
    r, h = _norm(reference), _norm(hypothesis)
    if not r:
        return 0.0 if not h else 1.0
    prev = list(range(len(h) + 1))
    for i, rc in enumerate(r, start=1):
        cur = [i] + [0] * len(h)
        for j, hc in enumerate(h, start=1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (rc != hc))
        prev = cur
    return prev[-1] / len(r)


def chars_per_second(text: str, seconds: float) -> float:
    """Spoken characters (letters and digits) per second of clip."""
    return sum(ch.isalnum() for ch in text) / seconds if seconds > 0 else 0.0


def check_clips(
    clips: dict[str, dict[str, Any]],
    texts: dict[str, str],
    speakers: dict[str, str],
    *,
    recheck: Callable[[str], str] | None = None,
) -> list[dict[str, Any]]:
    """Run the checks over clips; store each clip's results in its ``checks`` and return the flags.

    Args:
        clips: report entries by audio_file (``duration`` and, from ASR, ``logprob``).
        texts / speakers: transcript and speaker_name by audio_file.
        recheck: optional audio_file -> re-transcribed text (second ASR pass).

    Returns:
        One dict per flag: audio_file, text, speaker, reason, detail.
    """
    by_speaker: dict[str, list[float]] = defaultdict(list)
    rates: dict[str, float] = {}
    for name, meta in clips.items():
        if name in texts and meta.get("duration"):
            rates[name] = chars_per_second(texts[name], float(meta["duration"]))
            by_speaker[speakers.get(name, "")].append(rates[name])
    medians = {s: statistics.median(v) for s, v in by_speaker.items() if len(v) >= MIN_CLIPS_FOR_RATE}
    flags: list[dict[str, Any]] = []
    for name in sorted(texts):
        meta = clips.get(name, {})
        text, spk = texts[name], speakers.get(name, "")
        checks: dict[str, Any] = {}
        found: list[tuple[str, str]] = []
        if name in rates:
            checks["chars_per_s"] = round(rates[name], 2)
            med = medians.get(spk)
            if med:
                ratio = rates[name] / med
                checks["rate_vs_median"] = round(ratio, 2)
                if ratio > RATE_FACTOR or ratio < 1 / RATE_FACTOR:
                    found.append(
                        (
                            "speaking_rate",
                            f"{rates[name]:.1f} chars/s vs the speaker's median {med:.1f} "
                            f"(outside x{RATE_FACTOR} either way)",
                        )
                    )
        if meta.get("logprob") is not None and meta["logprob"] < MIN_LOGPROB:
            found.append(("low_asr_confidence", f"mean log word probability {meta['logprob']:.2f} < {MIN_LOGPROB}"))
        if recheck is not None:
            hyp = recheck(name)
            checks["recheck_text"], checks["cer"] = hyp, round(cer(text, hyp), 3)
            if checks["cer"] > MAX_CER:
                found.append(("transcript_mismatch", f"CER {checks['cer']:.2f} > {MAX_CER} against {hyp!r}"))
        checks["flags"] = [r for r, _ in found]
        if name in clips:
            clips[name]["checks"] = checks
        flags.extend({"audio_file": name, "text": text, "speaker": spk, "reason": r, "detail": d} for r, d in found)
    return flags


def write_review(root: str | os.PathLike, flags: list[dict[str, Any]]) -> Path:
    """Write ``review.csv`` (comma-separated, quoted, UTF-8) in the dataset folder."""
    path = Path(root) / REVIEW_NAME
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["audio_file", "text", "speaker", "reason", "detail"])
        w.writeheader()
        w.writerows(flags)
    os.replace(tmp, path)
    return path


def read_review(path: str | os.PathLike) -> list[dict[str, str]]:
    """The rows of a review file."""
    with Path(path).open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def summary(flags: list[dict[str, Any]], n_clips: int, rechecked: bool) -> dict[str, Any]:
    """What goes into the report's ``review`` entry."""
    counts: dict[str, int] = defaultdict(int)
    for f in flags:
        counts[f["reason"]] += 1
    return {
        "file": REVIEW_NAME,
        "clips_checked": n_clips,
        "clips_flagged": len({f["audio_file"] for f in flags}),
        "by_reason": dict(counts),
        "second_asr_pass": rechecked,
        "thresholds": {
            "rate_factor": RATE_FACTOR,
            "min_clips_for_rate": MIN_CLIPS_FOR_RATE,
            "min_logprob": MIN_LOGPROB,
            "max_cer": MAX_CER,
        },
    }


def recheck_with(transcriber: Callable[..., tuple[list, str]], root: str | os.PathLike) -> Callable[[str], str]:
    """A ``recheck`` callable that re-transcribes a clip file with ``transcriber``."""
    from utils.data.audio import load_audio

    def run(name: str) -> str:
        audio, _ = load_audio(Path(root) / name, 16000)
        words, _lang = transcriber(np.asarray(audio, dtype=np.float32))
        return "".join(w.text for w in words).strip()

    return run
