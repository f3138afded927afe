"""Deterministic train/eval split: no recording, no speaker and no sentence on both sides.

Clips are joined into groups when they share a recording (source), a speaker or a normalised
sentence (connected components), and whole groups go to eval. When that leaves a single group
(one speaker, say), the split drops keys in a fixed order (speaker, then source), says so in
``note``, and as a last resort splits by clip. Groups are ordered by a seeded hash of their
smallest member key, so adding a new recording later leaves the earlier groups' sides unchanged.
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from utils.data.csv_io import Row
from utils.data.text import normalise_for_dedupe
from utils.errors import DataError

logger = logging.getLogger(__name__)

KEY_ORDER: tuple[tuple[str, ...], ...] = (
    ("source", "speaker", "text"),
    ("source", "text"),
    ("speaker", "text"),
    ("text",),
)


@dataclass
class Split:
    """Result of :func:`split_rows`; ``info`` goes into ``dataset_report.json``."""

    train: list[Row]
    eval: list[Row]
    info: dict[str, Any] = field(default_factory=dict)


def _rank(seed: int, name: str) -> str:
    return hashlib.sha256(f"{seed}:{name}".encode()).hexdigest()


def _key(kind: str, row: Row) -> str | None:
    if kind == "source":
        return f"source:{row.source}" if row.source else None
    if kind == "speaker":
        return f"speaker:{row.speaker_name}"
    text = normalise_for_dedupe(row.text)
    return f"text:{text}" if text else None


def group_rows(rows: Sequence[Row], keys: Sequence[str]) -> dict[str, list[Row]]:
    """Connected components of rows that share any of ``keys``; named by their smallest key."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    own = []
    for r in rows:
        ks = [k for k in (_key(kind, r) for kind in keys) if k is not None] or [f"clip:{r.audio_file}"]
        own.append(ks)
        for k in ks[1:]:
            a, b = find(ks[0]), find(k)
            if a != b:
                parent[max(a, b)] = min(a, b)
    groups: dict[str, list[Row]] = defaultdict(list)
    for r, ks in zip(rows, own):
        groups[find(ks[0])].append(r)
    return dict(groups)


def _choose_eval(groups: dict[str, list[Row]], n_rows: int, target: int, seed: int) -> list[str]:
    order = sorted(groups, key=lambda g: _rank(seed, g))
    chosen, n_eval = [], 0
    for g in order:
        if n_eval >= target:
            break
        size = len(groups[g])
        if n_eval + size <= max(target * 1.5, target + 1) and n_eval + size < n_rows:
            chosen.append(g)
            n_eval += size
    if not chosen:
        smallest = min(order, key=lambda g: (len(groups[g]), _rank(seed, g)))
        if len(groups[smallest]) < n_rows:
            chosen = [smallest]
    return chosen


def split_rows(rows: Sequence[Row], *, eval_fraction: float = 0.1, seed: int = 0) -> Split:
    """Split rows into train and eval.

    Args:
        rows: all rows (``source``, ``speaker_name`` and ``text`` decide the groups).
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
    target = max(1, round(eval_fraction * len(rows)))
    by, chosen, groups = "clip", [], {}
    for keys in KEY_ORDER:
        groups = group_rows(rows, keys)
        chosen = _choose_eval(groups, len(rows), target, seed) if len(groups) > 1 else []
        if chosen:
            by = "+".join(keys)
            break
    notes = []
    if not chosen:
        groups = {r.audio_file: [r] for r in rows}
        chosen = sorted(groups, key=lambda g: _rank(seed, g))[:target]
        notes.append(
            "every clip shares a recording, speaker or sentence with the others: split by clip, so "
            "eval clips come from the same recording and speaker as train clips"
        )
    elif by != "+".join(KEY_ORDER[0]):
        missing = " and ".join(k for k in ("source", "speaker") if k not in by.split("+"))
        notes.append(
            f"grouping by recording, speaker and sentence leaves one group: split by {by}, so the same "
            f"{missing} appears in train and eval"
        )
    n_eval = sum(len(groups[g]) for g in chosen)
    if n_eval > max(target * 1.5, target + 1):
        notes.append(f"smallest group ({n_eval} clips) went to eval; eval share is above target")
    eval_ids = {id(r) for g in chosen for r in groups[g]}
    train = [r for r in rows if id(r) not in eval_ids]
    evals = [r for r in rows if id(r) in eval_ids]
    note = "; ".join(notes)
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
