"""Transcript checks: speaking rate against the speaker's median, ASR confidence, second-pass CER."""

from __future__ import annotations

import pytest

from utils.data.review import MAX_CER, cer, check_clips, read_review, write_review


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
    assert got == [
        ("c3.wav", "transcript_mismatch"),
        ("fast.wav", "speaking_rate"),
        ("unsure.wav", "low_asr_confidence"),
    ]
    assert clips["c3.wav"]["checks"]["cer"] > MAX_CER and clips["unsure.wav"]["checks"]["cer"] <= MAX_CER
    assert "rate_vs_median" not in clips["other.wav"]["checks"]
    path = write_review(tmp_path, flags)
    rows = read_review(path)
    assert [(r["audio_file"], r["reason"]) for r in rows] == [(f["audio_file"], f["reason"]) for f in flags]
    assert rows[0]["text"] == texts[rows[0]["audio_file"]]


def test_prepare_with_a_second_asr_pass_writes_the_review_file(long_recording, layout_words, tmp_path):
    from utils.data.prepare import SpeakerPlan, prepare_dataset

    wav, layout, _ = long_recording
    words = layout_words(layout)
    heard = []

    def second_pass(audio16k, progress=None):  # clips come in file-name (time) order; hears the third wrong
        heard.append(len(audio16k))
        k = len(heard) - 1
        text = "something else entirely" if k == 2 else layout[k][2]
        return [type(words[0])(0.0, 1.0, " " + text)], "en"

    rep = prepare_dataset(
        [wav],
        tmp_path / "ds",
        transcriber=lambda a, p=None: (list(words), "en"),
        speaker=SpeakerPlan(diarize=False),
        recheck=second_pass,
        progress=False,
    )
    assert len(heard) == 5 and rep["review"]["second_asr_pass"] is True
    rows = read_review(tmp_path / "ds" / "review.csv")
    third = sorted(rep["clips"])[2]
    assert [(r["audio_file"], r["reason"]) for r in rows] == [(third, "transcript_mismatch")]
    assert rows[0]["text"] == layout[2][2] and "something else entirely" in rows[0]["detail"]
    assert [rep["clips"][n]["checks"]["cer"] for n in sorted(rep["clips"])][:2] == [0.0, 0.0]
    assert rep["review"]["clips_flagged"] == 1 and rep["review"]["by_reason"] == {"transcript_mismatch": 1}
