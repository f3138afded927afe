"""Micro-batch sizing and the OOM fallback in the real Trainer loop (tiny base, CPU).

A CUDA OOM is simulated by a train_step that raises torch.cuda.OutOfMemoryError for batches larger
than a "memory limit"; the GPU figures of the automatic micro-batch are in BENCHMARKS.md.
"""

from __future__ import annotations

import json
import logging
import types
from pathlib import Path

import pytest
import torch

from tests.conftest import read_demo_samples
from utils import gpt_train
from utils.errors import ConfigError
from utils.gpt_train import build_config, train
from utils.hparams import resolve
from utils.training import autobatch, speed
from utils.training.autobatch import plan_micro_batch
from utils.training.model import ToolkitGPTTrainer


@pytest.mark.parametrize(
    ("fits", "effective", "micro", "accum"),
    [
        (128, 252, 126, 2),  # the recipe's 3 x 84 on an H100: exact
        (100, 252, 84, 3),
        (300, 252, 252, 1),  # never above the effective batch
        (5, 252, 4, 63),
        (1, 252, 1, 252),
        (221, 252, 126, 2),  # the H200: 221 fit, 221 x 1 would have been 221 samples per step
        (128, 251, 1, 251),  # a prime: exact, with a warning naming 128 x 2 = 256
        (2, 2, 2, 1),
    ],
)
def test_plan_keeps_the_effective_batch(fits, effective, micro, accum):
    plan = plan_micro_batch(fits, effective)
    assert (plan.micro_batch, plan.accumulation) == (micro, accum)
    assert plan.micro_batch <= fits


def test_a_prime_effective_batch_stays_exact_and_the_warning_names_a_better_one(caplog):
    with caplog.at_level(logging.WARNING, logger="utils.training.autobatch"):
        plan = plan_micro_batch(128, 251)
    assert plan.effective == 251
    (line,) = [r.getMessage() for r in caplog.records]
    assert "micro-batch 1 x accumulation 251" in line and "--batch-size 128 --grad-accum 2" in line


@pytest.mark.parametrize(
    ("micro", "accum", "after"), [(126, 2, (63, 4)), (63, 4, (28, 9)), (3, 84, (1, 252)), (221, 1, (17, 13))]
)
def test_halving_after_oom_keeps_the_effective_batch_exact(micro, accum, after):
    config = types.SimpleNamespace(batch_size=micro, eval_batch_size=micro, toolkit={})
    trainer = types.SimpleNamespace(
        config=config,
        grad_accum_steps=accum,
        args=types.SimpleNamespace(rank=0),
        output_path=None,
        train_loader=object(),
        eval_loader=object(),
    )
    assert autobatch.halve_micro_batch(trainer) == after
    assert config.batch_size * trainer.grad_accum_steps == micro * accum
    assert config.toolkit["hparams"]["sources"]["batch_size"] == "halved after CUDA out of memory"


def _config(tiny_base: Path, out: Path, **cli):
    values = {
        "epochs": 2,
        "num_loader_workers": 0,
        "lr": 5e-5,
        "save_every_steps": 10_000,
        "keep_checkpoints": 1,
        "update_ratio_every": 0,
        **cli,
    }
    return build_config(resolve(dataset_hours=0.01, cli=values), tiny_base, output_path=out, language="en")


def _rows(demo_en: Path):
    return read_demo_samples(demo_en / "metadata_train.csv"), read_demo_samples(demo_en / "metadata_eval.csv")


def _fake_gpu_memory(monkeypatch, limit: int, fail_once_at: int | None = None) -> list[int]:
    """Training forward passes raise a CUDA OOM above ``limit`` clips (or once, at call ``fail_once_at``).

    Returns the batch sizes of the training passes that went through.
    """
    original = ToolkitGPTTrainer.train_step
    seen: list[int] = []
    calls = {"n": 0}

    def train_step(self, batch, criterion, optimizer_idx=None):
        n = len(batch["text_lengths"])
        if torch.is_grad_enabled():  # eval runs train_step under inference mode
            calls["n"] += 1
            if n > limit or calls["n"] == fail_once_at:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
            seen.append(n)
        return original(self, batch, criterion)

    monkeypatch.setattr(ToolkitGPTTrainer, "train_step", train_step)
    return seen


