"""The hooks that run during training: test sentences, quality rows in metrics.jsonl, the wiring."""

from __future__ import annotations

import json

import pytest
import soundfile as sf

from utils.after.synthesize import SynthesisOptions


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

    from utils.after.hooks import QualityEvalHook, test_sentences_hook

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

    from utils.after.hooks import QualityEvalHook, merge_into_metrics

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


def test_training_runs_the_quality_hook_as_configured():
    from types import SimpleNamespace

    from utils.after.hooks import QualityEvalHook
    from utils.finetune.training import _evaluation_hooks

    for setting in (True, False, None):
        config = SimpleNamespace(toolkit={"test_sentences": 2, "quality_eval": setting})
        (hook,) = [h for h in _evaluation_hooks(config, plots=False) if isinstance(h, QualityEvalHook)]
        assert hook.enabled == (setting if setting is not None else __import__("torch").cuda.is_available())


def test_the_training_model_is_taken_off_a_torch_wrapper():
    from types import SimpleNamespace

    import torch

    from utils.after.hooks import training_model

    inner = torch.nn.Linear(2, 2)
    assert training_model(SimpleNamespace(model=inner)) is inner
    assert training_model(SimpleNamespace(model=torch.nn.DataParallel(inner))) is inner
