"""Language support: normalisers, tokenizer registration, vocabulary extension, embedding resize.

Light imports only here (no torch/TTS at import): ``load_tokenizer`` and ``use_toolkit_tokenizer``
import Coqui's tokenizer when called.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from utils.language.registry import XTTS_LANGUAGES, check_language, get_language_spec, normalize_text

if TYPE_CHECKING:
    from utils.language.tokenizer import TextTokenizer

__all__ = [
    "XTTS_LANGUAGES",
    "check_language",
    "get_language_spec",
    "load_tokenizer",
    "normalize_text",
    "use_toolkit_tokenizer",
]


def load_tokenizer(vocab_path: str | Path, languages: Iterable[str] | None = None) -> TextTokenizer:
    """See :func:`utils.language.tokenizer.load_tokenizer`."""
    from utils.language.tokenizer import load_tokenizer as _load

    return _load(vocab_path, languages)


def use_toolkit_tokenizer(
    xtts_model: Any, vocab_path: str | Path, languages: Iterable[str] | None = None
) -> TextTokenizer:
    """See :func:`utils.language.tokenizer.use_toolkit_tokenizer`."""
    from utils.language.tokenizer import use_toolkit_tokenizer as _use

    return _use(xtts_model, vocab_path, languages)