def _run_dir(out: Path) -> Path:
    (run_dir,) = [p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return run_dir


def test_oom_at_first_step_halves_micro_batch_and_trains_every_clip(tiny_base, demo_en, tmp_path, monkeypatch, caplog):
    seen = _fake_gpu_memory(monkeypatch, limit=2)
    config = _config(tiny_base, tmp_path, batch_size=4, grad_accum=2)
    train_rows, eval_rows = _rows(demo_en)
    assert len(train_rows) == 10
    with caplog.at_level(logging.WARNING, logger="utils.training.autobatch"):
        result = train(config, train_rows, eval_rows, progress=False, plots=False)
    assert (
        "CUDA out of memory at micro-batch 4: micro-batch 4 -> 2, gradient accumulation 2 -> 4 (effective batch 8 -> 8)"
        in caplog.text
    )
    # 10 clips a epoch in micro-batches of 2: 5 passes, optimizer steps after passes 4 and 5
    assert seen == [2] * 10
    assert result.optimizer_steps == 4 and result.total_steps == 10
    records = [json.loads(line) for line in (_run_dir(tmp_path) / "metrics.jsonl").read_text().splitlines()]
    assert [r["train_samples"] for r in records] == [10, 10]  # the failed pass of 4 is not counted
    saved = json.loads((_run_dir(tmp_path) / "config.json").read_text())
    assert (saved["batch_size"], saved["toolkit"]["grad_accum"]) == (2, 4)
    assert saved["toolkit"]["hparams"]["sources"]["batch_size"] == "halved after CUDA out of memory"


def test_oom_mid_epoch_redoes_the_window_and_continue_keeps_the_new_size(tiny_base, demo_en, tmp_path, monkeypatch):
    seen = _fake_gpu_memory(monkeypatch, limit=10, fail_once_at=4)  # 4th pass: 2nd batch of window 2
    config = _config(tiny_base, tmp_path, batch_size=2, grad_accum=2)
    config.toolkit.update(train_csv=str(demo_en / "metadata_train.csv"), eval_csv=str(demo_en / "metadata_eval.csv"))
    train_rows, eval_rows = _rows(demo_en)
    result = train(config, train_rows, eval_rows, progress=False, plots=False)
    # epoch 1: window 1 (2 + 2 clips, stepped), pass 3 (2 clips, gradients dropped with the window),
    # then micro-batch 1 x 4 from clip 5 of the re-batched epoch: 6 passes, steps after 4 and 6
    # epoch 2: 10 passes of 1 clip, steps after 4, 8, 10
    assert seen == [2, 2, 2] + [1] * 6 + [1] * 10
    assert result.optimizer_steps == 1 + 2 + 3
    run_dir = _run_dir(tmp_path)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["optimizer_step"] for r in records] == [3, 6]
    assert records[-1]["train_samples"] == 10  # every pass of epoch 2 counted in the throughput figures
    # --continue resumes with the halved sizes from config.json
    monkeypatch.undo()
    code = gpt_train.main(
        ["--continue", str(run_dir), "--epochs", "3", "--no-plots", "--test-sentences", "0", "--no-export"]
    )
    assert code == 0
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["optimizer_step"] == 9 and records[-1]["train_samples"] == 10


def test_oom_at_micro_batch_one_is_a_clear_error(tiny_base, demo_en, tmp_path, monkeypatch):
    _fake_gpu_memory(monkeypatch, limit=0)
    config = _config(tiny_base, tmp_path, batch_size=2, grad_accum=1)
    with pytest.raises(ConfigError, match="out of memory at micro-batch 1: use --speed low-vram"):
        train(config, *_rows(demo_en), progress=False, plots=False)


def test_no_oom_backoff_lets_the_error_through(tiny_base, demo_en, tmp_path, monkeypatch):
    _fake_gpu_memory(monkeypatch, limit=1)
    config = _config(tiny_base, tmp_path, batch_size=2, grad_accum=1)
    config.toolkit["speed"] = {**speed.SpeedOptions().to_dict(), "oom_backoff": False, "num_workers": 0}
    with pytest.raises(torch.cuda.OutOfMemoryError):
        train(config, *_rows(demo_en), progress=False, plots=False)


