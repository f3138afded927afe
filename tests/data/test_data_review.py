"""Transcript checks: speaking rate against the speaker's median, ASR confidence, second-pass CER."""

from __future__ import annotations

import pytest

from utils.data.review import MAX_CER, check_clips, cer, read_review, write_review


def test_cer():
    assert cer("Hello, world!", "hello world") == 0.0
    assert cer("abcd", "abxd") == pytest.approx(0.25)
    assert cer("", "") == 0.0 and cer("", "x") == 1.0


def test_flags_rate_outliers_low_confidence_and_mismatches(tmp_path):
    texts = {f"c{i}.wav": "the cat sat on the mat today" for i in range(6)}  # 22 letters in 2 s: 11/s
    clips = {n: {"duration": 2.0, "logprob": -0.1} for n in texts}
    texts["fast.wav"] = "the cat sat on the mat today and then it went away to sleep for hours"
    clips["fast.wav"] = {"duration": 2.0, "logprob": -0.2}
    texts["unsure.wav"] = "the dog sat on the mat today"
    clips["unsure.wav"] = {"duration": 2.0, "logprob": -1.4}
    texts["other.wav"] = "short"
    clips["other.wav"] = {"duration": 9.0}
    speakers = {n: "anna" for n in texts} | {"other.wav": "ben"}  # ben has too few clips for a median
    heard = {"unsure.wav": "the dog sat on a mat today"} | {"c3.wav": "a completely different sentence"}
    flags = check_clips(clips, texts, speakers, recheck=lambda n: heard.get(n, texts[n]))
    got = sorted((f["audio_file"], f["reason"]) for f in flags)
    assert got == [("c3.wav", "transcript_mismatch"), ("fast.wav", "speaking_rate"),
                   ("unsure.wav", "low_asr_confidence")]
    assert clips["c3.wav"]["checks"]["cer"] > MAX_CER and clips["unsure.wav"]["checks"]["cer"] <= MAX_CER
    assert "rate_vs_median" not in clips["other.wav"]["checks"]
    path = write_review(tmp_path, flags)
    rows = read_review(path)
    assert [(r["audio_file"], r["reason"]) for r in rows] == [(f["audio_file"], f["reason"]) for f in flags]
    assert rows[0]["text"] == texts[rows[0]["audio_file"]]
