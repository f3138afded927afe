"""The dataset folder every data-prep tool writes: ``wavs/``, two CSVs and ``dataset_report.json``.

``dataset_report.json`` keeps what the CSVs cannot: per-clip source and cut times, which input
files are already done (so a re-run only adds new ones), inputs that failed and why, clips that
were skipped and why, the split and the stats.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from utils.data.audio import TARGET_SR, write_wav
from utils.data.csv_io import Row, read_coqui_csv, write_coqui_csv
from utils.data.split import split_rows
from utils.data.stats import dataset_stats
from utils.data.text import clean_transcript, strip_emoji
from utils.errors import DataError

logger = logging.getLogger(__name__)

REPORT_NAME = "dataset_report.json"
TRAIN_CSV = "metadata_train.csv"
EVAL_CSV = "metadata_eval.csv"
FORMAT = "xtts-toolkit-dataset/1"


def fingerprint(path: str | os.PathLike) -> str:
    """Content fingerprint of an input file (size + first and last MiB), cheap for long media."""
    path = Path(path)
    size = path.stat().st_size
    h = hashlib.blake2b(str(size).encode(), digest_size=12)
    with path.open("rb") as f:
        h.update(f.read(1 << 20))
        if size > 2 << 20:
            f.seek(-(1 << 20), os.SEEK_END)
            h.update(f.read(1 << 20))
    return h.hexdigest()


def slug(name: str, max_len: int = 40) -> str:
    """A file-name-safe version of ``name`` (ASCII letters, digits, '-' and '_')."""
    s = re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_")
    return (s or "audio")[:max_len]


class DatasetFolder:
    """Read-modify-write access to a dataset folder.

    Nothing is written until :meth:`add_source` (clips) or :meth:`save` (CSVs and report).
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.report: dict[str, Any] = {
            "format": FORMAT,
            "sources": {},
            "clips": {},
            "failed_inputs": [],
            "ignored_files": [],
        }
        self.rows: list[Row] = []
        self._new_files: list[Path] = []
        report_path = self.root / REPORT_NAME
        if report_path.is_file():
            try:
                loaded = json.loads(report_path.read_text(encoding="utf-8"))
            except (ValueError, UnicodeDecodeError) as exc:
                raise DataError(
                    f"{report_path} is not valid JSON ({exc}); restore it or use a new output folder"
                ) from exc
            self.report.update(loaded)
        elif any((self.root / n).exists() for n in (TRAIN_CSV, EVAL_CSV)):
            raise DataError(
                f"{self.root} holds metadata CSVs but no {REPORT_NAME}; it was not made by this toolkit, "
                f"choose a new output folder (or merge it in with scripts/merge_datasets.py)"
            )
        clips = self.report["clips"]
        for name in (TRAIN_CSV, EVAL_CSV):
            if (self.root / name).is_file():
                for r in read_coqui_csv(self.root / name):
                    meta = clips.get(r.audio_file, {})
                    r.source = meta.get("source", r.source)
                    if "duration" in meta:
                        r.duration = meta["duration"]
                    self.rows.append(r)

    def source_for(self, fp: str) -> str | None:
        """The source id of an input already done (by content fingerprint), else None."""
        for sid, meta in self.report["sources"].items():
            if meta.get("fingerprint") == fp:
                return sid
        return None

    def new_source_id(self, path: Path, fp: str) -> str:
        base = f"{slug(path.stem)}-{fp[:8]}"
        sid, n = base, 1
        while sid in self.report["sources"]:
            n += 1
            sid = f"{base}-{n}"
        return sid

    def add_source(
        self,
        source_id: str,
        *,
        file: str,
        fp: str,
        clips: list[tuple],
        speaker: str,
        skipped: list[dict[str, Any]],
        tool: str,
        extra: dict[str, Any] | None = None,
    ) -> int:
        """Write one input's clips to ``wavs/`` and remember them.

        Args:
            clips: (audio at 22.05 kHz, text, start s, end s[, meta]) per clip, in time order;
                ``meta`` goes into the clip's report entry, and its ``speaker`` (if any) replaces
                ``speaker`` for that clip.
            skipped: segments/cues not turned into clips, each with a ``reason``.

        Returns:
            Number of clips written.
        """
        for k, (audio, text, start, end, *rest) in enumerate(clips, start=1):
            meta = dict(rest[0]) if rest else {}
            spk = meta.pop("speaker", speaker)
            self.add_clip(
                f"wavs/{source_id}_{k:04d}.wav",
                audio,
                text,
                speaker=spk,
                source=source_id,
                meta={"start": round(start, 3), "end": round(end, 3), **meta},
            )
        self.report["sources"][source_id] = {
            "file": file,
            "fingerprint": fp,
            "tool": tool,
            "speaker": speaker,
            "clips": len(clips),
            "seconds_kept": round(sum(len(c[0]) for c in clips) / TARGET_SR, 3),
            "skipped": skipped,
            **(extra or {}),
        }
        return len(clips)

    def add_clip(
        self, rel: str, audio: np.ndarray, text: str, *, speaker: str, source: str, meta: dict[str, Any] | None = None
    ) -> Row:
        """Write one clip (22.05 kHz mono 16-bit) at ``rel`` and add its row."""
        self._new_files.append(write_wav(self.root / rel, audio, TARGET_SR))
        duration = len(audio) / TARGET_SR
        text, emoji = strip_emoji(clean_transcript(text))
        meta = dict(meta or {})
        if emoji:
            meta["emoji_stripped"] = emoji
            self.report.setdefault("emoji_stripped", []).append({"clip": rel, "removed": emoji})
        row = Row(
            row=0,
            audio_file=rel,
            path=(self.root / rel).resolve(),
            text=text,
            speaker_name=speaker,
            source=source,
            duration=duration,
        )
        self.rows.append(row)
        self.report["clips"][rel] = {"source": source, "speaker": speaker, **meta, "duration": round(duration, 4)}
        return row

    def write_report(self) -> Path:
        """Write ``dataset_report.json`` (atomically)."""
        path = self.root / REPORT_NAME
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        return path

    def add_failed(self, file: str, reason: str) -> None:
        self.report["failed_inputs"] = [f for f in self.report["failed_inputs"] if f["file"] != file]
        self.report["failed_inputs"].append({"file": file, "reason": reason})

    def clear_failed(self, file: str) -> None:
        self.report["failed_inputs"] = [f for f in self.report["failed_inputs"] if f["file"] != file]

    def rollback(self) -> None:
        """Delete the clips written by this session (used when the folder cannot be saved)."""
        for f in self._new_files:
            f.unlink(missing_ok=True)
        self._new_files = []

    def save(self, *, eval_fraction: float = 0.1, seed: int = 0) -> dict[str, Any]:
        """Split all rows, write both CSVs and the report. Returns the report.

        Raises:
            DataError: fewer than 2 clips in total (nothing is written then).
        """
        try:
            split = split_rows(self.rows, eval_fraction=eval_fraction, seed=seed)
        except DataError:
            self.rollback()
            raise
        self.root.mkdir(parents=True, exist_ok=True)
        write_coqui_csv(self.root / TRAIN_CSV, split.train)
        write_coqui_csv(self.root / EVAL_CSV, split.eval)
        self.report["split"] = split.info
        self.report["stats"] = {"train": dataset_stats(split.train), "eval": dataset_stats(split.eval)}
        self.write_report()
        return self.report
