"""Kept rows whose speaking rate is far from the dataset's are flagged (a transcript that lost words)."""

from __future__ import annotations

import shutil
from pathlib import Path

import soundfile as sf

from utils.data.preflight import RATE_FACTOR, run_preflight


def test_a_one_letter_transcript_is_flagged_not_dropped(demo_en: Path, tmp_path: Path) -> None:
    ds = Path(shutil.copytree(demo_en, tmp_path / "ds"))
    csv = ds / "metadata_train.csv"
    lines = csv.read_text(encoding="utf-8").splitlines()
    audio, _, speaker = lines[3].split("|")
    lines[3] = f"{audio}|A|{speaker}"  # row 4: a multi-second clip transcribed as "A"
    csv.write_text("\n".join(lines) + "\n", encoding="utf-8")
    report = run_preflight(csv, language="en", progress=False)
    assert report.kept == len(lines) - 1  # flagged rows stay in the set
    (flag,) = report.flagged
    duration = sf.info(str(ds / audio)).duration
    assert flag["row"] == 4 and flag["reason"] == "speaking_rate"
    assert flag["detail"].startswith(f"{1 / duration:.1f} characters/s") and "missing words" in flag["detail"]
    median = float(flag["detail"].split("speaker's median ")[1].split(")")[0])
    assert 1 / duration < median / RATE_FACTOR
    assert report.to_dict()["flagged"] == report.flagged
    assert any("flagged for review" in line for line in report.summary_lines())


def test_clean_demo_data_has_no_flags(demo_en: Path) -> None:
    assert run_preflight(demo_en / "metadata_train.csv", language="en", progress=False).flagged == []
