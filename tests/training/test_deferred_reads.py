"""Step values read from the device every few optimizer steps: the same run, far fewer host reads.

The GPU default (``default_read_every``: 10) is stood in for on the CPU by patching it to 3, with
fused AdamW (the optimizer that skips a non-finite step itself through ``found_inf``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from tests.conftest import read_demo_samples
from utils.gpt_train import build_config, train
from utils.hparams import resolve
from utils.training import step_values
from utils.training import trainer as trainer_mod
from utils.training.checkpoints import load_checkpoint
from utils.training.gpt.model import ToolkitGPTTrainer


def _run(tiny_base: Path, demo_en: Path, out: Path, monkeypatch, read_every: int, **cli):
    monkeypatch.setattr(step_values, "default_read_every", lambda: read_every)
    values = {
        "epochs": 2,
        "batch_size": 2,
        "grad_accum": 2,
        "num_loader_workers": 0,
        "lr": 5e-5,
        "grad_clip": 0.5,
        "save_every_steps": 10_000,
        "keep_checkpoints": 1,
        "update_ratio_every": 0,
        "seed": 7,
        **cli,
    }
    config = build_config(resolve(dataset_hours=0.01, cli=values), tiny_base, output_path=out, language="en")
    config.optimizer_params = {**(config.optimizer_params or {}), "fused": True}
    train_rows = read_demo_samples(demo_en / "metadata_train.csv")
    eval_rows = read_demo_samples(demo_en / "metadata_eval.csv")
    return train(config, train_rows, eval_rows, progress=True, plots=False)  # progress: no console blocks


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _count_item_calls(monkeypatch) -> dict[str, int]:
    """``Tensor.item`` calls made inside training steps (each one a device sync on a GPU)."""
    calls = {"item": 0, "in_step": False}
    item, step = torch.Tensor.item, trainer_mod.ToolkitTrainer.train_step

    def counted(self):
        calls["item"] += calls["in_step"]
        return item(self)

    def in_step(self, *args, **kwargs):
        calls["in_step"] = True
        try:
            return step(self, *args, **kwargs)
        finally:
            calls["in_step"] = False

    monkeypatch.setattr(torch.Tensor, "item", counted)
    monkeypatch.setattr(trainer_mod.ToolkitTrainer, "train_step", in_step)
    return calls


def test_deferred_reads_train_the_same_run_with_a_fraction_of_the_host_reads(tiny_base, demo_en, tmp_path, monkeypatch):
    every_step_items = _count_item_calls(monkeypatch)
    every = _run(tiny_base, demo_en, tmp_path / "every", monkeypatch, read_every=1)
    items_every = every_step_items["item"]
    monkeypatch.undo()
    deferred_items = _count_item_calls(monkeypatch)
    deferred = _run(tiny_base, demo_en, tmp_path / "deferred", monkeypatch, read_every=3)
    items_deferred = deferred_items["item"]

    assert every.total_steps == deferred.total_steps == 10 and every.optimizer_steps == deferred.optimizer_steps == 6
    a, b = _records(every.run_dir), _records(deferred.run_dir)
    assert [r["optimizer_step"] for r in a] == [r["optimizer_step"] for r in b] == [3, 6]
    for ra, rb in zip(a, b):  # the same losses, counted over the same steps
        for key in ("train_loss", "eval_loss", "lr"):
            assert rb[key] == pytest.approx(ra[key], rel=1e-6), key
        assert rb["train_samples"] == ra["train_samples"]
    wa = load_checkpoint(every.run_dir / "checkpoint_10.pth")["model"]
    wb = load_checkpoint(deferred.run_dir / "checkpoint_10.pth")["model"]
    assert max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa if wa[k].is_floating_point()) < 1e-6
    # Coqui reads three losses with .item() every step; deferred, the steps read none (one
    # .tolist() of every pending value per read instead) but Coqui's console block at step 0,
    # which formats its six values (two .item() each)
    assert items_deferred <= 12
    assert items_every >= 3 * 10  # every step: loss, loss_text_ce, loss_mel_ce


def test_a_nan_step_is_skipped_on_the_device_and_recovered_when_read(tiny_base, demo_en, tmp_path, monkeypatch):
    original = ToolkitGPTTrainer.train_step
    calls = {"n": 0}

    def nan_at_5(self, batch, criterion, optimizer_idx=None):
        outputs, loss_dict = original(self, batch, criterion)
        if torch.is_grad_enabled():
            if calls["n"] == 5:
                loss_dict["loss"] = loss_dict["loss"] * math.nan
            calls["n"] += 1
        return outputs, loss_dict

    monkeypatch.setattr(ToolkitGPTTrainer, "train_step", nan_at_5)
    result = _run(tiny_base, demo_en, tmp_path, monkeypatch, read_every=3)
    events = [json.loads(x) for x in (result.run_dir / "events.jsonl").read_text().splitlines()]
    divergence = [e for e in events if e["event"] == "divergence"]
    assert len(divergence) == 1
    assert divergence[0]["step"] == 6 and divergence[0]["optimizer_step"] == 3  # the step it happened in, not the read
    assert "LR 5e-05 -> 2.5e-05" in divergence[0]["action"]
    final = load_checkpoint(result.run_dir / "checkpoint_10.pth")
    assert all(torch.isfinite(v).all() for v in final["model"].values() if v.is_floating_point())
    assert final["toolkit_state"]["health"]["recoveries"] == 1


def test_the_fused_adamw_lever_reaches_the_optimizer_coqui_builds(tiny_base, tmp_path, monkeypatch):
    """GPTTrainer builds its optimizer from its own copy of the config: the lever must reach it."""
    import dataclasses

    from utils.training import compat, optim
    from utils.training.speed_options import SpeedOptions, apply_speed_options

    config = build_config(resolve(dataset_hours=0.01), tiny_base, output_path=tmp_path, language="en")
    model = ToolkitGPTTrainer(config)
    assert model.config is not config  # the copy that get_optimizer reads
    original = optim.use_fused_adamw
    monkeypatch.setattr(optim, "use_fused_adamw", lambda cfg, own, opts, cuda: original(cfg, own, opts, True))  # GPU
    opts = dataclasses.replace(SpeedOptions.stock(), fused_adamw=True)
    applied = apply_speed_options(model, config, opts, "cpu")
    assert applied == ["fused_adamw"]
    optimizer = model.get_optimizer()
    assert optimizer.defaults.get("fused") is True and compat.supports_found_inf(optimizer)
