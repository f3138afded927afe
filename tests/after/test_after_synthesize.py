"""Synthesis: CLI, options, sentence splitting (Amharic included), the test-sentence hook."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from utils.synthesize import SynthesisOptions, load_model, split_text, synthesize


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


def _train(tiny_base, demo_en, out, hooks):
    from trainer import TrainerArgs

    from tests.conftest import read_demo_samples
    from utils.gpt_train import build_config
    from utils.hparams import resolve
    from utils.training.gpt.model import ToolkitGPTTrainer
    from utils.training.trainer import ToolkitTrainer

    values = {
        "epochs": 1,
        "batch_size": 2,
        "grad_accum": 1,
        "eval_every_steps": 2,
        "lr": 1e-4,
        "num_loader_workers": 0,
        "save_every_steps": 10_000,
        "keep_checkpoints": 1,
    }
    hp = resolve(dataset_hours=0.01, cli=values)
    config = build_config(hp, tiny_base, output_path=out, language="en")
    model = ToolkitGPTTrainer(config)
    trainer = ToolkitTrainer(
        TrainerArgs(),
        config,
        output_path=str(out),
        model=model,
        eval_every_steps=2,
        on_evaluation=hooks,
        train_samples=read_demo_samples(demo_en / "metadata_train.csv"),
        eval_samples=read_demo_samples(demo_en / "metadata_eval.csv"),
    )
    trainer.fit()
    return trainer


def test_test_sentences_hook_writes_wavs_and_tensorboard_and_leaves_training_unchanged(tiny_base, demo_en, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from utils.eval_hook import QualityEvalHook
    from utils.synthesize import test_sentences_hook

    hook = test_sentences_hook(max_sentences=1, options=SynthesisOptions(max_new_tokens=4, seed=0))
    scoring = QualityEvalHook(
        max_sentences=1, enabled=True, when="evaluation", options=SynthesisOptions(max_new_tokens=4, seed=0)
    )
    with_hook = _train(tiny_base, demo_en, tmp_path / "a", [hook, scoring])
    without = _train(tiny_base, demo_en, tmp_path / "b", [])
    steps = [r["step"] for r in with_hook.evaluation_records]
    assert steps == [2, 4, 5]
    run = tmp_path / "a"
    run_dir = next(p for p in run.iterdir() if p.is_dir())
    for step in steps:
        wavs = sorted((run_dir / "test_sentences" / f"step_{step}").glob("*.wav"))
        assert [w.name for w in wavs] == ["01.wav"]
        assert sf.info(str(wavs[0])).samplerate == 24000
        side = json.loads((run_dir / "test_sentences" / f"step_{step}" / "01.json").read_text())
        assert side["rate_source"] == "the run's training rows" and side["chunks"][0]["max_new_tokens"] == 4
    acc = EventAccumulator(str(run_dir), size_guidance={"audio": 0}).Reload()
    assert "TestAudios/01" in acc.Tags()["audio"]
    assert "Quality/similarity_xtts" in acc.Tags()["scalars"]
    # The quality numbers are merged into each evaluation's own row: still one line per evaluation.
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == steps
    assert all(
        x["quality_n"] == 1
        and x["quality_similarity_xtts"] is not None
        and "quality_dnsmos_ovrl" in x
        and x["eval_loss"] is not None
        for x in lines
    )
    assert with_hook.evaluation_records[-1]["quality_score"] == lines[-1]["quality_score"]
    # Same losses with and without the hook: the RNG and the GPT's training mode were restored.
    loss = lambda t: [r[k] for r in t.evaluation_records for k in ("train_loss", "eval_loss")]  # noqa: E731
    assert loss(with_hook) == pytest.approx(loss(without), rel=1e-6)
    assert not hasattr(with_hook.model.xtts.gpt, "gpt_inference")


def test_quality_hook_runs_at_saves_only_and_is_off_on_cpu_by_default(tmp_path):
    from types import SimpleNamespace

    import torch

    from utils.eval_hook import QualityEvalHook, merge_into_metrics

    trainer = SimpleNamespace(output_path=str(tmp_path), args=SimpleNamespace(rank=0))
    (tmp_path / "best_model_4.pth").write_bytes(b"")
    hook = QualityEvalHook(enabled=True)
    assert [hook.should_run(trainer, s) for s in (2, 4)] == [False, True]
    assert QualityEvalHook().enabled is torch.cuda.is_available()
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"step": 2, "eval_loss": 1.0}\n{"step": 4, "eval_loss": 0.5}\n')
    merge_into_metrics(metrics, 4, {"quality_cer": 0.1})
    merge_into_metrics(metrics, 7, {"quality_cer": 0.2})  # no row of that step: appended, not lost
    rows = [json.loads(x) for x in metrics.read_text().splitlines()]
    assert rows == [
        {"step": 2, "eval_loss": 1.0},
        {"step": 4, "eval_loss": 0.5, "quality_cer": 0.1},
        {"step": 7, "quality_cer": 0.2},
    ]


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
