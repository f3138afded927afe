"""Basic normaliser for a language that has no dedicated one.

NFC, lower case (only scripts with case change), quotes dropped, dashes and typographic marks mapped
to ASCII, numbers read by ``num2words`` when it knows the language (left as digits otherwise, where
preflight reports them if the vocabulary lacks them), whitespace collapsed.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from functools import cache

logger = logging.getLogger(__name__)

QUOTES = '"«»“”„‹›'
PUNCTUATION_MAP = {"‘": "'", "’": "'", "–": ",", "—": ",", "…": ".", "\u00a0": " "}
_INTEGER_RE = re.compile(r"\d+")
_SPACE_BEFORE_PUNCT_RE = re.compile(r"\s+([.,;:?!])")


@cache
def _num2words_supports(language: str) -> bool:
    from num2words import num2words

    try:
        num2words(7, lang=language)
    except (NotImplementedError, KeyError, ValueError, TypeError):
        return False
    return True


def _numbers(text: str, language: str) -> str:
    if not _num2words_supports(language):
        return text
    from num2words import num2words

    def words(match: re.Match) -> str:
        try:
            return str(num2words(int(match.group(0)), lang=language))
        except (NotImplementedError, OverflowError, TypeError, ValueError):
            return match.group(0)

    return _INTEGER_RE.sub(words, text)


def normalize_basic(text: str, language: str) -> str:
    """Normalise ``text`` for ``language`` with the rules above."""
    text = unicodedata.normalize("NFC", text)
    for quote in QUOTES:
        text = text.replace(quote, "")
    for src, dst in PUNCTUATION_MAP.items():
        text = text.replace(src, dst)
    text = _numbers(text, language).lower()
    text = _SPACE_BEFORE_PUNCT_RE.sub(r"\1", text)
    return " ".join(text.split())
