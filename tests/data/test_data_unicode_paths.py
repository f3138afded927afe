"""A CSV path written composed (NFC) finds a file whose name is stored decomposed (NFD)."""

from __future__ import annotations

import shutil
import unicodedata
from pathlib import Path

from utils.data.csv_io import read_coqui_csv
from utils.data.preflight import run_preflight


def test_nfc_csv_path_finds_nfd_file(demo_en: Path, tmp_path: Path) -> None:
    nfc, nfd = unicodedata.normalize("NFC", "café_é.wav"), unicodedata.normalize("NFD", "café_é.wav")
    assert nfc != nfd
    (tmp_path / "wavs").mkdir()
    shutil.copy(demo_en / "wavs" / "en_001.wav", tmp_path / "wavs" / nfd)
    csv = tmp_path / "metadata.csv"
    csv.write_text(f"audio_file|text|speaker_name\nwavs/{nfc}|The quick brown fox.|demo\n", encoding="utf-8")
    (row,) = read_coqui_csv(csv)
    assert row.path.is_file() and row.path.name == nfd and row.audio_file == f"wavs/{nfc}"
    report = run_preflight(csv, language="en", progress=False)
    assert report.kept == 1 and report.excluded == []


def test_a_really_missing_file_is_still_missing(tmp_path: Path) -> None:
    csv = tmp_path / "metadata.csv"
    csv.write_text("audio_file|text|speaker_name\nwavs/none.wav|Hello there.|demo\n", encoding="utf-8")
    report = run_preflight(csv, language="en", progress=False)
    assert report.kept == 0 and report.excluded[0]["reason"] == "missing_file"
