"""Vocabulary extension for a language XTTS v2 lacks: new BPE tokens *with* their merges.

XTTS v2's vocab.json is a ``tokenizers`` BPE (``model.vocab`` + ``model.merges``, ``Whitespace``
pre-tokenizer, ``[STOP]``/``[UNK]``/``[SPACE]``/``[START]`` and ``[lang]`` special tokens). Adding
multi-character tokens without merges gives tokens BPE can never emit; here a BPE is trained on the
normalised training text and its merges are appended, so the extended tokenizer really emits them.

Layout of the extended vocabulary (every existing id and merge unchanged):
    old ids 0 .. N-1 | [code] | new single characters | new merged tokens, in merge order
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from utils.errors import LanguageError
from utils.language.registry import get_language_spec, is_xtts_language, language_tokens

logger = logging.getLogger(__name__)

DEFAULT_NUM_NEW_TOKENS = 2000  # public XTTS Amharic/other-language reports found ~2,000 best
# A fixed English probe: its encoding must be identical before and after extension.
ENGLISH_PROBE = (
    "the quick brown fox jumps over the lazy dog. pack my box with five dozen liquor jugs! "
    "how vexingly quick daft zebras jump? 0 1 2 3 4 5 6 7 8 9, 'quotes' (paren) - dash: colon; end."
)


@dataclass
class VocabExtension:
    """What :func:`extend_vocab` added. ``to_dict()`` is JSON-ready for the run folder."""

    path: Path
    language: str
    base_size: int  # max id + 1 before
    new_size: int  # max id + 1 after (the GPT text embedding needs this many rows)
    language_token_id: int
    new_characters: list[str] = field(default_factory=list)
    new_tokens: list[str] = field(default_factory=list)  # merged (multi-character) tokens
    merges_added: int = 0
    texts: int = 0

    @property
    def num_added(self) -> int:
        return self.new_size - self.base_size

    def to_dict(self) -> dict:
        out = asdict(self)
        out["path"] = str(self.path)
        out["num_added"] = self.num_added
        out["new_tokens"] = self.new_tokens[:50]  # a sample; the full list is in vocab.json
        return out


def _load_bpe_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LanguageError(f"cannot read base vocabulary {path}: {exc}; pass the base model's vocab.json") from exc
    model = data.get("model", {})
    if model.get("type") != "BPE" or "vocab" not in model or "merges" not in model:
        raise LanguageError(f"{path} is not a tokenizers BPE vocab.json (model.type BPE with vocab and merges)")
    return data


def _merge_parts(merge: str | list) -> tuple[str, str]:
    if isinstance(merge, str):
        a, b = merge.split(" ")
        return a, b
    return merge[0], merge[1]


def _train_bpe(words: Counter, alphabet: list[str], num_merges: int, min_frequency: int) -> list[tuple[str, str]]:
    """Merges of a BPE trained on ``words`` (pre-tokenized, with counts), in merge order."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(
        vocab_size=len(alphabet) + num_merges,
        min_frequency=min_frequency,
        initial_alphabet=alphabet,
        limit_alphabet=len(alphabet),
        show_progress=False,
    )
    # each word once per occurrence; the trainer counts them itself
    tokenizer.train_from_iterator((w for w, n in words.items() for _ in range(n)), trainer=trainer)
    trained = json.loads(tokenizer.to_str())["model"]["merges"]
    return [_merge_parts(m) for m in trained]


def extend_vocab(
    base_vocab_json: str | Path,
    texts: Iterable[str],
    language: str,
    num_new_tokens: int = DEFAULT_NUM_NEW_TOKENS,
    out_path: str | Path = "vocab.json",
    *,
    add_script_alphabet: bool = True,
    min_frequency: int = 2,
) -> VocabExtension:
    """Extend an XTTS vocab.json for ``language`` and write it to ``out_path``.

    Args:
        base_vocab_json: the base model's vocab.json (unchanged).
        texts: raw training transcripts; normalised here with the language's normaliser.
        language: a code XTTS lacks (e.g. ``am``).
        num_new_tokens: merged (multi-character) tokens to learn at most; the new single
            characters and the ``[code]`` token come on top.
        out_path: where the extended vocab.json goes (written only after it verified).
        add_script_alphabet: also add every letter of the language's script (Ge'ez for ``am``)
            so text at inference never meets [UNK] for a letter the training text lacked.
        min_frequency: a pair must occur this often to become a token.

    Returns:
        A :class:`VocabExtension`; ``new_size`` is the text-embedding row count the GPT needs.

    Raises:
        LanguageError: XTTS language, already-extended vocabulary, no usable text, or a failed check.
    """
    from tokenizers import Tokenizer

    base_path, out = Path(base_vocab_json), Path(out_path)
    spec = _check_extendable(base_path, language)
    data = _load_bpe_json(base_path)
    vocab: dict[str, int] = data["model"]["vocab"]
    merges: list = data["model"]["merges"]
    merges_as_str = bool(merges) and isinstance(merges[0], str)  # the file's own merge format
    base_size = max([*vocab.values(), *(t["id"] for t in data.get("added_tokens", []))]) + 1
    normalised = [t for t in (spec.normalize(t) for t in texts) if t]
    new_chars = _new_characters(normalised, vocab, spec, language, add_script_alphabet)
    trained = _train_new_merges(normalised, set(new_chars), num_new_tokens, min_frequency)
    lang_id, next_id, new_tokens, added_merges = _append_tokens(
        data, base_size, language, new_chars, trained, num_new_tokens, merges_as_str
    )
    ext = VocabExtension(
        path=out,
        language=language,
        base_size=base_size,
        new_size=next_id,
        language_token_id=lang_id,
        new_characters=new_chars,
        new_tokens=new_tokens,
        merges_added=len(added_merges),
        texts=len(normalised),
    )
    text = json.dumps(data, ensure_ascii=False)
    _verify(Tokenizer.from_file(str(base_path)), Tokenizer.from_str(text), normalised, ext)
    _write_atomic(out, text)
    _log_extended(ext)
    return ext


