"""Which languages the toolkit handles, and how each is normalised.

XTTS v2 knows the 17 codes in :data:`XTTS_LANGUAGES`; Coqui's tokenizer normalises those. Any other
code is a *new* language: it needs a vocabulary extended for it (``[code]`` token plus its
characters, see :mod:`utils.language.vocab`) and a normaliser: a dedicated one (Amharic) or the
basic one (:mod:`utils.language.basic`).
"""

from __future__ import annotations

import json
import logging
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache, lru_cache, partial
from pathlib import Path

from utils.errors import LanguageError

logger = logging.getLogger(__name__)

XTTS_LANGUAGES: tuple[str, ...] = (
    "en",
    "es",
    "fr",
    "de",
    "it",
    "pt",
    "pl",
    "tr",
    "ru",
    "nl",
    "cs",
    "ar",
    "zh-cn",
    "hu",
    "ko",
    "ja",
    "hi",
)
_CODE_RE = re.compile(r"^[a-z]{2,3}$")
_LANGUAGE_TOKEN_RE = re.compile(r"^\[([a-z]{2,3}(?:-[a-z]{2,4})?)\]$")

# Characters per text chunk when splitting long input (Coqui's VoiceBpeTokenizer.char_limits holds
# the XTTS ones, 71 (ja) .. 273 (fr)). Ge'ez is a syllabary (one character per syllable), denser
# than Latin text, so Amharic gets the limit XTTS uses for Hindi.
DEFAULT_CHAR_LIMIT = 250
AMHARIC_CHAR_LIMIT = 150


def _script_letters(first: int, last: int) -> str:
    return "".join(chr(c) for c in range(first, last + 1) if unicodedata.category(chr(c)) == "Lo")


@dataclass(frozen=True)
class LanguageSpec:
    """How one new language is handled.

    Attributes:
        code: ISO 639 code, as in ``--language`` and the ``[code]`` vocabulary token.
        normalize: text -> normalised text (what the tokenizer encodes).
        char_limit: characters per chunk when long text is split for synthesis.
        alphabet: letters of the script, added to the vocabulary as single-character tokens even
            if the training text lacks some (so inference never meets [UNK] for them).
        sentence_ends: characters that end a sentence after normalisation.
        dedicated: False when the basic normaliser stands in.
    """

    code: str
    normalize: Callable[[str], str] = field(repr=False)
    char_limit: int = DEFAULT_CHAR_LIMIT
    alphabet: str = field(default="", repr=False)
    sentence_ends: str = ".!?"
    dedicated: bool = True


def _amharic_spec() -> LanguageSpec:
    from utils.language.amharic import normalize_amharic

    return LanguageSpec(
        code="am",
        normalize=normalize_amharic,
        char_limit=AMHARIC_CHAR_LIMIT,
        alphabet=_script_letters(0x1200, 0x135A),  # Ethiopic syllables (numerals/punctuation are normalised away)
    )


# Languages with a dedicated normaliser. Add one: a module with ``normalize_<name>(text) -> str``
# and an entry here.
DEDICATED: dict[str, Callable[[], LanguageSpec]] = {"am": _amharic_spec}


# The Python packages Coqui's text front end imports on first use for some XTTS languages (module,
# or alternatives joined by "|"; pip requirement; what it does). Coqui keeps them out of its
# required dependencies, so a missing one would surface as an ImportError in the middle of the
# preflight or of training.
FRONTEND_PACKAGES: dict[str, tuple[tuple[str, str, str], ...]] = {
    "zh-cn": (("pypinyin", "pypinyin>=0.40", "Chinese characters to pinyin"),),
    "ja": (
        ("cutlet", "cutlet>=0.2", "Japanese to romaji"),
        ("fugashi", "fugashi[unidic-lite]>=1.3", "Japanese word splitting for cutlet"),
        ("unidic_lite|unidic", "unidic-lite", "the dictionary fugashi reads"),
    ),
    "ko": (("ko_speech_tools", "ko-speech-tools", "Hangul to Latin letters"),),
}
LOCK_INSTALL = "pip install --no-deps --require-hashes -r requirements/lock.txt"


class MissingFrontendError(LanguageError):
    """A Python package that a language's text front end needs is not installed."""


