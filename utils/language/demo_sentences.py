"""Bundled demo sentences for new languages, and the small builder of demo/am.

The CSVs keep the sentences as written (digits, Ethiopic numerals, abbreviations), so training
exercises the normaliser; espeak-ng speaks the *normalised* text, so the audio says what the model
is taught to read.
"""

from __future__ import annotations

import logging
from pathlib import Path

from utils.errors import ConfigError

logger = logging.getLogger(__name__)


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
    from utils.demo import make_espeak_dataset
    from utils.language.registry import normalize_text

    if language not in DEMO_SENTENCES:
        raise ConfigError(f"no demo sentences for '{language}'; available: {', '.join(DEMO_SENTENCES)}")
    return make_espeak_dataset(
        out_dir,
        DEMO_SENTENCES[language],
        voice=ESPEAK_VOICES[language],
        prefix=language,
        speaker=speaker,
        n_eval=n_eval,
        spoken=lambda text: normalize_text(text, language),
        base_speed=175,
    )
