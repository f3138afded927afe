"""The preflight audio cache: a second preflight of unchanged files reads no audio; a change is seen."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from utils.data import preflight
from utils.data.preflight import run_preflight


@pytest.fixture()
def dataset(tmp_path: Path, speech_bank) -> Path:
    root = tmp_path / "ds"
    (root / "wavs").mkdir(parents=True)
    lines = ["audio_file|text|speaker_name"]
    for i, (text, wav) in enumerate(list(speech_bank.items())[:4]):
        shutil.copy(wav, root / "wavs" / f"c{i}.wav")
        lines.append(f"wavs/c{i}.wav|{text}|spk")
    lines.append("wavs/missing.wav|not there|spk")
    (root / "metadata.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def _counting(monkeypatch) -> list[str]:
    seen: list[str] = []
    original = preflight._audio_check

    def counted(job):
        seen.append(Path(job[0]).name)
        return original(job)

    monkeypatch.setattr(preflight, "_audio_check", counted)
    return seen


def _facts(report) -> list[tuple]:
    return [(r.audio_file, round(r.duration, 6)) for r in report.kept_rows]


def test_second_preflight_reads_no_audio_and_gives_the_same_report(dataset: Path, tmp_path: Path, monkeypatch) -> None:
    cache = tmp_path / "cache" / "preflight_audio.json"
    seen = _counting(monkeypatch)
    first = run_preflight(dataset / "metadata.csv", language="en", progress=False, workers=1, audio_cache=cache)
    assert sorted(seen) == ["c0.wav", "c1.wav", "c2.wav", "c3.wav", "missing.wav"]
    entries = json.loads(cache.read_text())["entries"]
    assert len(entries) == 4  # the missing file is not cached
    seen.clear()
    second = run_preflight(dataset / "metadata.csv", language="en", progress=False, workers=1, audio_cache=cache)
    assert seen == ["missing.wav"]  # checked again: it may appear
    assert _facts(second) == _facts(first) and len(_facts(first)) == 4
    assert second.kept_hashes == first.kept_hashes
    assert [e["reason"] for e in second.excluded] == [e["reason"] for e in first.excluded] == ["missing_file"]


def test_a_changed_file_and_other_limits_are_checked_again(dataset: Path, tmp_path: Path, monkeypatch) -> None:
    cache = tmp_path / "preflight_audio.json"
    run_preflight(dataset / "metadata.csv", language="en", progress=False, workers=1, audio_cache=cache)
    seen = _counting(monkeypatch)
    wav = dataset / "wavs" / "c2.wav"
    info = sf.info(str(wav))
    sf.write(str(wav), np.zeros(info.frames, dtype=np.float32), info.samplerate)  # same length, now silent
    os.utime(wav, ns=(os.stat(wav).st_atime_ns, os.stat(wav).st_mtime_ns + 5_000_000_000))
    report = run_preflight(dataset / "metadata.csv", language="en", progress=False, workers=1, audio_cache=cache)
    assert sorted(seen) == ["c2.wav", "missing.wav"]
    assert {e["audio_file"].split("/")[-1]: e["reason"] for e in report.excluded} == {
        "c2.wav": "silent",
        "missing.wav": "missing_file",
    }
    seen.clear()
    run_preflight(
        dataset / "metadata.csv", language="en", progress=False, workers=1, audio_cache=cache, max_audio_s=9.5
    )
    assert len(seen) == 5  # new limits: every file again


def test_an_unreadable_cache_is_ignored_and_replaced(dataset: Path, tmp_path: Path) -> None:
    cache = tmp_path / "preflight_audio.json"
    cache.write_text("{ not json", encoding="utf-8")
    report = run_preflight(dataset / "metadata.csv", language="en", progress=False, workers=1, audio_cache=cache)
    assert report.kept == 4
    assert len(json.loads(cache.read_text())["entries"]) == 4


def test_a_run_writes_the_cache_only_once_its_checks_pass(
    dataset: Path, tmp_path: Path, tiny_base: Path, monkeypatch
) -> None:
    from utils.finetune.steps import DataSplit, check_data

    rows = (dataset / "metadata.csv").read_text().splitlines()
    (dataset / "train.csv").write_text("\n".join(rows[:4]) + "\n", encoding="utf-8")  # header + c0-c2
    (dataset / "eval.csv").write_text("\n".join([rows[0], rows[4]]) + "\n", encoding="utf-8")  # c3
    cache_dir = tmp_path / "out" / ".clip_cache"
    split = check_data(
        DataSplit(dataset / "train.csv", dataset / "eval.csv"),
        "en",
        tiny_base / "vocab.json",
        0.2,
        progress=False,
        cache_dir=cache_dir,
    )
    assert split.train_report.kept == 3 and split.eval_report.kept == 1
    assert not (tmp_path / "out").exists()  # nothing written while the run may still be refused
    split.audio_cache.save()
    assert len(json.loads((cache_dir / "preflight_audio.json").read_text())["entries"]) == 4
    seen = _counting(monkeypatch)
    again = check_data(
        DataSplit(dataset / "train.csv", dataset / "eval.csv"),
        "en",
        tiny_base / "vocab.json",
        0.2,
        progress=False,
        cache_dir=cache_dir,
    )
    assert seen == [] and _facts(again.train_report) == _facts(split.train_report)
