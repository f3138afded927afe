"""Every XTTS v2 language through the toolkit's preflight and tokenizer, one real sentence each; a
language whose text front end (pypinyin, cutlet) is missing is refused in one line."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from utils import cli
from utils.language.registry import XTTS_LANGUAGES, MissingFrontendError, check_language
from utils.language.script import script_of

SENTENCES = {
    "en": "The quick brown fox jumps over the lazy dog at five o'clock.",
    "es": "El veloz murciélago hindú comía feliz cardillo y kiwi.",
    "fr": "Le cœur déçu mais l'âme plutôt naïve, Louÿs rêva de crapaüter.",
    "de": "Zwölf Boxkämpfer jagen Viktor quer über den großen Sylter Deich.",
    "it": "Ma la volpe, col suo balzo, ha raggiunto il quieto Fido.",
    "pt": "À noite, vovô Kowalsky vê o ímã cair no pé do pinguim queixoso.",
    "pl": "Pchnąć w tę łódź jeża lub ośm skrzyń fig.",
    "tr": "Pijamalı hasta yağız şoföre çabucak güvendi.",
    "ru": "Съешь же ещё этих мягких французских булок, да выпей чаю.",
    "nl": "Pa's wijze lynx bezag vroom het fikse aquaduct.",
    "cs": "Příliš žluťoučký kůň úpěl ďábelské ódy.",
    "ar": "صِف خَلقَ خَودِ كَمِثلِ الشَمسِ إِذ بَزَغَت.",
    "zh-cn": "我们今天下午三点在图书馆见面。",
    "hu": "Árvíztűrő tükörfúrógép.",
    "ko": "다람쥐 헌 쳇바퀴에 타고파.",
    "ja": "いろはにほへと、今日は天気がいいですね。",
    "hi": "ऋषियों को सताने वाले दुष्ट राक्षसों के राजा रावण का सर्वनाश करने वाले विष्णुवतार भगवान श्रीराम।",
}
ROMANISED = ("zh-cn", "ja", "ko")  # XTTS writes these in Latin letters before the BPE sees them


def _script_alphabet() -> list[str]:
    """The letters of whole scripts, as XTTS v2's vocabulary has them: ASCII, Latin-1 and Latin
    Extended-A, Cyrillic, Arabic and Devanagari (with their marks), digits and punctuation."""
    ranges = [(0x21, 0x7E), (0xC0, 0x17F), (0x400, 0x45F), (0x600, 0x6FF), (0x900, 0x97F)]
    return [chr(c) for a, b in ranges for c in range(a, b + 1) if chr(c).isprintable() and chr(c) != "|"]


@pytest.fixture(scope="module")
def xtts_vocab(tmp_path_factory) -> Path:
    """An XTTS-layout vocab.json learned from the scripts' alphabets only (never from SENTENCES)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    specials = ["[STOP]", "[UNK]", "[SPACE]", "[START]"] + [f"[{code}]" for code in XTTS_LANGUAGES]
    alphabet = _script_alphabet()
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(
        vocab_size=len(specials) + len(alphabet) + 50,
        special_tokens=specials,
        initial_alphabet=alphabet,
        limit_alphabet=len(alphabet),
        show_progress=False,
    )
    tok.train_from_iterator([" ".join(alphabet)] * 3, trainer=trainer)
    path = tmp_path_factory.mktemp("xtts_vocab") / "vocab.json"
    tok.save(str(path))
    return path


@pytest.fixture(scope="module")
def one_wav(tmp_path_factory) -> Path:
    from utils.demo import espeak_to_wav

    return espeak_to_wav("One sentence of speech for the preflight.", tmp_path_factory.mktemp("wav") / "clip.wav")


def test_every_xtts_language_has_a_sentence():
    assert set(SENTENCES) == set(XTTS_LANGUAGES)


@pytest.mark.parametrize("language", XTTS_LANGUAGES)
def test_one_sentence_per_language_through_tokenizer_and_preflight(language, xtts_vocab, one_wav, tmp_path):
    from utils.data.preflight import run_preflight
    from utils.language import load_tokenizer

    check_language(language)
    tok = load_tokenizer(xtts_vocab)
    text = SENTENCES[language]
    ids = tok.encode(text, language)
    assert ids[0] == tok.tokenizer.token_to_id(f"[{language}]")
    assert 1 not in ids, tok.unknown_characters(text, language)  # no [UNK]
    normalised = tok.normalize(text, language)
    letters = [script_of(ch) for ch in normalised if script_of(ch)]
    assert len(letters) >= 10
    if language in ROMANISED:  # pinyin, romaji, romanised Hangul: the front end really ran
        assert set(letters) == {"Latin"}, normalised
    ds = tmp_path / "ds"
    (ds / "wavs").mkdir(parents=True)
    (ds / "wavs" / "a.wav").write_bytes(one_wav.read_bytes())
    (ds / "metadata_train.csv").write_text(f"audio_file|text|speaker_name\nwavs/a.wav|{text}|spk\n", encoding="utf-8")
    report = run_preflight(ds / "metadata_train.csv", language=language, tokenizer=tok, progress=False)
    assert (report.kept, report.excluded) == (1, [])
    assert report.scripts["checked"] and report.scripts["outside"] == 0  # written in the language's own script


def test_missing_pypinyin_is_one_line_not_a_traceback(xtts_vocab, one_wav, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pypinyin", None)  # import pypinyin now raises ImportError
    with pytest.raises(MissingFrontendError, match=r"pypinyin .*pip install 'pypinyin>=0.40'"):
        check_language("zh-cn")
    from utils.language import load_tokenizer

    with pytest.raises(MissingFrontendError, match="pypinyin"):
        load_tokenizer(xtts_vocab).encode(SENTENCES["zh-cn"], "zh-cn")
    # through the command: exit 2, one line naming the package and the install command
    from scripts.validate_dataset import main as validate

    (tmp_path / "wavs").mkdir()
    (tmp_path / "wavs" / "a.wav").write_bytes(one_wav.read_bytes())
    csv = tmp_path / "metadata.csv"
    csv.write_text(f"audio_file|text|speaker_name\nwavs/a.wav|{SENTENCES['zh-cn']}|spk\n", encoding="utf-8")
    capsys.readouterr()
    code = cli.run(validate, [str(csv), "--language", "zh-cn", "--vocab", str(xtts_vocab), "--no-progress"])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
    assert "pypinyin" in errors[0] and "pip install" in errors[0]


def test_missing_cutlet_refuses_japanese_before_any_work(monkeypatch, capsys):
    from utils.gpt_train import main

    monkeypatch.setitem(sys.modules, "cutlet", None)
    with pytest.raises(MissingFrontendError, match=r"cutlet .*pip install 'cutlet>=0.2'"):
        check_language("ja")
    capsys.readouterr()
    code = cli.run(main, ["--language", "ja", "--dataset-hours", "5", "--dry-run"])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(errors) == 1 and "cutlet" in errors[0] and "pip install" in errors[0], err
    check_language("en")  # other languages are not affected
