"""Independent quality measures: DNSMOS and Resemblyzer's GE2E speaker similarity, on espeak-ng clips."""

from __future__ import annotations

import numpy as np
import pytest

from tests.after.after_helpers import espeak, read

A = "Please call me tomorrow morning at the office, we will talk about the plan."
B = "The weather today is quite nice, so we could walk to the station together."


def test_dnsmos_scores_a_clean_recording_clearly_above_the_same_with_noise(tmp_path):
    from utils.after.quality import dnsmos

    audio, sr = read(espeak(tmp_path / "clean.wav", A))
    noisy = audio + np.random.default_rng(0).normal(0, 0.05, audio.size).astype(np.float32)
    clean_s, noisy_s = dnsmos(audio, sr), dnsmos(noisy, sr)
    assert clean_s["ovrl_mos"] > noisy_s["ovrl_mos"] + 0.5, (clean_s, noisy_s)
    assert clean_s["bak_mos"] > noisy_s["bak_mos"] + 1.0  # the background score is what noise hits
    assert all(v is None for v in dnsmos(np.zeros(sr, np.float32), sr).values())


def test_ge2e_scores_the_same_voice_above_a_different_voice(tmp_path):
    from utils.after.quality import GE2ESimilarity

    ge2e = GE2ESimilarity()
    ref, sr = read(espeak(tmp_path / "ref.wav", A, voice="en-us"))
    same, _ = read(espeak(tmp_path / "same.wav", B, voice="en-us"))  # another sentence, the same voice
    other, _ = read(espeak(tmp_path / "other.wav", B, voice="en-us+f3"))  # the same sentence, another voice
    target = ge2e.target([(ref, sr)])
    s_same, s_other = ge2e.similarity(same, sr, target), ge2e.similarity(other, sr, target)
    assert s_same > s_other + 0.1, (s_same, s_other)
    assert ge2e.similarity(ref, sr, target) == pytest.approx(1.0, abs=1e-4)
    assert ge2e.embed(np.zeros(sr, np.float32), sr) is None  # no speech: no embedding, not a number
