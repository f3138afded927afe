"""Fixtures for the language tests: an XTTS-like base vocab.json trained on English only."""

from __future__ import annotations

from pathlib import Path

import pytest

XTTS_SPECIALS = ["[STOP]", "[UNK]", "[SPACE]", "[START]"] + [
    f"[{c}]"
    for c in ("en", "es", "fr", "de", "it", "pt", "pl", "tr", "ru", "nl", "cs", "ar", "zh-cn", "hu", "ko", "ja", "hi")
]
ENGLISH_TEXT = (
    "the quick brown fox jumps over the lazy dog. pack my box with five dozen liquor jugs! "
    "how vexingly quick daft zebras jump? sphinx of black quartz, judge my vow; "
    "a journey of a thousand miles begins with a single step. she sells sea shells by the sea shore. "
    "we train a voice model on our own recordings and listen to the result carefully. "
    "numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000. quotes 'single' (paren) [bracket] - dash: colon"
)


def build_base_vocab(path: Path, vocab_size: int = 400) -> Path:
    """A tokenizers BPE vocab.json laid out like XTTS v2's (English/Latin only, no Ge'ez)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=XTTS_SPECIALS, show_progress=False)
    lines = [ENGLISH_TEXT, ENGLISH_TEXT.upper()]
    tokenizer.train_from_iterator([line.replace(" ", "[SPACE]") for line in lines], trainer=trainer)
    for idx, token in enumerate(XTTS_SPECIALS):
        assert tokenizer.token_to_id(token) == idx
    tokenizer.save(str(path))
    return path


@pytest.fixture(scope="session")
def base_vocab(tmp_path_factory) -> Path:
    return build_base_vocab(tmp_path_factory.mktemp("base") / "vocab.json")


@pytest.fixture(scope="session")
def am_extension(base_vocab, tmp_path_factory):
    """The base vocab extended for Amharic on the bundled demo sentences."""
    from utils.language.demo_sentences import AMHARIC_DEMO_SENTENCES
    from utils.language.vocab import extend_vocab

    out = tmp_path_factory.mktemp("ext") / "vocab.json"
    return extend_vocab(base_vocab, AMHARIC_DEMO_SENTENCES, "am", num_new_tokens=200, out_path=out)
