"""Vocabulary extension: no [UNK], round trip, old ids and merges unchanged, real merges emitted."""

from __future__ import annotations

import json

import pytest
from tokenizers import Tokenizer

from utils.errors import LanguageError
from utils.language.demo_sentences import AMHARIC_DEMO_SENTENCES
from utils.language.registry import language_tokens, normalize_text
from utils.language.tokenizer import load_tokenizer
from utils.language.vocab import extend_vocab

ENGLISH = [
    "the quick brown fox jumps over the lazy dog.",
    "hello world, we train a voice model! 1999 and 42?",
    "Sphinx of black quartz, judge my vow; THE END",
]


def test_every_demo_sentence_encodes_without_unk_and_round_trips(base_vocab, am_extension):
    base = load_tokenizer(base_vocab)
    ext = load_tokenizer(am_extension.path)
    unk = ext.tokenizer.token_to_id("[UNK]")
    for sentence in AMHARIC_DEMO_SENTENCES:
        normalised = normalize_text(sentence, "am")
        assert base.unknown_characters(sentence, "en")  # Ge'ez is [UNK] in the English-only base
        ids = ext.encode(sentence, "am")
        assert unk not in ids, sentence
        assert ids[0] == am_extension.language_token_id
        assert ext.decode(ids) == "[am]" + normalised  # Coqui's decode, inherited unchanged
        assert ext.unknown_characters(sentence, "am") == []


def test_existing_ids_and_merges_unchanged(base_vocab, am_extension):
    old = json.loads(base_vocab.read_text(encoding="utf-8"))
    new = json.loads(am_extension.path.read_text(encoding="utf-8"))
    for token, idx in old["model"]["vocab"].items():
        assert new["model"]["vocab"][token] == idx
    n_old = len(old["model"]["merges"])
    assert new["model"]["merges"][:n_old] == old["model"]["merges"]
    assert len(new["model"]["merges"]) == n_old + am_extension.merges_added
    assert new["added_tokens"][: len(old["added_tokens"])] == old["added_tokens"]
    # new ids are contiguous after the old maximum: [am], characters, merged tokens
    ids = sorted(new["model"]["vocab"].values())
    assert ids == list(range(am_extension.new_size))
    assert am_extension.language_token_id == am_extension.base_size == max(old["model"]["vocab"].values()) + 1
    assert am_extension.new_size == am_extension.base_size + 1 + len(am_extension.new_characters) + len(
        am_extension.new_tokens
    )
    assert language_tokens(am_extension.path)[-1] == "am"


def test_english_encodes_identically(base_vocab, am_extension):
    base, ext = load_tokenizer(base_vocab), load_tokenizer(am_extension.path)
    for text in ENGLISH:
        assert ext.encode(text, "en") == base.encode(text, "en")


def test_merges_make_multi_character_tokens_that_are_emitted(am_extension):
    assert am_extension.merges_added == len(am_extension.new_tokens) >= 15
    assert all(len(t) >= 2 for t in am_extension.new_tokens)
    ext = load_tokenizer(am_extension.path)
    emitted = set()
    for sentence in AMHARIC_DEMO_SENTENCES:
        emitted |= {ext.tokenizer.id_to_token(i) for i in ext.encode(sentence, "am")}
    multi = {t for t in emitted if t in set(am_extension.new_tokens)}
    assert len(multi) >= 10  # the extended BPE really emits its merged tokens
    # one id per character (spaces are [SPACE] ids) plus [am]: what a merge-less extension gives
    char_level = sum(len(normalize_text(s, "am")) + 1 for s in AMHARIC_DEMO_SENTENCES)
    n_tokens = sum(len(ext.encode(s, "am")) for s in AMHARIC_DEMO_SENTENCES)
    assert n_tokens < 0.9 * char_level
    # a token appended without its merge would be unreachable: check one merged token encodes to itself
    word = max(am_extension.new_tokens, key=len)
    assert Tokenizer.from_file(str(am_extension.path)).encode(word).tokens == [word]


