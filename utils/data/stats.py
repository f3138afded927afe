"""Dataset statistics that feed the trainer: hours, clips, speakers, characters per second."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from typing import Any

import soundfile as sf

from utils.data.csv_io import Row

logger = logging.getLogger(__name__)


def _duration(row: Row) -> float:
    if row.duration is not None:
        return row.duration
    info = sf.info(str(row.path))
    return info.frames / info.samplerate


def dataset_stats(rows: Iterable[Row]) -> dict[str, Any]:
    """Totals over rows (durations from the preflight when set, else from the file headers).

    Returns:
        ``hours``, ``seconds``, ``clips``, ``speakers`` (count), ``clips_per_speaker``,
        ``chars_per_second`` (transcript characters over audio seconds), ``mean_clip_s``,
        ``min_clip_s``, ``max_clip_s``.
    """
    durations: list[float] = []
    chars = 0
    speakers: Counter[str] = Counter()
    for r in rows:
        durations.append(_duration(r))
        chars += len(r.text)
        speakers[r.speaker_name] += 1
    seconds = float(sum(durations))
    return {
        "hours": seconds / 3600.0,
        "seconds": seconds,
        "clips": len(durations),
        "speakers": len(speakers),
        "clips_per_speaker": dict(speakers.most_common()),
        "chars_per_second": chars / seconds if seconds else 0.0,
        "mean_clip_s": seconds / len(durations) if durations else 0.0,
        "min_clip_s": min(durations) if durations else 0.0,
        "max_clip_s": max(durations) if durations else 0.0,
    }
