"""The bundled Amharic demo (demo/am) and its builder."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import soundfile as sf

from utils.errors import ConfigError
from utils.language.demo_sentences import AMHARIC_DEMO_SENTENCES, make_language_demo
from utils.language.registry import normalize_text

DEMO_AM = Path(__file__).resolve().parents[2] / "demo" / "am"


def _rows(csv: Path) -> list[list[str]]:
    lines = csv.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "audio_file|text|speaker_name"
    return [line.split("|") for line in lines[1:]]


def test_bundled_demo_am_matches_the_sentences():
    rows = _rows(DEMO_AM / "metadata_train.csv") + _rows(DEMO_AM / "metadata_eval.csv")
    assert [r[1] for r in rows] == list(AMHARIC_DEMO_SENTENCES)
    assert len(_rows(DEMO_AM / "metadata_eval.csv")) == 2
    total_bytes = 0
    for audio_file, _text, speaker in rows:
        assert audio_file.startswith("wavs/am_") and speaker == "demo"
        info = sf.info(str(DEMO_AM / audio_file))
        assert (info.samplerate, info.channels, info.subtype) == (22050, 1, "PCM_16")
        assert 0.5 < info.duration < 11.6  # inside XTTSDataset's limits
        total_bytes += (DEMO_AM / audio_file).stat().st_size
    assert total_bytes < 1.5e6
    digits = [s for s in AMHARIC_DEMO_SENTENCES if any(c.isdigit() or 0x1369 <= ord(c) <= 0x137C for c in s)]
    assert len(digits) >= 5  # numbers exercise the normaliser
    assert not any(c.isdigit() for s in digits for c in normalize_text(s, "am"))


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")
def test_make_language_demo_rebuilds_and_refuses_to_overwrite(tmp_path):
    out = make_language_demo(tmp_path / "am")
    rows = _rows(out / "metadata_train.csv")
    assert len(rows) == len(AMHARIC_DEMO_SENTENCES) - 2
    # espeak-ng spoke the normalised text: the number sentences are longer than their digits suggest
    d_digits = sf.info(str(out / "wavs" / "am_006.wav")).duration  # "... 1999 ብር ..." (4 number words)
    d_plain = sf.info(str(out / "wavs" / "am_001.wav")).duration  # "ሰላም፣ እንዴት ናችሁ፧"
    assert d_digits > 1.5 * d_plain
    with pytest.raises(ConfigError, match="already holds a dataset"):
        make_language_demo(out)
    with pytest.raises(ConfigError, match="no demo sentences"):
        make_language_demo(tmp_path / "xx", "xx")
