"""Which writing system a language is written in, and how much of a transcript is in another.

English transcripts checked as Russian (``--language ru``) or Amharic (``am``) tokenize without
an error: Coqui's Russian cleaners pass Latin letters through, and a vocabulary extended for
Amharic simply learns the Latin letters too. Only the letters tell: here each letter of the raw
transcript is assigned its Unicode script (from its character name), and the share outside the
language's script(s) is counted. Digits, punctuation, spaces and marks do not count.
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache

LATIN = ("Latin",)
LANGUAGE_SCRIPTS: dict[str, tuple[str, ...]] = {
    **{code: LATIN for code in ("en", "es", "fr", "de", "it", "pt", "pl", "tr", "nl", "cs", "hu")},
    "ru": ("Cyrillic",),
    "ar": ("Arabic",),
    "hi": ("Devanagari",),
    "zh-cn": ("Han",),
    "zh": ("Han",),
    "ja": ("Hiragana", "Katakana", "Han"),
    "ko": ("Hangul",),
    "am": ("Ethiopic",),
}

# The first words of Unicode character names, per script. Han covers the CJK ideographs and
# the ideographic iteration mark; the prolonged sound mark (ー) is used in Katakana and Hiragana.
_NAME_PREFIXES: tuple[tuple[str, str], ...] = (
    ("LATIN ", "Latin"),
    ("FULLWIDTH LATIN ", "Latin"),
    ("CYRILLIC ", "Cyrillic"),
    ("ARABIC ", "Arabic"),
    ("DEVANAGARI ", "Devanagari"),
    ("CJK UNIFIED IDEOGRAPH", "Han"),
    ("CJK COMPATIBILITY IDEOGRAPH", "Han"),
    ("IDEOGRAPHIC ITERATION MARK", "Han"),
    ("HIRAGANA ", "Hiragana"),
    ("KATAKANA-HIRAGANA ", "Katakana"),
    ("KATAKANA ", "Katakana"),
    ("HALFWIDTH KATAKANA ", "Katakana"),
    ("HANGUL ", "Hangul"),
    ("HALFWIDTH HANGUL ", "Hangul"),
    ("ETHIOPIC ", "Ethiopic"),
    ("GREEK ", "Greek"),
    ("HEBREW ", "Hebrew"),
    ("THAI ", "Thai"),
    ("ARMENIAN ", "Armenian"),
    ("GEORGIAN ", "Georgian"),
    ("BENGALI ", "Bengali"),
    ("TAMIL ", "Tamil"),
)


@lru_cache(maxsize=8192)
def script_of(ch: str) -> str | None:
    """The script of a letter ("Latin", "Cyrillic", ...; "Other" for one not named here), None
    for anything that is not a letter (digits, punctuation, spaces, combining marks)."""
    if not unicodedata.category(ch).startswith("L"):
        return None
    name = unicodedata.name(ch, "")
    for prefix, script in _NAME_PREFIXES:
        if name.startswith(prefix):
            return script
    return "Other"


def expected_scripts(language: str) -> tuple[str, ...] | None:
    """The scripts ``language`` is written in, or None when the toolkit does not know them."""
    return LANGUAGE_SCRIPTS.get(language)


@dataclass
class ScriptCount:
    """Letters of some text, and those outside the expected scripts (counted per script)."""

    letters: int = 0
    outside: int = 0
    by_script: Counter = field(default_factory=Counter)

    @property
    def share(self) -> float:
        """Share of the letters outside the expected scripts (0 for text without letters)."""
        return self.outside / self.letters if self.letters else 0.0

    def add(self, other: ScriptCount) -> None:
        self.letters += other.letters
        self.outside += other.outside
        self.by_script.update(other.by_script)

    def describe(self, expected: tuple[str, ...]) -> str:
        """E.g. ``40 of 40 letters (100%) outside Cyrillic (Latin 40)``."""
        scripts = ", ".join(f"{name} {n}" for name, n in self.by_script.most_common())
        return f"{self.outside} of {self.letters} letters ({self.share:.0%}) outside {'/'.join(expected)}" + (
            f" ({scripts})" if scripts else ""
        )


def count_scripts(text: str, language: str) -> ScriptCount | None:
    """Letters of ``text`` and those outside ``language``'s scripts; None for a language whose
    script the toolkit does not know."""
    expected = expected_scripts(language)
    if expected is None:
        return None
    count = ScriptCount()
    for ch in unicodedata.normalize("NFC", text):
        script = script_of(ch)
        if script is None:
            continue
        count.letters += 1
        if script not in expected:
            count.outside += 1
            count.by_script[script] += 1
    return count
