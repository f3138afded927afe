"""Tokenizer registration: only our instances accept new languages; Coqui's stays as it was."""

from __future__ import annotations

import pytest
from TTS.tts.layers.xtts.tokenizer import VoiceBpeTokenizer

from utils.errors import LanguageError
from utils.language import check_language, load_tokenizer
from utils.language.tokenizer import TextTokenizer, split_sentences

SENTENCE = "ዶ/ር አበበ ነገ በ3 ሰዓት ይመጣሉ።"


def test_plain_coqui_tokenizer_still_rejects_amharic(base_vocab, am_extension):
    ours = load_tokenizer(am_extension.path)
    assert ours.encode(SENTENCE, "am")
    plain = VoiceBpeTokenizer(str(am_extension.path))  # even with the extended vocab
    with pytest.raises(NotImplementedError):
        plain.encode(SENTENCE, "am")
    assert "am" not in plain.char_limits
    assert "am" not in VoiceBpeTokenizer().char_limits


def test_char_limits_per_instance(am_extension):
    ours = load_tokenizer(am_extension.path)
    assert ours.char_limits["am"] == 150
    assert ours.char_limits["en"] == 250
    assert ours.languages[-1] == "am" and len(ours.languages) == 18


def test_base_vocab_cannot_register_amharic(base_vocab):
    with pytest.raises(LanguageError, match=r"no \[am\] token"):
        TextTokenizer(base_vocab, languages=["am"])
    plain_ours = load_tokenizer(base_vocab)  # nothing extended: nothing extra accepted
    assert plain_ours.extra_languages == {}
    with pytest.raises(LanguageError, match="not registered"):
        plain_ours.encode(SENTENCE, "am")
    with pytest.raises(NotImplementedError):  # Coqui's contract for an unsupported language
        plain_ours.encode(SENTENCE, "am")


def test_unknown_characters_reports_what_becomes_unk(base_vocab, am_extension):
    assert load_tokenizer(base_vocab).unknown_characters("hello world", "en") == []
    # before extension: the normalised Ge'ez letters, once each, in order of appearance
    probe = TextTokenizer(base_vocab)
    probe.add_language("am", require_token=False)
    chars = probe.unknown_characters(SENTENCE, "am")
    assert chars[:4] == ["ዶ", "ክ", "ተ", "ር"]  # "ዶክተር ..." (ዶ/ር expanded first)
    assert len(chars) == len(set(chars)) > 10
    assert 1 in probe.tokenizer.encode(probe.normalize(SENTENCE, "am")).ids  # they really are [UNK]
    # after extension: none
    assert load_tokenizer(am_extension.path).unknown_characters(SENTENCE, "am") == []


def test_check_language(base_vocab, am_extension):
    assert check_language("en", base_vocab) == "en"
    assert check_language("am", am_extension.path) == "am"
    assert check_language("am") == "am"
    with pytest.raises(LanguageError, match=r"no \[am\] token"):
        check_language("am", base_vocab)
    with pytest.raises(LanguageError, match="en, es, fr"):
        check_language("Amharic!")


def test_split_sentences_on_ethiopic_and_latin_marks():
    text = "ሰላም ነው። " * 30 + "እንዴት ነህ፧ ደህና ነኝ!"
    chunks = split_sentences(text, 50)
    assert all(len(c) <= 50 for c in chunks)
    assert " ".join(chunks) == " ".join(text.split())
    assert chunks[0].endswith("።")
    assert split_sentences("short.", 50) == ["short."]
    long_one = "ቃል " * 40
    assert all(len(c) <= 30 for c in split_sentences(long_one, 30))