def test_automatic_micro_batch_probes_without_changing_weights(tiny_base, demo_en, tmp_path, monkeypatch, caplog):
    """The sizing path on the CPU: fake GPU memory report, real probe steps on the tiny model."""
    fake_cuda = types.SimpleNamespace(
        is_available=lambda: True,
        mem_get_info=lambda device=None: (8 << 30, 16 << 30),
        memory_reserved=lambda device=None: 0,
        empty_cache=lambda: None,
        reset_peak_memory_stats=lambda: None,
        get_device_properties=lambda device=None: types.SimpleNamespace(name="Fake GPU", total_memory=16 << 30),
    )
    monkeypatch.setattr(autobatch, "_cuda", fake_cuda)
    probes: dict[str, object] = {}

    def fake_search(probe, budget, *, max_batch, margin=0.9, candidates=None):
        gpt = probes["model"].xtts.gpt
        before = [p.detach().clone() for p in gpt.parameters()]
        for b in (1, 2, 4, max_batch):
            probe(b)
        probes.update(
            budget=budget,
            max_batch=max_batch,
            candidates=candidates,
            unchanged=all(torch.equal(a, p) for a, p in zip(before, gpt.parameters())),
        )
        return 4  # "4 clips fit"

    monkeypatch.setattr(speed, "auto_micro_batch", fake_search)
    original_init = ToolkitGPTTrainer.__init__

    def init(self, config):
        original_init(self, config)
        probes["model"] = self

    monkeypatch.setattr(ToolkitGPTTrainer, "__init__", init)
    config = _config(tiny_base, tmp_path, grad_accum=4, epochs=1)  # table micro-batch 3 x 4 = 12
    with caplog.at_level(logging.INFO, logger="utils.training.autobatch"):
        result = train(config, *_rows(demo_en), progress=False, plots=False)
    assert probes["budget"] == 8 << 30 and probes["max_batch"] == 12
    assert probes["candidates"] == [1, 2, 3, 4, 6, 12]  # only the exact splits of 12 are probed
    assert probes["unchanged"]  # probe steps run at LR 0
    assert "micro-batch 4 x accumulation 3 = effective batch 12 (asked 12)" in caplog.text
    saved = json.loads((_run_dir(tmp_path) / "config.json").read_text())
    assert saved["toolkit"]["micro_batch_plan"] == {
        "micro_batch": 4,
        "grad_accum": 3,
        "effective_batch": 12,
        "requested_effective_batch": 12,
        "fits": 4,
    }
    assert (saved["batch_size"], saved["toolkit"]["grad_accum"]) == (4, 3)
    assert result.total_steps == 3 and result.optimizer_steps == 1  # 10 clips: passes of 4, 4, 2; one step
    # a second run on the same GPU, data and model takes the probe's result from the clip cache
    monkeypatch.setattr(speed, "auto_micro_batch", lambda *a, **k: pytest.fail("must not probe again"))
    caplog.clear()
    config = _config(tiny_base, tmp_path, grad_accum=4, epochs=1)
    with caplog.at_level(logging.INFO, logger="utils.training.autobatch"):
        train(config, *_rows(demo_en), progress=False, plots=False)
    assert "4 clips fit (measured by an earlier run" in caplog.text
    assert "micro-batch 4 x accumulation 3 = effective batch 12" in caplog.text
    # another loader worker count does not change a step's memory: still no probe
    caplog.clear()
    config = _config(tiny_base, tmp_path, grad_accum=4, epochs=1, num_loader_workers=1)
    with caplog.at_level(logging.INFO, logger="utils.training.autobatch"):
        train(config, *_rows(demo_en), progress=False, plots=False)
    assert "4 clips fit (measured by an earlier run" in caplog.text
    # another GPU: probed again
    fake_cuda.get_device_properties = lambda device=None: types.SimpleNamespace(name="Other GPU", total_memory=16 << 30)
    monkeypatch.setattr(speed, "auto_micro_batch", lambda probe, budget, *, max_batch, margin=0.9, candidates=None: 2)
    caplog.clear()
    config = _config(tiny_base, tmp_path, grad_accum=4, epochs=1)
    with caplog.at_level(logging.INFO, logger="utils.training.autobatch"):
        train(config, *_rows(demo_en), progress=False, plots=False)
    assert "micro-batch 2 x accumulation 6 = effective batch 12" in caplog.text


def test_explicit_batch_size_turns_automatic_sizing_off(tiny_base, demo_en, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(autobatch, "autosize_micro_batch", lambda trainer: pytest.fail("must not probe"))
    config = _config(tiny_base, tmp_path, batch_size=2, grad_accum=1, epochs=1)
    with caplog.at_level(logging.INFO, logger="utils.gpt_train"):
        train(config, *_rows(demo_en), progress=False, plots=False)
    assert "micro-batch 2 from --batch-size (automatic sizing off)" in caplog.text
