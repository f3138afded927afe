"""The toolkit's XTTS tokenizer: Coqui's VoiceBpeTokenizer plus the new languages asked for.

Coqui's ``VoiceBpeTokenizer.preprocess_text`` raises NotImplementedError for any language outside
its 17, and ``Xtts.inference`` reads ``tokenizer.char_limits[language]`` (KeyError). The fix lives
here and only here: :class:`TextTokenizer` overrides both for the languages registered on *that
instance*; a plain ``VoiceBpeTokenizer`` is untouched (no global patch). Install it with
:func:`use_toolkit_tokenizer` on an ``Xtts`` model (inference, export, the trainer's ``xtts``).
"""

from __future__ import annotations

import logging
import re
import textwrap
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from TTS.tts.layers.xtts.tokenizer import VoiceBpeTokenizer

from utils.errors import LanguageError
from utils.language.registry import (
    XTTS_LANGUAGES,
    LanguageSpec,
    MissingFrontendError,
    get_language_spec,
    is_xtts_language,
    language_tokens,
    missing_frontend,
)

logger = logging.getLogger(__name__)

UNK_ID = 1  # Coqui's XTTSDataset drops any row whose tokens contain id 1


class UnregisteredLanguageError(LanguageError, NotImplementedError):
    """A language this tokenizer instance does not encode.

    Also a NotImplementedError, the exception Coqui's ``preprocess_text`` raises, so code written
    against Coqui's contract (e.g. the preflight's per-row check) handles it the same way.
    """


class TextTokenizer(VoiceBpeTokenizer):
    """``VoiceBpeTokenizer`` that also accepts the new languages registered on this instance.

    Args:
        vocab_file: tokenizers vocab.json (the base's, or one from :func:`extend_vocab`).
        languages: new language codes to accept; each needs its ``[code]`` token in the vocab.
    """

    def __init__(self, vocab_file: str | Path | None = None, languages: Iterable[str] = ()):
        super().__init__(vocab_file)
        self.vocab_file = Path(vocab_file) if vocab_file is not None else None
        self.extra_languages: dict[str, LanguageSpec] = {}
        for code in languages:
            self.add_language(code)

    def add_language(self, code: str, spec: LanguageSpec | None = None, *, require_token: bool = True) -> None:
        """Accept ``code`` on this instance (normaliser and char limit from ``spec`` or the registry).

        ``require_token=False`` lets a not-yet-extended vocabulary normalise and report
        :meth:`unknown_characters` for ``code`` (its encodings then lack the language token).
        """
        if is_xtts_language(code):
            return
        spec = spec or get_language_spec(code)
        if require_token and self.tokenizer is not None and self.tokenizer.token_to_id(f"[{code}]") is None:
            raise LanguageError(
                f"vocabulary {self.vocab_file} has no [{code}] token; extend it for '{code}' "
                "(utils.language.vocab.extend_vocab) or load the run's vocab.json"
            )
        self.extra_languages[code] = spec
        self.char_limits[code] = spec.char_limit

    @property
    def languages(self) -> tuple[str, ...]:
        """Every language this instance encodes."""
        return XTTS_LANGUAGES + tuple(self.extra_languages)

    def preprocess_text(self, txt: str, lang: str) -> str:
        spec = self.extra_languages.get(lang)
        if spec is not None:
            return spec.normalize(txt)
        if lang not in XTTS_LANGUAGES and lang != "zh":
            raise UnregisteredLanguageError(
                f"language '{lang}' is not registered on this tokenizer; supported: {', '.join(self.languages)}. "
                "Load the vocab.json extended for it (load_tokenizer registers its language tokens)"
            )
        try:
            return super().preprocess_text(txt, lang)
        except ImportError as exc:  # Coqui imports pypinyin / cutlet on first use, not at start
            raise MissingFrontendError(missing_frontend(lang) or f"--language {lang}: {exc}") from exc

    def unknown_characters(self, text: str, language: str) -> list[str]:
        """Characters of the normalised ``text`` that the vocabulary lacks (each becomes [UNK]).

        Returns them once each, in order of first appearance; empty when the text encodes cleanly.
        """
        normalised = self.preprocess_text(text, language.split("-")[0])
        vocab = self.tokenizer.get_vocab()
        seen: dict[str, None] = {}
        for ch in normalised:
            if ch != " " and ch not in vocab:
                seen.setdefault(ch, None)
        return list(seen)

    def normalize(self, text: str, language: str) -> str:
        """What :meth:`encode` feeds the BPE for ``text`` (after the ``[lang]`` prefix)."""
        return self.preprocess_text(text, language.split("-")[0])


