"""Bundled demo sentences for new languages, and the small builder of demo/am.

The CSVs keep the sentences as written (digits, Ethiopic numerals, abbreviations), so training
exercises the normaliser; espeak-ng speaks the *normalised* text, so the audio says what the model
is taught to read.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
from pathlib import Path

from utils.errors import ConfigError

logger = logging.getLogger(__name__)

SAMPLE_RATE = 22050

AMHARIC_DEMO_SENTENCES: tuple[str, ...] = (
    "ሰላም፣ እንዴት ናችሁ፧",  # Hello, how are you?
    "ዛሬ የአየር ሁኔታው በጣም ጥሩ ነው።",  # The weather is very good today.
    "እኔ በ1990 ዓ.ም አዲስ አበባ ተወለድኩ።",  # I was born in Addis Ababa in 1990 (Ethiopian calendar).
    "ትምህርት ቤቱ 25 መምህራን እና 800 ተማሪዎች አሉት።",  # The school has 25 teachers and 800 students.
    "ዶ/ር አበበ ነገ በ3 ሰዓት ይመጣሉ።",  # Dr. Abebe comes tomorrow at 3 o'clock.
    "ይህ መጽሐፍ 1999 ብር ያስከፍላል።",  # This book costs 1999 birr.
    "ኢትዮጵያ ፲፫ ወራት አሏት።",  # Ethiopia has 13 months.
    "ወ/ሮ አልማዝ 5ኛ ክፍል ታስተምራለች።",  # Mrs. Almaz teaches fifth grade.
    "ቡና የኢትዮጵያ ስጦታ ለዓለም ነው።",  # Coffee is Ethiopia's gift to the world.
    "ስለ ማዳመጣችሁ በጣም አመሰግናለሁ።",  # Thank you very much for listening.
)

DEMO_SENTENCES = {"am": AMHARIC_DEMO_SENTENCES}
ESPEAK_VOICES = {"am": "am"}


def make_language_demo(out_dir: str | Path, language: str = "am", *, speaker: str = "demo", n_eval: int = 2) -> Path:
    """Write ``wavs/`` + ``metadata_train.csv`` + ``metadata_eval.csv`` for ``language`` with espeak-ng.

    Clips are 22050 Hz mono 16-bit; pitch and speed vary a little per clip. The last ``n_eval``
    sentences form the eval set. Refuses a folder that already holds a dataset.
    """
    import numpy as np
    import soundfile as sf

    from utils.language.registry import normalize_text

    if language not in DEMO_SENTENCES:
        raise ConfigError(f"no demo sentences for '{language}'; available: {', '.join(DEMO_SENTENCES)}")
    if shutil.which("espeak-ng") is None:
        raise ConfigError("espeak-ng is not installed; install it (Debian: apt-get install espeak-ng)")
    out = Path(out_dir)
    if (out / "metadata_train.csv").exists():
        raise ConfigError(f"{out} already holds a dataset; choose an empty folder (nothing was overwritten)")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for idx, text in enumerate(DEMO_SENTENCES[language], start=1):
            name = f"wavs/{language}_{idx:03d}.wav"
            path = Path(tmp) / name
            path.parent.mkdir(parents=True, exist_ok=True)
            spoken = normalize_text(text, language)
            speed, pitch = 175 + (idx * 7) % 25, 40 + (idx * 11) % 25
            cmd = ["espeak-ng", "-v", ESPEAK_VOICES[language], "-s", str(speed), "-p", str(pitch), "-w", str(path)]
            subprocess.run([*cmd, spoken], check=True, capture_output=True)
            audio, sr = sf.read(str(path), dtype="float32")
            if sr != SAMPLE_RATE:
                raise ConfigError(f"espeak-ng wrote {sr} Hz, expected {SAMPLE_RATE}; use the Debian espeak-ng build")
            sf.write(str(path), np.asarray(audio, dtype="float32"), SAMPLE_RATE, subtype="PCM_16")
            rows.append((name, text))
        (out / "wavs").mkdir(parents=True, exist_ok=True)
        for name, _ in rows:
            shutil.move(str(Path(tmp) / name), str(out / name))
    header = "audio_file|text|speaker_name\n"
    split = len(rows) - n_eval
    for file_name, part in (("metadata_train.csv", rows[:split]), ("metadata_eval.csv", rows[split:])):
        (out / file_name).write_text(header + "".join(f"{n}|{t}|{speaker}\n" for n, t in part), encoding="utf-8")
    logger.info("demo dataset '%s': %d clips in %s", language, len(rows), out)
    return out
