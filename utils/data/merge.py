"""Merge dataset folders into a new one: namespaced file names, duplicates removed, sources kept.

Every clip is re-encoded to 22.05 kHz mono 16-bit on the way. A clip is a duplicate when its
decoded audio equals an earlier clip's, or (unless disabled) when the same speaker already has
the same normalised text. Every removed or unreadable row is listed in the report by its CSV
file and line. The merged folder is split again (no recording, speaker or sentence on both
sides, see :mod:`utils.data.split`) and then re-validated with the preflight.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from utils.data.audio import TARGET_SR, load_audio
from utils.data.csv_io import Row, read_coqui_csv
from utils.data.dataset_folder import EVAL_CSV, REPORT_NAME, TRAIN_CSV, DatasetFolder, slug
from utils.data.preflight import run_preflight
from utils.data.text import normalise_for_dedupe  # re-exported for callers
from utils.errors import DataError

logger = logging.getLogger(__name__)


def audio_hash(audio: np.ndarray) -> str:
    """Hash of audio quantised to 16 bits (the format clips are stored in)."""
    pcm = np.round(np.clip(audio, -1.0, 1.0) * 32767).astype("<i2")
    return hashlib.blake2b(pcm.tobytes(), digest_size=16).hexdigest()


def _read_input(path: Path) -> tuple[list[tuple[Path, Row]], dict[str, Any], Path]:
    """(CSV, row) pairs and the source map of one input (a dataset folder or a single CSV)."""
    if path.is_file():
        csvs, root = [path], path.parent
    elif path.is_dir():
        csvs = [path / n for n in (TRAIN_CSV, EVAL_CSV) if (path / n).is_file()]
        root = path
        if not csvs:
            raise DataError(f"{path} has neither {TRAIN_CSV} nor {EVAL_CSV}; pass dataset folders or CSV files")
    else:
        raise DataError(f"input not found: {path}")
    clips: dict[str, Any] = {}
    report = root / REPORT_NAME
    if report.is_file():
        try:
            clips = json.loads(report.read_text(encoding="utf-8")).get("clips", {})
        except ValueError:
            logger.warning("%s is not valid JSON; sources of %s unknown", report, path)
    rows: list[tuple[Path, Row]] = []
    for c in csvs:
        rows.extend((c, r) for r in read_coqui_csv(c))
    return rows, clips, root


def _unique_tag(base: str, tags: set[str]) -> str:
    tag, n = base, 1
    while tag in tags:
        n += 1
        tag = f"{base}-{n}"
    tags.add(tag)
    return tag


def _check_row(
    r: Row, where: dict[str, Any], seen_audio: dict[str, str], seen_text: dict[tuple[str, str], str], dedupe_text: bool
) -> tuple[np.ndarray, str, tuple[str, str]] | dict[str, Any]:
    """(audio, audio hash, text key) of a row to keep, or its removal entry."""
    try:
        audio, _ = load_audio(r.path, TARGET_SR)
    except DataError as exc:
        return {**where, "reason": "unreadable_audio", "detail": str(exc)}
    h = audio_hash(audio)
    if h in seen_audio:
        return {
            **where,
            "reason": "duplicate_audio",
            "detail": f"same audio as {seen_audio[h]}",
            "duplicate_of": seen_audio[h],
        }
    tkey = (r.speaker_name, normalise_for_dedupe(r.text))
    if dedupe_text and tkey[1] and tkey in seen_text:
        return {
            **where,
            "reason": "duplicate_text",
            "detail": f"same speaker and text as {seen_text[tkey]}",
            "duplicate_of": seen_text[tkey],
        }
    return audio, h, tkey


def merge_datasets(
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    dedupe_text: bool = True,
    eval_fraction: float = 0.1,
    seed: int = 0,
    language: str = "en",
    vocab_path: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Merge ``inputs`` into the new dataset folder ``out_dir``.

    Returns:
        The merged dataset report, with ``merge`` (per-input counts and every removed row) and
        ``validation`` (preflight summary of both CSVs).

    Raises:
        DataError: fewer than 2 inputs, an unreadable input, ``out_dir`` already holding a dataset,
            or fewer than 2 clips left.
    """
    from tqdm import tqdm

    if len(inputs) < 2:
        raise DataError("merge needs at least two datasets; pass A B [C ...] --out OUT")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise DataError(f"{out} exists and is not empty; choose a new --out folder (nothing was written)")
    loaded = [(Path(p), *_read_input(Path(p))) for p in inputs]  # all inputs checked before writing
    ds = DatasetFolder(out)
    state = _MergeState(dedupe_text)
    total = sum(len(rows) for _, rows, _, _ in loaded)
    bar = tqdm(total=total, desc="merge", unit="clip", disable=not progress)
    for path, rows, clips, _root in loaded:
        tag = _unique_tag(slug(path.stem if path.is_file() else path.resolve().name, 24), state.tags)
        kept = sum(state.add(ds, path, tag, csv_path, r, clips, bar) for csv_path, r in rows)
        state.per_input.append({"input": str(path), "tag": tag, "rows": len(rows), "kept": kept})
        ds.report["sources"][tag] = {
            "file": str(path),
            "tool": "merge_datasets",
            "clips": kept,
            "skipped": [x for x in state.removed if x["input"] == str(path)],
        }
    bar.close()
    ds.report["merge"] = {"inputs": state.per_input, "removed": state.removed, "dedupe_text": dedupe_text}
    ds.save(eval_fraction=eval_fraction, seed=seed)
    validation = {}
    for name in (TRAIN_CSV, EVAL_CSV):
        rep = run_preflight(out / name, language=language, vocab_path=vocab_path, progress=progress)
        validation[name] = {k: v for k, v in rep.to_dict().items() if k != "excluded"} | {"excluded": rep.excluded}
    ds.report["validation"] = validation
    ds.write_report()
    logger.info("merged %d rows into %s: %d kept, %d removed", total, out, len(ds.rows), len(state.removed))
    return ds.report


