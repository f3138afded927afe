"""Deterministic train/eval split that never puts clips of one recording on both sides.

Rows are grouped by source (recording) when there are several, else by speaker when there are
several; with a single group the split falls back to single clips and says so. Groups are
ordered by a seeded hash of their name, so adding a new recording later leaves the earlier
groups' sides unchanged.
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from utils.data.csv_io import Row
from utils.errors import DataError

logger = logging.getLogger(__name__)


@dataclass
class Split:
    """Result of :func:`split_rows`; ``info`` goes into ``dataset_report.json``."""

    train: list[Row]
    eval: list[Row]
    info: dict[str, Any] = field(default_factory=dict)


def _rank(seed: int, name: str) -> str:
    return hashlib.sha256(f"{seed}:{name}".encode()).hexdigest()


def split_rows(rows: Sequence[Row], *, eval_fraction: float = 0.1, seed: int = 0) -> Split:
    """Split rows into train and eval.

    Args:
        rows: all rows (``source`` and ``speaker_name`` decide the groups).
        eval_fraction: target share of clips in eval (at least one clip, always).
        seed: changes which groups/clips go to eval; same seed and rows, same split.

    Raises:
        DataError: fewer than 2 rows (eval and train cannot both be non-empty).
    """
    if not 0.0 < eval_fraction < 1.0:
        raise DataError(f"eval fraction must be between 0 and 1, got {eval_fraction}; try 0.1")
    if len(rows) < 2:
        raise DataError(
            f"{len(rows)} usable clip(s): need at least 2 so that train and eval are both non-empty; add more audio"
        )
    sources = {r.source for r in rows if r.source}
    speakers = {r.speaker_name for r in rows}
    if len(sources) > 1:
        by, key = "source", (lambda r: r.source or "(unknown)")
    elif len(speakers) > 1:
        by, key = "speaker", (lambda r: r.speaker_name)
    else:
        by, key = "clip", (lambda r: r.audio_file)
    groups: dict[str, list[Row]] = defaultdict(list)
    for r in rows:
        groups[key(r)].append(r)
    target = max(1, round(eval_fraction * len(rows)))
    order = sorted(groups, key=lambda g: _rank(seed, g))
    eval_groups: list[str] = []
    n_eval = 0
    for g in order:
        size = len(groups[g])
        if n_eval >= target:
            break
        if n_eval + size <= max(target * 1.5, target + 1) and n_eval + size < len(rows):
            eval_groups.append(g)
            n_eval += size
    note = ""
    if not eval_groups:
        smallest = min(order, key=lambda g: (len(groups[g]), _rank(seed, g)))
        if len(groups[smallest]) < len(rows):
            eval_groups = [smallest]
            note = f"smallest {by} group ({len(groups[smallest])} clips) went to eval; eval share is above target"
        else:
            by = "clip"
            groups = {r.audio_file: [r] for r in rows}
            order = sorted(groups, key=lambda g: _rank(seed, g))
            eval_groups = order[:target]
    if by == "clip":
        note = note or (
            "one recording/speaker only: split by clip, so eval clips come from the same recording as train clips"
        )
    chosen = set(eval_groups)
    train = [r for r in rows if key_for(by, r) not in chosen]
    evals = [r for r in rows if key_for(by, r) in chosen]
    info = {
        "by": by,
        "seed": seed,
        "eval_fraction": eval_fraction,
        "train_clips": len(train),
        "eval_clips": len(evals),
        "eval_groups": sorted(chosen) if by != "clip" else [],
        "note": note,
    }
    if note:
        logger.warning("split: %s", note)
    return Split(train, evals, info)


def key_for(by: str, row: Row) -> str:
    """The group name of ``row`` when splitting ``by`` source, speaker or clip."""
    if by == "source":
        return row.source or "(unknown)"
    if by == "speaker":
        return row.speaker_name
    return row.audio_file
