"""Synthesis: CLI, options, sentence splitting (Amharic included)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from utils.after.synthesize import SynthesisOptions, load_model, split_text, synthesize


@pytest.fixture(scope="module")
def en_model(en_export):
    return load_model(en_export, device="cpu")


def test_cli_speaks_each_line_of_a_text_file(en_export, tmp_path, capsys):
    from scripts.synthesize import main

    texts = tmp_path / "lines.txt"
    texts.write_text("# a comment\nHello there.\n\nGood morning.\n", encoding="utf-8")
    rc = main(
        [
            "--model",
            str(en_export),
            "--texts",
            str(texts),
            "--out",
            str(tmp_path / "wavs"),
            "--max-new-tokens",
            "6",
            "--seed",
            "3",
            "--temperature",
            "0.5",
            "--top-k",
            "20",
        ]
    )
    assert rc == 0
    paths = capsys.readouterr().out.split()
    assert [p.rsplit("/", 1)[-1] for p in paths] == ["001.wav", "002.wav"]
    for p in paths:
        info = sf.info(p)
        assert info.samplerate == 24000 and 0 < info.frames <= 6 * 1115
        side = json.loads(open(p[: -len(".wav")] + ".json").read())  # the guard's sidecar
        assert side["chunks"][0]["max_new_tokens"] == 6 and side["chunks"][0]["cap_source"] == "max_new_tokens"
        assert len(side["chunks"][0]["attempts"]) == 2  # the command retries once by default: no stop token
        assert side["guard"]["retries"] == 1 and side["seed"] == 3


def test_cli_refuses_a_negative_retry_count_with_one_line(en_export, tmp_path, capsys):
    from scripts.synthesize import main
    from utils.cli import run

    rc = run(main, ["--model", str(en_export), "--text", "Hi.", "--retries", "-1", "--out", str(tmp_path / "x.wav")])
    assert rc == 2 and "--retries must be >= 0" in capsys.readouterr().err and not (tmp_path / "x.wav").exists()


def test_same_seed_same_audio_and_options_reach_the_model(en_model):
    opts = SynthesisOptions(max_new_tokens=6, seed=7)
    a = synthesize(en_model, "Hello there.", options=opts)
    b = synthesize(en_model, "Hello there.", options=opts)
    np.testing.assert_array_equal(a, b)
    kwargs = SynthesisOptions(temperature=0.3, max_new_tokens=6).inference_kwargs(en_model.model.config)
    assert (
        kwargs["temperature"] == 0.3
        and kwargs["top_k"] == en_model.model.config.top_k
        and kwargs["max_new_tokens"] == 6
    )


def test_long_text_is_split_and_each_chunk_spoken(en_model):
    text = " ".join(["This sentence is about fifty characters long, roughly."] * 8)  # ~440 chars, limit 250
    chunks = split_text(en_model, text, "en")
    assert len(chunks) == 2 and all(len(c) <= 250 for c in chunks)
    opts = SynthesisOptions(max_new_tokens=4, seed=0, gap_s=0.1)
    wav = synthesize(en_model, text, options=opts)
    one = synthesize(en_model, chunks[0], options=opts)
    assert wav.size == pytest.approx(2 * one.size + int(0.1 * 24000), abs=2 * 1115)


def test_amharic_splits_at_ethiopic_sentence_ends(am_export):
    model = load_model(am_export, device="cpu")
    sentence = "ዛሬ የአየር ሁኔታው በጣም ጥሩ ነው። "
    chunks = split_text(model, sentence * 8, "am")  # 8 x 26 characters, limit 150
    assert len(chunks) == 2 and all(c.endswith("።") for c in chunks)
    wav = synthesize(model, sentence * 8, language="am", options=SynthesisOptions(max_new_tokens=3, seed=0))
    assert wav.size > 2 * 1024


def test_unknown_language_is_one_line_and_exit_code_2(en_export, tmp_path, capsys):
    from scripts.synthesize import main
    from utils.cli import run

    rc = run(main, ["--model", str(en_export), "--text", "Selam", "--language", "am", "--out", str(tmp_path / "x.wav")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "does not know language 'am'" in err and not (tmp_path / "x.wav").exists()


@pytest.mark.parametrize(
    ("option", "value", "says"),
    [
        ("--temperature", "0", "must be > 0 and <= 5"),
        ("--top-p", "2", "must be > 0 and <= 1"),
        ("--speed", "0", "must be >= 0.25 and <= 4"),
        ("--speed", "-1", "must be >= 0.25"),
        ("--max-new-tokens", "0", "must be >= 1"),
        ("--top-k", "0", "must be >= 1"),
    ],
)
def test_sampling_options_out_of_range_are_one_line(en_export, tmp_path, capsys, option, value, says):
    from scripts.synthesize import main
    from utils import cli

    out = tmp_path / "o.wav"
    code = cli.run(main, ["--model", str(en_export), "--text", "Hello.", "--out", str(out), option, value])
    err = capsys.readouterr().err
    assert code == 2 and err.strip().splitlines()[-1].startswith(f"error: {option} {float(value):g}: {says}"), err
    assert "Traceback" not in err and not out.exists()


def test_no_split_with_a_text_over_the_limit_is_one_line(en_model):
    from utils.errors import ConfigError

    text = "This sentence is long enough. " * 12  # about 360 characters, over English's 250
    with pytest.raises(ConfigError, match=r"--no-split: the text has 3\d\d characters, more than XTTS's limit of 250"):
        synthesize(en_model, text, language="en", options=SynthesisOptions(split_sentences=False, seed=0))


@pytest.mark.parametrize("guard", [True, False])
def test_a_token_cap_reaches_generation_without_a_transformers_warning(en_model, guard):
    import logging

    from utils.after.guard import GuardOptions
    from utils.after.synthesize import synthesize_with_report

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # transformers' logger does not propagate: caplog would see nothing
    hf = logging.getLogger("transformers")
    hf.addHandler(handler)
    limit = en_model.model.gpt.max_gen_mel_tokens
    try:
        opts = SynthesisOptions(max_new_tokens=6, seed=0, guard=GuardOptions(enabled=guard))
        result = synthesize_with_report(en_model, "Hello there.", options=opts)
    finally:
        hf.removeHandler(handler)
    assert not [r.getMessage() for r in records if "max_length" in r.getMessage()]
    assert en_model.model.gpt.max_gen_mel_tokens == limit  # the model's own limit is back
    # the cap still holds: the random tiny GPT never stops on its own and runs to exactly 6 codes
    (chunk,) = result.chunks
    if guard:
        assert chunk.max_new_tokens == 6 and chunk.attempts and all(a.codes == 6 for a in chunk.attempts)
    assert result.duration_s <= 6 * 1024 / 22050 + 0.01
