"""GE2E speaker labels and decoded-audio fingerprints on real espeak-ng speech."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
import soundfile as sf

from utils.data.audio import load_audio
from utils.data.fingerprint import NEAR_THRESHOLD, audio_print, load_print, save_print, similarity


def test_mel_filters_and_embeddings_match_resemblyzer(speaker_encoder, speech_bank):
    librosa = pytest.importorskip("librosa")
    from utils.data.speakers import slaney_mel_filters

    ours = slaney_mel_filters(16000, 400, 40)
    assert np.abs(ours - librosa.filters.mel(sr=16000, n_fft=400, n_mels=40)).max() < 1e-6
    audio, _ = load_audio(next(iter(speech_bank.values())), 16000)
    gain = np.float32(10 ** (-30 / 20) / np.sqrt(np.mean(audio.astype(np.float64) ** 2)))
    theirs = speaker_encoder._encoder().embed_utterance(audio * gain)
    assert float(speaker_encoder.embed(audio) @ theirs) > 0.9999


def test_two_voices_get_two_consistent_labels(speaker_encoder, espeak_clip, tmp_path):
    from utils.data.boundaries import Gap
    from utils.data.speakers import label_words
    from utils.data.words import Word

    lines = [
        ("en-us", "Good morning, how are you today?"),
        ("gmw/en+f3", "I am fine, thank you very much."),
        ("en-us", "Shall we begin with the first question?"),
        ("gmw/en+f3", "Yes, please go ahead."),
        ("en-us", "Very well."),
    ]
    parts, words, gaps, t = [], [], [], 0.0
    for k, (voice, text) in enumerate(lines):
        a, sr = sf.read(str(espeak_clip(text, tmp_path / f"{k}.wav", voice=voice)), dtype="float32")
        a = a[np.flatnonzero(np.abs(a) > 0.01)[0] : np.flatnonzero(np.abs(a) > 0.01)[-1]]
        words.append(Word(t, t + len(a) / sr, " " + text))
        parts += [a, np.zeros(int(0.5 * sr), dtype=np.float32)]
        t += len(a) / sr + 0.5
        if k + 1 < len(lines):
            gaps.append(Gap(t - 0.5, t, t - 0.25))
    import soxr

    audio16 = soxr.resample(np.concatenate(parts), sr, 16000).astype(np.float32)
    labels = label_words(words, gaps, audio16, speaker_encoder)
    assert labels.per_word in ([0, 1, 0, 1, 0], [1, 0, 1, 0, 1])
    assert labels.per_word[0] == 0 or labels.seconds[0] >= labels.seconds[1]  # 0 is the voice with most speech


def test_fingerprint_finds_copies_across_formats_and_tells_recordings_apart(long_recording, speech_bank, tmp_path):
    wav, _, sr = long_recording
    base = audio_print(load_audio(wav, 16000)[0])
    flac = tmp_path / "copy.flac"
    a, _ = sf.read(str(wav), dtype="float32")
    sf.write(str(flac), a, sr, subtype="PCM_16")
    assert similarity(base, audio_print(load_audio(flac, 16000)[0])) == 1.0  # lossless: the same samples
    for ext, extra in (
        (".mp3", ["-ar", "44100", "-ac", "2"]),
        (".ogg", ["-ar", "48000", "-c:a", "libvorbis"]),
        (".m4a", ["-ar", "32000", "-ac", "2", "-c:a", "aac", "-af", "volume=0.5"]),
    ):
        out = tmp_path / f"copy{ext}"
        subprocess.run(["ffmpeg", "-v", "error", "-i", str(wav), *extra, str(out)], check=True)
        other = audio_print(load_audio(out, 16000)[0])
        assert other.exact != base.exact and similarity(base, other) >= NEAR_THRESHOLD, ext
    # the same sentences in another order, and the same length: not the same recording
    texts = list(speech_bank)
    shuffled = np.concatenate([sf.read(str(speech_bank[t]), dtype="float32")[0] for t in reversed(texts[:5])])
    shuffled = np.resize(shuffled, len(a))
    assert similarity(base, audio_print(load_audio_array(shuffled, sr))) < 0.6
    save_print(tmp_path, "src1", base)
    again = load_print(tmp_path, "src1", base.exact, base.duration)
    assert again is not None and similarity(base, again) == 1.0
    assert load_print(tmp_path, "missing", "x", 1.0) is None


def load_audio_array(audio: np.ndarray, sr: int) -> np.ndarray:
    from utils.data.audio import resample

    return resample(audio.astype(np.float32), sr, 16000)


def test_average_linkage_matches_scikit_learn():
    cluster = pytest.importorskip("sklearn.cluster")
    from utils.data.speakers import average_linkage

    rng = np.random.default_rng(0)
    for _ in range(10):
        centres = rng.standard_normal((3, 16))
        x = np.concatenate([c + 0.5 * rng.standard_normal((7, 16)) for c in centres])
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        for ours, ref in (
            (
                average_linkage(x, 0.5),
                cluster.AgglomerativeClustering(
                    n_clusters=None, metric="cosine", linkage="average", distance_threshold=0.5
                ).fit_predict(x),
            ),
            (
                average_linkage(x, 0.5, 2),
                cluster.AgglomerativeClustering(n_clusters=2, metric="cosine", linkage="average").fit_predict(x),
            ),
        ):
            assert (ours[:, None] == ours[None, :]).tolist() == (ref[:, None] == ref[None, :]).tolist()


def test_a_change_of_voice_without_a_pause_is_found_inside_a_piece(speaker_encoder, espeak_clip, tmp_path):
    from utils.data.boundaries import Gap
    from utils.data.speakers import label_words
    from utils.data.words import Word

    lines = [
        ("en-us", "Good morning, and welcome to our little studio by the river."),
        ("gmw/en+f3", "Thank you, it is lovely to be here with all of you today."),
        ("en-us", "Shall we begin with the first question from our listeners?"),
        ("gmw/en+f3", "Yes, please go ahead, I have been looking forward to it."),
    ]
    pauses = [0.6, 0.6, 0.06, 0.0]  # the last two turns touch: 60 ms, less than a turn gap
    parts, words, gaps, truth, t = [], [], [], [], 0.0
    for k, ((voice, text), pause) in enumerate(zip(lines, pauses)):
        a, sr = sf.read(str(espeak_clip(text, tmp_path / f"{k}.wav", voice=voice)), dtype="float32")
        nz = np.flatnonzero(np.abs(a) > 0.01)
        a = a[nz[0] : nz[-1]]
        toks = text.split()
        step = len(a) / sr / len(toks)
        for i, tok in enumerate(toks):
            words.append(Word(t + i * step, t + (i + 1) * step, " " + tok))
            truth.append(k % 2)
            gaps.append(None)
        gaps[-1] = Gap(t + len(a) / sr, t + len(a) / sr + pause, t + len(a) / sr + pause / 2)
        parts += [a, np.zeros(int(pause * sr), dtype=np.float32)]
        t += len(a) / sr + pause
    gaps = gaps[:-1]
    import soxr

    audio16 = soxr.resample(np.concatenate(parts), sr, 16000).astype(np.float32)
    labels = label_words(words, gaps, audio16, speaker_encoder)
    got = np.array(labels.per_word)
    flip = got if got[0] == truth[0] else 1 - got
    wrong = int((flip != np.array(truth)).sum())
    assert labels.pieces >= 4 and wrong <= 3, (wrong, got.tolist())  # a word or two at the change may go either way
    n3 = len(lines[2][1].split())
    start4 = len(words) - len(lines[3][1].split())
    assert flip[start4 - n3 // 2] == 0 and flip[start4 + 3] == 1
