"""Read and write Coqui ``coqui``-format metadata CSVs (``audio_file|text|speaker_name``).

``audio_file`` is relative to the CSV's folder (or to ``dataset_root``). Coqui's own reader
(``TTS.tts.datasets.formatters.coqui``) looks columns up by name, so a CSV with extra columns
still loads there; we keep exactly the three columns when writing.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from utils.errors import DataError

logger = logging.getLogger(__name__)

COLUMNS = ("audio_file", "text", "speaker_name")
REQUIRED_COLUMNS = ("audio_file", "text")
DEFAULT_SPEAKER = "speaker"
_OTHER_DELIMITERS = (",", "\t", ";")


@dataclass
class Row:
    """One metadata row.

    Attributes:
        row: 1-based line number in the CSV (the header is line 1, so data starts at 2).
        audio_file: the path as written in the CSV.
        path: ``audio_file`` resolved to an absolute path.
        text: the transcript.
        speaker_name: the speaker column (``DEFAULT_SPEAKER`` when the CSV has none).
        source: the recording the clip was cut from, when known (else "").
        duration: seconds, filled in by the preflight for kept rows (else None).
    """

    row: int
    audio_file: str
    path: Path
    text: str
    speaker_name: str = DEFAULT_SPEAKER
    source: str = ""
    duration: float | None = None
    extra: dict = field(default_factory=dict, repr=False)


@dataclass
class BadRow:
    """A CSV line that could not be parsed into a :class:`Row`."""

    row: int
    audio_file: str
    detail: str


def _decode(path: Path) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise DataError(f"metadata file not found: {path}; check the path") from exc
    except OSError as exc:
        raise DataError(f"cannot read metadata file {path}: {exc}") from exc
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path} is not UTF-8 (byte {exc.start}); re-save it as UTF-8, "
            f"e.g. iconv -f CP1252 -t UTF-8 {path.name} > fixed.csv"
        ) from exc


def read_coqui_csv(
    path: str | os.PathLike,
    *,
    dataset_root: str | os.PathLike | None = None,
    bad_rows: list[BadRow] | None = None,
) -> list[Row]:
    """Read a ``coqui``-format CSV.

    Args:
        path: the CSV file.
        dataset_root: folder the ``audio_file`` paths are relative to (default: the CSV's folder).
        bad_rows: when given, lines with the wrong number of fields are appended here instead
            of raising, so a caller (the preflight) can report them per row.

    Returns:
        The rows in file order.

    Raises:
        DataError: missing/unreadable file, not UTF-8, empty, wrong delimiter, missing columns,
            or (when ``bad_rows`` is None) a malformed line.
    """
    path = Path(path)
    text = _decode(path)
    root = Path(dataset_root) if dataset_root is not None else path.parent
    root = root.resolve()
    header = _check_header(path, text.splitlines())
    reader = csv.reader(io.StringIO(text), delimiter="|", quoting=csv.QUOTE_NONE)
    next(reader)
    rows: list[Row] = []
    for line_no, fields in enumerate(reader, start=2):
        if not fields or all(not f.strip() for f in fields):
            continue
        if len(fields) != len(header):
            detail = f"line has {len(fields)} field(s), header has {len(header)} ('|' inside text or a missing column)"
            if bad_rows is None:
                raise DataError(f"{path}:{line_no}: {detail}; fix or remove that line")
            bad_rows.append(BadRow(line_no, fields[0].strip() if fields else "", detail))
            continue
        rec = dict(zip(header, fields))
        audio_file = rec.pop("audio_file").strip()
        rows.append(
            Row(
                row=line_no,
                audio_file=audio_file,
                path=resolve_audio_path(root, audio_file) if audio_file else root,
                text=rec.pop("text").strip(),
                speaker_name=(rec.pop("speaker_name", "") or DEFAULT_SPEAKER).strip(),
                source=rec.pop("source", "").strip(),
                extra=rec,
            )
        )
    return rows


def _check_header(path: Path, lines: list[str]) -> list[str]:
    """The header's column names, or a DataError naming what is wrong with it."""
    if not lines or not lines[0].strip():
        raise DataError(f"{path} is empty; expected a header line 'audio_file|text|speaker_name' and rows")
    header = [h.strip() for h in lines[0].split("|")]
    if len(header) == 1:
        hint = next((d for d in _OTHER_DELIMITERS if d in lines[0]), None)
        if hint is not None:
            raise DataError(
                f"{path} uses {hint!r} as delimiter; the coqui format needs '|' (header 'audio_file|text|speaker_name')"
            )
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise DataError(
            f"{path} lacks column(s) {', '.join(missing)} in its header {lines[0]!r}; "
            f"the first line must be 'audio_file|text|speaker_name'"
        )
    return header


def resolve_audio_path(root: Path, audio_file: str) -> Path:
    """``root / audio_file``, matching a file whose name differs only in Unicode normalisation.

    macOS writes file names decomposed (NFD, "e" + combining accent) while most editors write a
    CSV composed (NFC): the two look identical and compare unequal. When the path as written does
    not exist, each part is matched against the folder's entries by their NFC form.
    """
    path = (root / audio_file).resolve()
    if path.exists():
        return path
    current = root
    for part in Path(audio_file).parts:
        candidate = current / part
        if not candidate.exists() and current.is_dir():
            want = unicodedata.normalize("NFC", part)
            match = next((e for e in current.iterdir() if unicodedata.normalize("NFC", e.name) == want), None)
            if match is None:
                return path
            candidate = match
        current = candidate
    return current.resolve()


def write_coqui_csv(path: str | os.PathLike, rows: Iterable[Row]) -> Path:
    """Write rows as a ``coqui``-format CSV (atomically: a temp file, then a rename).

    Raises:
        DataError: a field contains '|' or a newline (the format cannot hold it).
    """
    path = Path(path)
    out = ["|".join(COLUMNS)]
    for r in rows:
        fields = (r.audio_file, r.text, r.speaker_name or DEFAULT_SPEAKER)
        for f in fields:
            if "|" in f or "\n" in f or "\r" in f:
                raise DataError(f"cannot write {f!r} to {path}: '|' and newlines are not allowed in the coqui format")
        out.append("|".join(fields))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(out) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path