def test_script_alphabet_added_so_unseen_letters_are_not_unk(am_extension):
    ext = load_tokenizer(am_extension.path)
    assert len(am_extension.new_characters) > 300  # the Ge'ez syllabary
    unseen = "ቐቑ ጟ ፖ"  # letters absent from the demo sentences
    assert ext.unknown_characters(unseen, "am") == []


def test_num_new_tokens_caps_merges(base_vocab, tmp_path):
    ext = extend_vocab(base_vocab, AMHARIC_DEMO_SENTENCES, "am", num_new_tokens=5, out_path=tmp_path / "v.json")
    assert len(ext.new_tokens) == 5
    small = extend_vocab(base_vocab, AMHARIC_DEMO_SENTENCES, "am", 5, tmp_path / "w.json", add_script_alphabet=False)
    assert small.num_added == 1 + len(small.new_characters) + 5
    vocab = json.loads(base_vocab.read_text(encoding="utf-8"))["model"]["vocab"]
    used = {c for s in AMHARIC_DEMO_SENTENCES for c in normalize_text(s, "am") if c != " " and c not in vocab}
    assert set(small.new_characters) == used


def test_refusals_write_nothing(base_vocab, am_extension, tmp_path):
    out = tmp_path / "never.json"
    with pytest.raises(LanguageError, match="XTTS v2 language"):
        extend_vocab(base_vocab, ["hello"], "en", 10, out)
    with pytest.raises(LanguageError, match=r"already has a \[am\]"):
        extend_vocab(am_extension.path, AMHARIC_DEMO_SENTENCES, "am", 10, out)
    with pytest.raises(LanguageError, match="no character the base vocabulary lacks"):
        extend_vocab(base_vocab, ["only latin text here"], "sw", 10, out)
    assert not out.exists()


def test_basic_language_extension(base_vocab, tmp_path):
    # a code with no dedicated normaliser (Tigrinya, Ge'ez script) goes through the basic one
    texts = ["ሰላም ከመይ ኣለኻ", "ሰላም ኣሎኹ የቐንየለይ", "ከመይ ኣለኹም"]
    ext = extend_vocab(base_vocab, texts, "ti", 50, tmp_path / "ti.json", add_script_alphabet=False)
    tok = load_tokenizer(ext.path)
    assert "ti" in tok.extra_languages and tok.char_limits["ti"] == 250
    for text in texts:
        assert tok.decode(tok.encode(text, "ti")) == "[ti]" + text


def test_string_merges_format_is_kept(base_vocab, tmp_path):
    # the XTTS v2 release (older tokenizers) writes merges as "a b" strings
    data = json.loads(base_vocab.read_text(encoding="utf-8"))
    data["model"]["merges"] = [" ".join(m) for m in data["model"]["merges"]]
    old = tmp_path / "old_format.json"
    old.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    ext = extend_vocab(old, AMHARIC_DEMO_SENTENCES, "am", 20, tmp_path / "ext.json")
    merges = json.loads(ext.path.read_text(encoding="utf-8"))["model"]["merges"]
    assert all(isinstance(m, str) for m in merges) and len(merges) == len(data["model"]["merges"]) + ext.merges_added
    tok = load_tokenizer(ext.path)
    assert tok.decode(tok.encode(AMHARIC_DEMO_SENTENCES[5], "am")) == "[am]" + normalize_text(
        AMHARIC_DEMO_SENTENCES[5], "am"
    )


def test_extended_tokenizer_pickles_for_loader_workers(am_extension):
    import pickle

    tok = pickle.loads(pickle.dumps(load_tokenizer(am_extension.path)))
    assert tok.encode(AMHARIC_DEMO_SENTENCES[2], "am") == load_tokenizer(am_extension.path).encode(
        AMHARIC_DEMO_SENTENCES[2], "am"
    )
    assert tok.char_limits["am"] == 150