def load_tokenizer(vocab_path: str | Path, languages: Iterable[str] | None = None) -> TextTokenizer:
    """A :class:`TextTokenizer` for ``vocab_path``.

    Args:
        vocab_path: tokenizers vocab.json.
        languages: new languages to accept. None: every non-XTTS ``[code]`` token found in the
            vocabulary (an extended vocab.json carries its languages with it, so a resumed run, an
            export and inference all get them back from the file).
    """
    path = Path(vocab_path)
    if not path.is_file():
        raise LanguageError(f"vocabulary {path} not found; pass the base model's or the run's vocab.json")
    if languages is None:
        languages = [code for code in language_tokens(path) if not is_xtts_language(code)]
    return TextTokenizer(path, languages=languages)


def use_toolkit_tokenizer(
    xtts_model: Any,
    vocab_path: str | Path,
    languages: Iterable[str] | None = None,
) -> TextTokenizer:
    """Install a :class:`TextTokenizer` on one ``Xtts`` model (no global patch).

    Call it after ``Xtts.load_checkpoint`` (which builds a plain ``VoiceBpeTokenizer``). It also
    adds the new codes to ``xtts_model.config.languages`` (``Xtts.synthesize`` asserts membership)
    and checks the GPT's text embedding has one row per token.

    Raises:
        LanguageError: when the vocabulary and the GPT's text embedding disagree in size.
    """
    tokenizer = load_tokenizer(vocab_path, languages)
    gpt = getattr(xtts_model, "gpt", None)
    if gpt is not None:
        rows = gpt.text_embedding.num_embeddings
        if rows != tokenizer.get_number_tokens():
            raise LanguageError(
                f"vocabulary {vocab_path} has {tokenizer.get_number_tokens()} tokens but the model's text embedding "
                f"has {rows} rows; use the vocab.json saved with this model (or resize_text_embeddings before training)"
            )
    xtts_model.tokenizer = tokenizer
    config = getattr(xtts_model, "config", None)
    if config is not None and getattr(config, "languages", None) is not None:
        config.languages = list(config.languages) + [c for c in tokenizer.extra_languages if c not in config.languages]
    return tokenizer


def split_sentences(text: str, max_chars: int, sentence_ends: str = ".!?።፧፨") -> list[str]:
    """Split ``text`` into chunks of at most ``max_chars`` at sentence ends, for any language.

    A no-spaCy stand-in for Coqui's ``split_sentence`` (which needs spaCy and picks the English
    sentencizer for a language it does not know). Sentences are packed greedily; one longer than
    ``max_chars`` is wrapped at spaces.
    """
    text = " ".join(text.split())
    if len(text) <= max_chars:
        return [text] if text else []
    ends = re.escape(sentence_ends)
    sentences = [s.strip() for s in re.findall(rf"[^{ends}]+[{ends}]*", text) if s.strip()]
    chunks: list[str] = []
    for sentence in sentences:
        if len(sentence) > max_chars:
            chunks += textwrap.wrap(sentence, width=max_chars, break_on_hyphens=False)
        elif chunks and len(chunks[-1]) + 1 + len(sentence) <= max_chars:
            chunks[-1] += " " + sentence
        else:
            chunks.append(sentence)
    return chunks
