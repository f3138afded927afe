"""Preflight: every exclusion reason, conversions, exit codes, check_usable, speed path."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from utils.data.csv_io import Row, read_coqui_csv
from utils.data.preflight import check_usable, run_preflight
from utils.data.stats import dataset_stats
from utils.errors import DataError

LONG_TEXT = " ".join(["the quick brown fox jumps over the lazy dog and keeps on running"] * 12)


@pytest.fixture(scope="module")
def bad_dataset(tmp_path_factory, speech_bank):
    """A dataset with one row per preflight reason plus good and convertible rows."""
    root = tmp_path_factory.mktemp("ds")
    wavs = root / "wavs"
    wavs.mkdir()
    texts = list(speech_bank)
    good = []
    for i, t in enumerate(texts[:3]):
        shutil.copy(speech_bank[t], wavs / f"good{i}.wav")
        good.append((f"wavs/good{i}.wav", t))
    speech, sr = sf.read(str(speech_bank[texts[3]]), dtype="float32")
    # convertible formats: stereo 48 kHz float, 8-bit, 24-bit
    import soxr

    s48 = soxr.resample(speech, sr, 48000)
    sf.write(str(wavs / "stereo48k.wav"), np.stack([s48, s48 * 0.5], axis=1), 48000, subtype="FLOAT")
    sf.write(str(wavs / "u8.wav"), speech * 0.9, sr, subtype="PCM_U8")
    sf.write(str(wavs / "pcm24.wav"), speech * 0.8, sr, subtype="PCM_24")
    sf.write(str(wavs / "short.wav"), speech[: int(0.3 * sr)], sr)
    sf.write(str(wavs / "long.wav"), np.tile(speech, 5)[: int(12.5 * sr)], sr)
    sf.write(str(wavs / "silent.wav"), np.zeros(2 * sr, dtype=np.float32), sr)
    sf.write(str(wavs / "clipped.wav"), np.clip(speech * 20, -1, 1), sr)
    (wavs / "empty.wav").write_bytes(b"")
    (wavs / "notaudio.wav").write_text("this is not audio\n" * 20)
    shutil.copy(speech_bank[texts[0]], wavs / "copy_of_good0.wav")
    shutil.copy(speech_bank[texts[4]], root.parent / f"{root.name}_outside.wav")
    for n in ("emptytext", "unk", "longtext", "am"):
        shutil.copy(speech_bank[texts[5]], wavs / f"{n}.wav")
        # make each distinct so they are not duplicates of each other
        d, _ = sf.read(str(wavs / f"{n}.wav"), dtype="float32")
        sf.write(str(wavs / f"{n}.wav"), d * (0.5 + 0.1 * len(n)), sr)
    lines = ["audio_file|text|speaker_name"]
    lines += [f"{a}|{t}|spk" for a, t in good]  # rows 2-4 kept
    lines += [
        f"wavs/stereo48k.wav|{texts[3]}|spk",  # 5 kept, converted
        f"wavs/u8.wav|{texts[3]} again|spk",  # 6 kept, converted
        f"wavs/pcm24.wav|{texts[3]} once more|spk",  # 7 kept, converted
        "wavs/missing.wav|text|spk",  # 8 missing_file
        "wavs/empty.wav|text|spk",  # 9 empty_file
        "wavs/notaudio.wav|text|spk",  # 10 unreadable_audio
        "wavs/short.wav|hi|spk",  # 11 too_short
        "wavs/long.wav|long|spk",  # 12 too_long
        "wavs/silent.wav|nothing|spk",  # 13 silent
        "wavs/clipped.wav|loud|spk",  # 14 clipped
        "wavs/emptytext.wav| |spk",  # 15 empty_text
        "wavs/unk.wav|hello ሰላም world|spk",  # 16 unknown_characters
        f"wavs/longtext.wav|{LONG_TEXT}|spk",  # 17 text_too_long
        f"wavs/good0.wav|{texts[0]}|spk",  # 18 duplicate_row (same path)
        f"wavs/copy_of_good0.wav|{texts[0]}|spk",  # 19 duplicate_row (same content)
        f"../{root.name}_outside.wav|{texts[4]}|spk",  # 20 path_outside_dataset
        "wavs/am.wav|too|many|fields",  # 21 malformed_row
    ]
    (root / "metadata_train.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


EXPECTED = {
    8: "missing_file",
    9: "empty_file",
    10: "unreadable_audio",
    11: "too_short",
    12: "too_long",
    13: "silent",
    14: "clipped",
    15: "empty_text",
    16: "unknown_characters",
    17: "text_too_long",
    18: "duplicate_row",
    19: "duplicate_row",
    20: "path_outside_dataset",
    21: "malformed_row",
}


def test_every_reason_is_reported_per_row(bad_dataset, en_tokenizer):
    rep = run_preflight(bad_dataset / "metadata_train.csv", language="en", tokenizer=en_tokenizer, progress=False)
    got = {e["row"]: e["reason"] for e in rep.excluded}
    assert got == EXPECTED
    assert rep.total == 20 and rep.kept == 6
    assert [r.row for r in rep.kept_rows] == [2, 3, 4, 5, 6, 7]
    assert rep.converted == 3
    assert rep.conversions == {"sample_rate": 1, "channels": 1, "bit_depth": 3}
    unk = next(e for e in rep.excluded if e["reason"] == "unknown_characters")
    assert "U+1230" in unk["detail"]  # first Ge'ez letter named
    assert rep.hours_kept == pytest.approx(sum(r.duration for r in rep.kept_rows) / 3600)
    assert 0.001 < rep.hours_kept < 0.01
    assert rep.checks_skipped == []


def test_pool_path_matches_serial(bad_dataset, en_tokenizer, monkeypatch):
    import utils.data.preflight as pf

    monkeypatch.setattr(pf, "_POOL_MIN_ROWS", 1)
    rep = run_preflight(
        bad_dataset / "metadata_train.csv", language="en", tokenizer=en_tokenizer, workers=2, progress=False
    )
    assert {e["row"]: e["reason"] for e in rep.excluded} == EXPECTED


def test_without_vocab_text_checks_are_skipped_and_said(bad_dataset):
    rep = run_preflight(bad_dataset / "metadata_train.csv", language="en", progress=False)
    reasons = {e["row"]: e["reason"] for e in rep.excluded}
    assert 16 not in reasons and 17 not in reasons  # unk / long text not checked
    assert rep.kept == 8
    assert any("no --vocab" in s for s in rep.checks_skipped)
    assert any("skipped check" in line for line in rep.summary_lines())


def test_vocab_path_builds_tokenizer(bad_dataset, en_vocab):
    rep = run_preflight(bad_dataset / "metadata_train.csv", language="en", vocab_path=en_vocab, progress=False)
    assert {e["row"]: e["reason"] for e in rep.excluded} == EXPECTED


def test_unsupported_language_reported_not_raised(bad_dataset, en_tokenizer):
    # the rows are English: allow_mixed_script, so that their script does not exclude them first
    rep = run_preflight(
        bad_dataset / "metadata_train.csv",
        language="am",
        tokenizer=en_tokenizer,
        progress=False,
        allow_mixed_script=True,
    )
    reasons = {e["row"]: e["reason"] for e in rep.excluded}
    for row in range(2, 8):
        assert reasons[row] == "unsupported_language"
    assert "am" in next(e["detail"] for e in rep.excluded if e["reason"] == "unsupported_language")
    assert rep.kept == 0


def test_report_json_schema_and_cli_exit_codes(bad_dataset, en_vocab, tmp_path, capsys):
    from scripts.validate_dataset import main

    out = tmp_path / "r.json"
    code = main(
        [
            str(bad_dataset / "metadata_train.csv"),
            "--language",
            "en",
            "--vocab",
            str(en_vocab),
            "--report",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0  # excluded rows are reported, not an error (--strict makes them one)
    data = json.loads(out.read_text())
    assert {"total", "kept", "hours_kept", "excluded"} <= set(data)
    assert data["total"] == 20 and data["kept"] == 6 and len(data["excluded"]) == 14
    assert set(data["excluded"][0]) == {"row", "audio_file", "reason", "detail"}
    assert data["stats"]["clips"] == 6 and data["stats"]["hours"] == pytest.approx(data["hours_kept"], abs=1e-6)
    err = capsys.readouterr().err
    assert "too_long: 1" in err and "duplicate_row: 2" in err

    clean = tmp_path / "clean.csv"
    rows = read_coqui_csv(bad_dataset / "metadata_train.csv", bad_rows=[])[:3]
    clean.write_text("audio_file|text|speaker_name\n" + "".join(f"{r.path}|{r.text}|s\n" for r in rows))
    assert main([str(clean), "--dataset-root", str(bad_dataset), "--no-progress"]) == 0


def test_cli_exit_2_on_unreadable_csv(tmp_path):
    from scripts.validate_dataset import main
    from utils import cli

    assert cli.run(main, [str(tmp_path / "nope.csv")]) == 2
    bad = tmp_path / "comma.csv"
    bad.write_text("audio_file,text,speaker_name\na.wav,hi,s\n")
    assert cli.run(main, [str(bad)]) == 2


def test_check_usable(bad_dataset, en_tokenizer, tmp_path):
    rep = run_preflight(bad_dataset / "metadata_train.csv", language="en", tokenizer=en_tokenizer, progress=False)
    with pytest.raises(DataError, match="fail the preflight"):
        check_usable(rep, max_excluded_share=0.2)  # 14/20 excluded
    check_usable(rep, max_excluded_share=0.8)
    empty_eval = tmp_path / "eval.csv"
    empty_eval.write_text("audio_file|text|speaker_name\n")
    ev = run_preflight(empty_eval, language="en", progress=False)
    with pytest.raises(DataError, match="eval set"):
        check_usable(rep, ev, max_excluded_share=0.8)
    none_kept = run_preflight(
        bad_dataset / "metadata_train.csv",
        language="am",
        tokenizer=en_tokenizer,
        progress=False,
        allow_mixed_script=True,
    )
    with pytest.raises(DataError, match="no usable rows"):
        check_usable(none_kept, max_excluded_share=1.0)


def test_dataset_stats(bad_dataset, en_tokenizer):
    rep = run_preflight(bad_dataset / "metadata_train.csv", language="en", tokenizer=en_tokenizer, progress=False)
    st = dataset_stats(rep.kept_rows)
    assert st["clips"] == 6 and st["speakers"] == 1
    assert st["hours"] == pytest.approx(rep.hours_kept)
    assert 5 < st["chars_per_second"] < 30
    # durations read from headers when the preflight did not set them
    fresh = [Row(r.row, r.audio_file, r.path, r.text, r.speaker_name) for r in rep.kept_rows]
    assert dataset_stats(fresh)["seconds"] == pytest.approx(st["seconds"], rel=1e-6)


def test_toolkit_tokenizer_from_vocab_path(bad_dataset, en_vocab):
    from utils.data.text import load_text_tokenizer

    tok = load_text_tokenizer(en_vocab)
    assert type(tok).__name__ == "TextTokenizer"  # utils.language's, not the fallback adapter
    rep = run_preflight(bad_dataset / "metadata_train.csv", language="en", tokenizer=tok, progress=False)
    assert {e["row"]: e["reason"] for e in rep.excluded} == EXPECTED
    am = run_preflight(
        bad_dataset / "metadata_train.csv", language="am", tokenizer=tok, progress=False, allow_mixed_script=True
    )
    assert {e["reason"] for e in am.excluded if e["row"] <= 7} == {"unsupported_language"}
    assert "not registered" in next(e["detail"] for e in am.excluded if e["row"] == 2)


def test_eval_rows_duplicating_train_are_excluded(bad_dataset, en_tokenizer, tmp_path):
    train = run_preflight(bad_dataset / "metadata_train.csv", language="en", tokenizer=en_tokenizer, progress=False)
    ev = bad_dataset / "metadata_eval.csv"
    ev.write_text(
        "audio_file|text|speaker_name\n"
        "wavs/good1.wav|She sells sea shells by the sea shore.|spk\n"  # same file as train row 3
        "wavs/copy_of_good0.wav|The quick brown fox.|spk\n"  # same audio as train row 2
        "wavs/long.wav|x|spk\n"
    )
    try:
        rep = run_preflight(ev, language="en", tokenizer=en_tokenizer, progress=False, exclude_duplicates_of=train)
    finally:
        ev.unlink()
    assert [(e["row"], e["reason"]) for e in rep.excluded] == [
        (2, "duplicate_row"),
        (3, "duplicate_row"),
        (4, "too_long"),
    ]
    assert "row 3 of metadata_train.csv" in rep.excluded[0]["detail"]
    assert "row 2 of metadata_train.csv" in rep.excluded[1]["detail"]


def test_validate_script_runs_as_a_program(bad_dataset, tmp_path):
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[2] / "scripts" / "validate_dataset.py"
    out = tmp_path / "r.json"
    proc = subprocess.run(
        [sys.executable, str(script), str(bad_dataset / "metadata_train.csv"), "--report", str(out), "--no-progress"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text())["kept"] == 8  # no vocab: text checks skipped
    assert "missing_file: 1" in proc.stderr and proc.stdout == ""
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "none.csv")], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("error: metadata file not found")
    proc = subprocess.run(
        [sys.executable, str(script), str(bad_dataset / "metadata_train.csv"), "--no-progress", "--strict"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith(
        "error: 12 of 20 rows excluded (--strict)"
    )
    header_only = tmp_path / "h.csv"
    header_only.write_text("audio_file|text|speaker_name\n")
    proc = subprocess.run(
        [sys.executable, str(script), str(header_only), "--no-progress"], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "has no rows" in proc.stderr.strip().splitlines()[-1], proc.stderr


def test_protocol_only_tokenizer(bad_dataset, en_tokenizer):
    """Any object with encode + unknown_characters works (no [UNK] id to short-cut with)."""

    class Minimal:
        def encode(self, text, language):
            return en_tokenizer.encode(text, language)

        def unknown_characters(self, text, language):
            return en_tokenizer.unknown_characters(text, language)

    rep = run_preflight(bad_dataset / "metadata_train.csv", language="en", tokenizer=Minimal(), progress=False)
    assert {e["row"]: e["reason"] for e in rep.excluded} == EXPECTED
