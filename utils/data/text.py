"""Transcript text helpers and the tokenizer the preflight checks against.

The preflight needs an object with ``encode(text, language) -> list[int]`` and
``unknown_characters(text, language) -> list[str]``. The toolkit's own is
``utils.language.load_tokenizer`` (a ``VoiceBpeTokenizer`` subclass); :class:`CoquiTokenizerAdapter`
gives the same two methods over Coqui's stock tokenizer when that module is not available.
"""

from __future__ import annotations

import logging
import os
import re
import unicodedata
from typing import Protocol

logger = logging.getLogger(__name__)

_WS = re.compile(r"\s+")


class TextTokenizer(Protocol):
    """What the preflight needs from a tokenizer."""

    def encode(self, text: str, language: str) -> list[int]: ...

    def unknown_characters(self, text: str, language: str) -> list[str]: ...


def clean_transcript(text: str) -> str:
    """Collapse whitespace and replace characters the CSV format cannot hold ('|', newlines)."""
    return _WS.sub(" ", text.replace("|", " ")).strip()


_EMOJI_CHARS = (
    "\U0001f000-\U0001faff"  # pictographs, emoticons, transport, flags' letters, supplemental symbols
    "\u2600-\u27bf"  # miscellaneous symbols and dingbats
    "\u2b00-\u2bff"  # arrows and stars used as emoji
    "\u231a\u231b\u2328\u23cf\u23e9-\u23fa\u24c2\u25aa-\u25fe\u2934\u2935\u3030\u303d\u3297\u3299"
)
_EMOJI = re.compile(
    f"[{_EMOJI_CHARS}](?:[\ufe0e\ufe0f\U0001f3fb-\U0001f3ff\u20e3]|\u200d[{_EMOJI_CHARS}]|[\U000e0020-\U000e007f])*"
    "|[0-9#*]\ufe0f?\u20e3"
)


def strip_emoji(text: str) -> tuple[str, str]:
    """Remove emoji (with their modifiers, joiners and keycaps); XTTS cannot speak them.

    Returns:
        (text without emoji, whitespace-collapsed; the removed emoji joined, "" when none).
    """
    removed = _EMOJI.findall(text)
    if not removed:
        return text, ""
    return clean_transcript(_EMOJI.sub(" ", text)), "".join(removed)


def normalise_for_dedupe(text: str) -> str:
    """Lower case, no punctuation, single spaces: 'Hello, World!' == 'hello world'."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = "".join(ch for ch in text if not unicodedata.category(ch).startswith("P"))
    return re.sub(r"\s+", " ", text).strip()


def approx_token_count(text: str) -> int:
    """Upper bound on XTTS text tokens without a vocabulary: every BPE token covers >= 1 character,
    plus one language token."""
    return len(text) + 1


class CoquiTokenizerAdapter:
    """``encode`` / ``unknown_characters`` over Coqui's ``VoiceBpeTokenizer``.

    Coqui's tokenizer raises NotImplementedError for languages it has no cleaner for; that
    propagates so the caller can report the row as ``unsupported_language``.
    """

    def __init__(self, vocab_path: str | os.PathLike):
        from TTS.tts.layers.xtts.tokenizer import VoiceBpeTokenizer  # heavy import, only when asked

        self.tok = VoiceBpeTokenizer(str(vocab_path))
        self.unk_id = self.tok.tokenizer.token_to_id("[UNK]")
        self._char_cache: dict[str, bool] = {}

    def encode(self, text: str, language: str) -> list[int]:
        return list(self.tok.encode(text, language))

    def unknown_characters(self, text: str, language: str) -> list[str]:
        cleaned = self.tok.preprocess_text(text, language.split("-")[0])
        unknown = []
        for ch in dict.fromkeys(cleaned):
            if ch.isspace():
                continue
            bad = self._char_cache.get(ch)
            if bad is None:
                bad = self.unk_id in self.tok.tokenizer.encode(ch).ids
                self._char_cache[ch] = bad
            if bad:
                unknown.append(ch)
        return unknown


def load_text_tokenizer(vocab_path: str | os.PathLike) -> TextTokenizer:
    """The toolkit tokenizer for ``vocab_path`` (``utils.language``), or the Coqui adapter."""
    try:
        from utils.language import load_tokenizer  # type: ignore[attr-defined]
    except ImportError:
        logger.debug("utils.language.load_tokenizer not available; using Coqui's tokenizer")
        return CoquiTokenizerAdapter(vocab_path)
    return load_tokenizer(vocab_path)