class _MergeState:
    """What the merge has seen so far: audio and text keys, removed rows, per-input counts."""

    def __init__(self, dedupe_text: bool) -> None:
        self.dedupe_text = dedupe_text
        self.tags: set[str] = set()
        self.seen_audio: dict[str, str] = {}
        self.seen_text: dict[tuple[str, str], str] = {}
        self.removed: list[dict[str, Any]] = []
        self.per_input: list[dict[str, Any]] = []

    def add(self, ds: DatasetFolder, path: Path, tag: str, csv_path: Path, r: Any, clips: dict, bar: Any) -> bool:
        """Add one row to ``ds`` (True), or record why it was removed (False)."""
        bar.update()
        origin = f"{csv_path}:{r.row}"  # the CSV file and its line: unambiguous across inputs
        rel_in = str(Path(r.audio_file))
        where = {"input": str(path), "csv": str(csv_path), "row": r.row, "audio_file": r.audio_file}
        got = _check_row(r, where, self.seen_audio, self.seen_text, self.dedupe_text)
        if isinstance(got, dict):
            self.removed.append(got)
            return False
        audio, h, tkey = got
        self.seen_audio[h] = origin
        self.seen_text[tkey] = origin
        flat = slug(str(Path(rel_in).with_suffix("")).replace(os.sep, "__"), 120)
        rel, k = f"wavs/{tag}__{flat}.wav", 1
        while rel in ds.report["clips"]:
            k += 1
            rel = f"wavs/{tag}__{flat}-{k}.wav"
        orig_source = clips.get(r.audio_file, {}).get("source") or r.source
        # unknown recording: each clip is its own source; the split still groups by speaker and text
        source = f"{tag}/{orig_source}" if orig_source else f"{tag}/{rel_in}"
        ds.add_clip(
            rel,
            audio,
            r.text,
            speaker=r.speaker_name,
            source=source,
            meta={"origin": f"{path}/{r.audio_file}" if path.is_dir() else origin, "row": origin},
        )
        return True
