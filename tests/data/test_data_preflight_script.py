"""Transcripts in another script than the language's: counted per row and overall, refused above
20% of the letters unless the user allows it, never dropped without a reason in the report."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from utils import cli
from utils.data.preflight import MAX_SCRIPT_SHARE, check_usable, run_preflight
from utils.errors import DataError
from utils.language.script import count_scripts

RUSSIAN = [
    "Съешь же ещё этих мягких французских булок, да выпей чаю.",
    "Сегодня хорошая погода, и мы пойдём гулять в парк.",
    "Мой брат купил новый телефон за 300 рублей.",
    "В лесу родилась ёлочка, в лесу она росла.",
    "Мы записали этот голос тихим вечером.",
    "Пожалуйста, говорите медленнее и чётче.",
    "Книга лежит на столе рядом с лампой.",
    "Поезд отправляется ровно в семь часов утра.",
    "Она читает письмо от старого друга.",
    "Дети играют во дворе до самого вечера.",
]


def test_letters_are_counted_by_script_digits_and_punctuation_are_not():
    en = count_scripts("Hello, world! 2024", "ru")
    assert (en.letters, en.outside, dict(en.by_script)) == (10, 10, {"Latin": 10})
    assert count_scripts(RUSSIAN[2], "ru").outside == 0  # digits do not count
    mixed = count_scripts("Я купил iPhone", "ru")
    assert (mixed.letters, mixed.outside) == (12, 6) and mixed.share == pytest.approx(0.5)
    assert count_scripts("ሰላም፣ እንዴት ናችሁ፧", "am").outside == 0
    assert count_scripts("今日はCDを買った。ラーメン々", "ja").by_script == {"Latin": 2}
    assert count_scripts("صِف خَلقَ خَودِ", "ar").outside == 0  # the vowel marks are not letters
    assert count_scripts("anything", "sw") is None  # a script the toolkit does not know: not checked


def _with_texts(demo: Path, out: Path, texts: list[str] | None) -> Path:
    ds = Path(shutil.copytree(demo, out))
    if texts is not None:
        for name in ("metadata_train.csv", "metadata_eval.csv"):
            lines = (ds / name).read_text(encoding="utf-8").splitlines()
            rows = [
                f"{line.split('|')[0]}|{texts[i % len(texts)]}|{line.split('|')[2]}" for i, line in enumerate(lines[1:])
            ]
            (ds / name).write_text("\n".join([lines[0], *rows]) + "\n", encoding="utf-8")
    return ds


def test_english_rows_under_ru_are_excluded_with_the_reason_and_the_dataset_refused(demo_en, tmp_path):
    ds = _with_texts(demo_en, tmp_path / "ds", None)
    report = run_preflight(ds / "metadata_train.csv", language="ru", progress=False)
    assert report.kept == 0 and {e["reason"] for e in report.excluded} == {"wrong_script"}
    assert all(
        "(100%) outside Cyrillic" in e["detail"] and "--allow-mixed-script" in e["detail"] for e in report.excluded
    )
    assert report.scripts["share"] == 1.0 and report.scripts["rows_with_outside"] == report.total
    with pytest.raises(DataError, match=r"100% of the transcripts' letters .* Cyrillic .*--allow-mixed-script"):
        check_usable(report)
    allowed = run_preflight(ds / "metadata_train.csv", language="ru", progress=False, allow_mixed_script=True)
    assert allowed.kept == allowed.total and allowed.excluded == []
    assert [f["reason"] for f in allowed.flagged] == ["mixed_script"] * allowed.total
    check_usable(allowed)  # the user asked: not refused


def test_a_few_rows_in_another_script_are_excluded_but_the_dataset_is_not_refused(demo_en, tmp_path):
    texts = RUSSIAN[:9] + ["This row was pasted in English by mistake."]
    ds = _with_texts(demo_en, tmp_path / "ds", texts)
    report = run_preflight(ds / "metadata_train.csv", language="ru", progress=False)
    assert [e["row"] for e in report.excluded] == [11] and report.excluded[0]["reason"] == "wrong_script"
    assert 0 < report.scripts["share"] < MAX_SCRIPT_SHARE
    check_usable(report, max_excluded_share=0.2)


def _run(main, argv, capsys):
    capsys.readouterr()
    code = cli.run(main, argv)
    err = capsys.readouterr().err
    return code, [line for line in err.splitlines() if line.startswith("error: ")], err


@pytest.mark.parametrize("language", ["ru", "am"])
def test_command_refuses_english_under_ru_and_am_in_one_line(language, demo_copy, tiny_base, tmp_path, capsys):
    from utils.gpt_train import main

    out = tmp_path / "runs"
    argv = [
        "--dataset",
        str(demo_copy),
        "--base-model",
        str(tiny_base),
        "--language",
        language,
        "--output-path",
        str(out),
    ]
    code, errors, err = _run(main, argv, capsys)
    assert code == 2 and len(errors) == 1, err
    assert "100% of the transcripts' letters" in errors[0] and "--allow-mixed-script" in errors[0]
    # refused before a vocabulary was learned from the English text, and before any run folder
    assert not list(out.glob(".staging/vocab-*")) and not [p for p in out.glob("*") if p.name[0] != "."]


@pytest.mark.parametrize("language", ["ru", "am"])
def test_allowed_with_the_option_and_warned(language, demo_copy, tiny_base, tmp_path, caplog):
    from utils.finetune import FineTune, RunConfig

    cfg = RunConfig.build(
        dataset=demo_copy,
        base_model=tiny_base,
        language=language,
        output_path=tmp_path / "runs",
        allow_mixed_script=True,
        progress=False,
    )
    with caplog.at_level(logging.WARNING):
        data = FineTune(cfg).preflight()
    report = data.train_report
    # none excluded for its script; under ru Coqui spells a number in Cyrillic, which the tiny
    # English base vocabulary lacks (unknown_characters, a different check)
    assert [e["reason"] for e in report.excluded] == ([] if language == "am" else ["unknown_characters"])
    assert report.kept == report.total - len(report.excluded) >= 9
    assert [f["reason"] for f in report.flagged if f["reason"] == "mixed_script"] == ["mixed_script"] * report.kept
    script = "Cyrillic" if language == "ru" else "Ethiopic"
    assert any(f"(100%) outside {script}" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_real_russian_and_amharic_rows_pass_clean(demo_en, tiny_base, tmp_path, caplog):
    from utils.finetune import FineTune, RunConfig

    # Russian: the script check alone (the tiny base vocabulary knows only English letters)
    ru = _with_texts(demo_en, tmp_path / "ru", RUSSIAN)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        reports = [run_preflight(ru / f"metadata_{s}.csv", language="ru", progress=False) for s in ("train", "eval")]
    check_usable(reports[0], reports[1])
    # Amharic: the whole run's preflight, the vocabulary extended for it
    cfg = RunConfig.build(
        dataset=demo_en.parent / "am", base_model=tiny_base, language="am", output_path=tmp_path / "am"
    )
    with caplog.at_level(logging.WARNING):
        data = FineTune(cfg.replace(progress=False)).preflight()
    for report in [*reports, data.train_report, data.eval_report]:
        assert report.excluded == [] and report.kept == report.total > 0
        assert report.scripts["outside"] == 0 and report.scripts["letters"] >= 10 * report.total
        assert not [f for f in report.flagged if f["reason"] == "mixed_script"]
    assert not [r for r in caplog.records if "outside" in r.getMessage()]


def test_validate_dataset_refuses_and_allows_with_the_report_written(demo_en, tmp_path, capsys):
    from scripts.validate_dataset import main

    ds = _with_texts(demo_en, tmp_path / "ds", None)
    report = tmp_path / "report.json"
    code, errors, err = _run(
        main, [str(ds / "metadata_train.csv"), "--language", "ru", "--report", str(report)], capsys
    )
    assert code == 2 and len(errors) == 1 and "--allow-mixed-script" in errors[0], err
    assert json.loads(report.read_text())["reason_counts"] == {"wrong_script": 10}
    argv = [str(ds / "metadata_train.csv"), "--language", "ru", "--report", str(report), "--allow-mixed-script"]
    code, errors, err = _run(main, argv, capsys)
    saved = json.loads(report.read_text())
    assert code == 0 and saved["kept"] == 10 and saved["scripts"]["share"] == 1.0, err
    assert "letters outside the language's script" in err
