"""CSV reading/writing and audio loading with conversion."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from utils.data.audio import audio_info, decode_media, load_audio, write_wav
from utils.data.csv_io import BadRow, Row, read_coqui_csv, write_coqui_csv
from utils.errors import DataError


def test_read_and_write_roundtrip(tmp_path):
    p = tmp_path / "m.csv"
    p.write_text("audio_file|text|speaker_name\nwavs/a.wav|Hello there.|anna\n\nwavs/b.wav| Hi |\n", encoding="utf-8")
    rows = read_coqui_csv(p)
    assert [(r.row, r.audio_file, r.text, r.speaker_name) for r in rows] == [
        (2, "wavs/a.wav", "Hello there.", "anna"),
        (4, "wavs/b.wav", "Hi", "speaker"),
    ]
    assert rows[0].path == (tmp_path / "wavs" / "a.wav").resolve()
    out = write_coqui_csv(tmp_path / "o" / "m.csv", rows)
    assert out.read_text().splitlines() == [
        "audio_file|text|speaker_name",
        "wavs/a.wav|Hello there.|anna",
        "wavs/b.wav|Hi|speaker",
    ]
    with pytest.raises(DataError, match="not allowed"):
        write_coqui_csv(tmp_path / "x.csv", [Row(2, "a.wav", Path("a.wav"), "a | b")])
    assert not (tmp_path / "x.csv").exists()


def test_no_speaker_column_and_extra_columns(tmp_path):
    p = tmp_path / "m.csv"
    p.write_text("audio_file|text|emotion_name\na.wav|hi|happy\n")
    rows = read_coqui_csv(p, dataset_root=tmp_path / "root")
    assert rows[0].speaker_name == "speaker" and rows[0].extra == {"emotion_name": "happy"}
    assert rows[0].path == (tmp_path / "root" / "a.wav").resolve()


@pytest.mark.parametrize(
    "content,match",
    [
        ("audio_file,text,speaker_name\na.wav,hi,s\n", "uses ',' as delimiter"),
        ("audio_file\ttext\tspeaker_name\na.wav\thi\ts\n", "uses '\\\\t' as delimiter"),
        ("audio_file|speaker_name\na.wav|s\n", "lacks column\\(s\\) text"),
        ("wavs/a.wav|hello|spk\n", "lacks column\\(s\\) audio_file, text"),
        ("", "is empty"),
        ("audio_file|text|speaker_name\na.wav|hi|there|s\n", ":2: line has 4 field"),
    ],
)
def test_bad_csvs_raise_clear_errors(tmp_path, content, match):
    p = tmp_path / "m.csv"
    p.write_text(content)
    with pytest.raises(DataError, match=match):
        read_coqui_csv(p)


def test_malformed_rows_collected_and_encoding_errors(tmp_path):
    p = tmp_path / "m.csv"
    p.write_text("audio_file|text|speaker_name\na.wav|hi|s\nb.wav|only two\nc.wav|ok|s\n")
    bad: list[BadRow] = []
    rows = read_coqui_csv(p, bad_rows=bad)
    assert [r.row for r in rows] == [2, 4] and [(b.row, b.audio_file) for b in bad] == [(3, "b.wav")]
    p.write_bytes("audio_file|text|speaker_name\na.wav|caf\u00e9|s\n".encode("cp1252"))
    with pytest.raises(DataError, match="not UTF-8.*iconv"):
        read_coqui_csv(p)
    with pytest.raises(DataError, match="not found"):
        read_coqui_csv(tmp_path / "missing.csv")


@pytest.fixture(scope="module")
def speech(speech_bank):
    data, sr = sf.read(str(next(iter(speech_bank.values()))), dtype="float32")
    assert sr == 22050
    return data


@pytest.mark.parametrize(
    "sr,channels,subtype",
    [
        (22050, 1, "PCM_U8"),
        (22050, 1, "PCM_24"),
        (22050, 1, "FLOAT"),
        (48000, 2, "PCM_16"),
        (16000, 1, "PCM_32"),
    ],
)
def test_load_audio_converts(tmp_path, speech, sr, channels, subtype):
    import soxr

    x = soxr.resample(speech, 22050, sr) if sr != 22050 else speech
    data = np.stack([x, x], axis=1) if channels == 2 else x
    p = tmp_path / "in.wav"
    sf.write(str(p), data * 0.9, sr, subtype=subtype)
    info = audio_info(p)
    assert info.needs_conversion() != []
    y, out_sr = load_audio(p)
    assert out_sr == 22050 and y.dtype == np.float32 and y.ndim == 1
    assert abs(len(y) - len(speech)) <= 2
    n = min(len(y), len(speech))
    corr = np.corrcoef(y[:n], speech[:n])[0, 1]
    assert corr > (0.9 if sr == 16000 else 0.98)  # 16 kHz loses the band above 8 kHz


def test_write_wav_is_22k_mono_16bit(tmp_path, speech):
    p = write_wav(tmp_path / "o.wav", np.concatenate([speech, [1.5, -1.5]]).astype(np.float32))
    info = audio_info(p)
    assert (info.sample_rate, info.channels, info.subtype) == (22050, 1, "PCM_16") and info.needs_conversion() == []
    assert not list(tmp_path.glob("*.tmp*"))


def test_bad_audio_files(tmp_path):
    (tmp_path / "zero.wav").write_bytes(b"")
    (tmp_path / "text.wav").write_text("RIFF? no.\n" * 30)
    (tmp_path / "zero.mp3").write_bytes(b"")
    (tmp_path / "junk.m4a").write_bytes(b"\x01\x02junk" * 50)
    with pytest.raises(DataError, match="0 bytes"):
        load_audio(tmp_path / "zero.wav")
    with pytest.raises(DataError, match="cannot decode"):
        load_audio(tmp_path / "text.wav")
    with pytest.raises(DataError, match="0 bytes"):
        load_audio(tmp_path / "zero.mp3")
    with pytest.raises(DataError, match="ffmpeg"):
        load_audio(tmp_path / "junk.m4a")
    with pytest.raises(DataError, match="not found"):
        load_audio(tmp_path / "missing.wav")


def test_decode_media_mp3(tmp_path, speech_bank, speech):
    wav = next(iter(speech_bank.values()))
    mp3 = tmp_path / "a.mp3"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(wav), "-ar", "44100", "-ac", "2", str(mp3)], check=True)
    y = decode_media(mp3, 22050)
    assert y.dtype == np.float32 and abs(len(y) - len(speech)) < 0.1 * 22050  # encoder padding only