def _log_extended(ext: VocabExtension) -> None:
    logger.info(
        "vocabulary extended for '%s': %d -> %d tokens (%d characters, %d merged tokens with merges) from %d texts: %s",
        ext.language,
        ext.base_size,
        ext.new_size,
        len(ext.new_characters),
        len(ext.new_tokens),
        ext.texts,
        ext.path,
    )


def _check_extendable(base_path: Path, language: str) -> Any:
    """The language's spec, once it is clear the base vocabulary can be extended for it."""
    if is_xtts_language(language):
        raise LanguageError(f"'{language}' is an XTTS v2 language; its vocabulary needs no extension")
    spec = get_language_spec(language)
    if language in language_tokens(base_path):
        raise LanguageError(f"{base_path} already has a [{language}] token; use it as is instead of extending again")
    return spec


def _new_characters(
    normalised: list[str], vocab: dict[str, int], spec: Any, language: str, add_alphabet: bool
) -> list[str]:
    """The characters of the texts (and, with ``add_alphabet``, of the script) the base vocabulary lacks."""
    char_counts = Counter(ch for t in normalised for ch in t if not ch.isspace())
    new_chars = sorted(ch for ch in char_counts if ch not in vocab)
    if add_alphabet:
        new_chars = sorted(set(new_chars) | {ch for ch in spec.alphabet if ch not in vocab})
    if not new_chars:
        raise LanguageError(
            f"the {len(normalised)} normalised '{language}' texts have no character the base vocabulary lacks; "
            "check --language and the transcripts"
        )
    return new_chars


def _train_new_merges(normalised: list[str], new_char_set: set[str], num_new_tokens: int, min_frequency: int) -> list:
    """BPE on the words that hold new characters only: merges among base characters could change
    how existing languages encode, so none are learned."""
    from tokenizers import pre_tokenizers

    splitter = pre_tokenizers.Whitespace()
    words: Counter = Counter()
    for line in normalised:
        for piece, _ in splitter.pre_tokenize_str(line):
            if any(ch in new_char_set for ch in piece):
                words[piece] += 1
    train_alphabet = sorted({ch for w in words for ch in w})
    return _train_bpe(words, train_alphabet, num_new_tokens, min_frequency) if words else []


def _append_tokens(
    data: dict,
    base_size: int,
    language: str,
    new_chars: list[str],
    trained: list,
    num_new_tokens: int,
    merges_as_str: bool,
) -> tuple[int, int, list[str], list]:
    """Add ``[language]``, the new characters and the merged tokens after the base ids (in place).

    Returns:
        (language token id, the new vocabulary size, the merged tokens, the merges added).
    """
    vocab: dict[str, int] = data["model"]["vocab"]
    new_char_set = set(new_chars)
    lang_token, lang_id = f"[{language}]", base_size
    vocab[lang_token] = lang_id
    next_id = base_size + 1
    for ch in new_chars:
        vocab[ch] = next_id
        next_id += 1
    new_tokens: list[str] = []
    added_merges: list = []
    for a, b in trained:
        merged = a + b
        if len(new_tokens) >= num_new_tokens:
            break
        if merged in vocab or a not in vocab or b not in vocab or not any(ch in new_char_set for ch in merged):
            continue
        vocab[merged] = next_id
        next_id += 1
        new_tokens.append(merged)
        added_merges.append(f"{a} {b}" if merges_as_str else [a, b])
    data["model"]["merges"].extend(added_merges)
    template = next((t for t in data.get("added_tokens", []) if t.get("content") == "[en]"), None)
    entry = (
        dict(template)
        if template
        else {"single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": True}
    )
    entry.update(id=lang_id, content=lang_token)
    data.setdefault("added_tokens", []).append(entry)
    return lang_id, next_id, new_tokens, added_merges


def _write_atomic(out: Path, text: str) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=out.parent, delete=False, suffix=".tmp") as fh:
        fh.write(text)
    os.replace(fh.name, out)


def _encode_ids(tokenizer, text: str, language: str) -> list[int]:
    # the same string Coqui's VoiceBpeTokenizer.encode builds
    return tokenizer.encode(f"[{language}]{text}".replace(" ", "[SPACE]")).ids


def _verify(base, extended, normalised: list[str], ext: VocabExtension) -> None:
    """Every text encodes without [UNK]; English encodes identically; new ids are where we said."""
    unk = extended.token_to_id("[UNK]")
    bad = [t for t in normalised if unk in _encode_ids(extended, t, ext.language)]
    if bad:
        raise LanguageError(f"{len(bad)} texts still hold [UNK] after extension, e.g. {bad[0]!r}; report this as a bug")
    if _encode_ids(base, ENGLISH_PROBE, "en") != _encode_ids(extended, ENGLISH_PROBE, "en"):
        raise LanguageError("extension changed how English encodes; report this as a bug")
    if extended.token_to_id(f"[{ext.language}]") != ext.language_token_id:
        raise LanguageError(f"[{ext.language}] did not get id {ext.language_token_id}; report this as a bug")
    if max(extended.get_vocab().values()) + 1 != ext.new_size:
        raise LanguageError("extended vocabulary size mismatch; report this as a bug")