def missing_frontend(language: str) -> str | None:
    """Why ``language``'s text front end cannot run here (one line with the install command), or None."""
    code = "zh-cn" if language == "zh" else language
    for modules, requirement, purpose in FRONTEND_PACKAGES.get(code, ()):
        if not any(_importable(module) for module in modules.split("|")):
            package = re.split(r"[\[<>=]", requirement)[0]
            return (
                f"--language {code} needs the Python package {package} ({purpose}), which is not installed: "
                f"pip install '{requirement}' (or the toolkit's locked set: {LOCK_INSTALL})"
            )
    return None


def _importable(module: str) -> bool:
    import importlib

    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def check_frontend(language: str) -> None:
    """Raise :class:`MissingFrontendError` (one line, with the install command) when a package
    that ``language``'s text normalisation needs is missing."""
    problem = missing_frontend(language)
    if problem is not None:
        raise MissingFrontendError(problem)


def is_xtts_language(language: str) -> bool:
    """True for the 17 XTTS codes (``zh`` counts as ``zh-cn``)."""
    return language in XTTS_LANGUAGES or language == "zh"


@cache
def get_language_spec(language: str) -> LanguageSpec:
    """The spec of a new language: dedicated if there is one, else the basic normaliser.

    Raises:
        LanguageError: for an XTTS language (Coqui handles those) or a malformed code.
    """
    if is_xtts_language(language):
        raise LanguageError(f"'{language}' is an XTTS v2 language; it needs no extension")
    if not _CODE_RE.match(language):
        raise LanguageError(
            f"'{language}' is not a language code; use a 2-3 letter ISO 639 code such as 'am' "
            f"(XTTS v2 codes: {', '.join(XTTS_LANGUAGES)})"
        )
    if language in DEDICATED:
        return DEDICATED[language]()
    from utils.language.basic import normalize_basic

    logger.info("no dedicated normaliser for '%s'; using the basic one (NFC, case, punctuation, spaces)", language)
    return LanguageSpec(code=language, normalize=partial(normalize_basic, language=language), dedicated=False)


def language_tokens(vocab_path: str | Path) -> list[str]:
    """Language codes that have a ``[code]`` token in a tokenizers vocab.json, in id order."""
    try:
        data = json.loads(Path(vocab_path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LanguageError(f"cannot read vocabulary {vocab_path}: {exc}; pass the base model's vocab.json") from exc
    found = {}
    for token in data.get("added_tokens", []):
        m = _LANGUAGE_TOKEN_RE.match(token.get("content", ""))
        if m:
            found[m.group(1)] = token["id"]
    for content, idx in data.get("model", {}).get("vocab", {}).items():
        m = _LANGUAGE_TOKEN_RE.match(content)
        if m:
            found.setdefault(m.group(1), idx)
    return sorted(found, key=found.get)


def check_language(language: str, vocab_path: str | Path | None = None) -> str:
    """Check that the toolkit can train/synthesise ``language``; return the code.

    XTTS languages pass when the packages their text front end needs are installed (Chinese and
    Japanese need extras). A new language passes if its code is well formed and, when
    ``vocab_path`` is given, that vocabulary has its ``[code]`` token (i.e. was extended for it).

    Raises:
        LanguageError: naming the supported codes and the fix (MissingFrontendError: the package
            to install, and how).
    """
    if language == "zh":
        raise LanguageError("'zh': XTTS v2's code for Mandarin Chinese is 'zh-cn'; use --language zh-cn")
    if is_xtts_language(language):
        check_frontend(language)
        return language
    get_language_spec(language)  # raises for a malformed code
    if vocab_path is not None and language not in language_tokens(vocab_path):
        raise LanguageError(
            f"vocabulary {vocab_path} has no [{language}] token, so '{language}' text would be [UNK]; extend it "
            f"(utils.language.vocab.extend_vocab, done by training with --language {language}) or use the run's "
            f"vocab.json. XTTS v2 codes: {', '.join(XTTS_LANGUAGES)}"
        )
    return language


@lru_cache(maxsize=1)
def _coqui_tokenizer():
    from TTS.tts.layers.xtts.tokenizer import VoiceBpeTokenizer

    return VoiceBpeTokenizer()  # no vocab: only its text cleaners are used


def normalize_text(text: str, language: str) -> str:
    """The text the tokenizer encodes for ``language``: Coqui's cleaners for XTTS codes, ours else."""
    base = language.split("-")[0]
    if is_xtts_language(language) or is_xtts_language(base):
        try:
            return _coqui_tokenizer().preprocess_text(text, base)
        except ImportError as exc:
            raise MissingFrontendError(missing_frontend(language) or f"--language {language}: {exc}") from exc
    return get_language_spec(language).normalize(text)
