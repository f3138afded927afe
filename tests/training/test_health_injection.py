"""Each health condition injected into a tiny real Trainer run: the event and the action.

The model's losses are rewritten by wrapping ToolkitGPTTrainer.train_step/eval_step (NaN at given
steps, a multiplied loss, a scripted eval loss); everything else is the real loop on the tiny base.
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
from utils.training.checkpoints import load_checkpoint
from utils.training.gpt.model import ToolkitGPTTrainer
from utils.training.health import DivergenceError


def _run(tiny_base: Path, demo_en: Path, out: Path, extra: dict | None = None, n_train: int | None = None, **cli):
    values = {
        "epochs": 2,
        "batch_size": 2,
        "grad_accum": 1,
        "num_loader_workers": 0,
        "lr": 5e-5,
        "save_every_steps": 10_000,
        "keep_checkpoints": 1,
        "update_ratio_every": 0,
        **cli,
    }
    config = build_config(resolve(dataset_hours=0.01, cli=values), tiny_base, output_path=out, language="en")
    config.toolkit["hparams"].update(extra or {})
    train_rows = read_demo_samples(demo_en / "metadata_train.csv")[:n_train]
    eval_rows = read_demo_samples(demo_en / "metadata_eval.csv")
    return train(config, train_rows, eval_rows, progress=False, plots=False)


def _patch_train_loss(monkeypatch, fn) -> None:
    """fn(call_index, loss_dict) rewrites the training losses of the n-th training forward pass."""
    original = ToolkitGPTTrainer.train_step
    calls = {"n": 0}

    def wrapped(self, batch, criterion, optimizer_idx=None):
        outputs, loss_dict = original(self, batch, criterion)
        if torch.is_grad_enabled():  # eval_step calls train_step under inference mode
            fn(calls["n"], loss_dict)
            calls["n"] += 1
        return outputs, loss_dict

    monkeypatch.setattr(ToolkitGPTTrainer, "train_step", wrapped)


def _events(run_dir: Path) -> list[dict]:
    path = run_dir / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _only_run_dir(out: Path) -> Path:
    (run_dir,) = [p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return run_dir


def test_nan_loss_skips_step_reloads_checkpoint_cuts_lr_then_stops(tiny_base, demo_en, tmp_path, monkeypatch):
    def inject(n, loss_dict):
        if n in (5, 7, 8):  # 5: recovery 1, 7: recovery 2, 8: one too many
            loss_dict["loss"] = loss_dict["loss"] * math.nan

    _patch_train_loss(monkeypatch, inject)
    with pytest.raises(DivergenceError, match="--restore"):
        _run(tiny_base, demo_en, tmp_path, save_every_steps=3, eval_every_steps=100, divergence_max_recoveries=2)
    run_dir = _only_run_dir(tmp_path)
    events = _events(run_dir)
    assert [e["event"] for e in events] == ["divergence"] * 3
    # the newest weights at step 6 are the epoch-end best model (5 steps done, weights only: the
    # optimizer state is reset); the save after 6 steps done then wrote checkpoint_6 (full state,
    # after recovery 1), reloaded by recovery 2
    assert events[0]["step"] == 6
    assert "reloaded weights from best_model_5.pth (optimizer state reset)" in events[0]["action"]
    assert "LR 5e-05 -> 2.5e-05" in events[0]["action"]
    assert events[1]["step"] == 8 and "checkpoint_6.pth" in events[1]["action"]
    assert "LR 2.5e-05 -> 1.25e-05" in events[1]["action"]
    assert events[2]["action"] == "stopped training" and events[2]["step"] == 9  # steps count trainer steps done
    # the skipped steps left no NaN in the weights: the last checkpoint is finite and carries the cut LR
    state = load_checkpoint(run_dir / "checkpoint_6.pth")
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert state["scheduler"][0]["health_scale"] == pytest.approx(0.5)
    assert state["toolkit_state"]["health"]["recoveries"] == 1
    assert not (run_dir / "checkpoint_10.pth").exists()  # no final checkpoint after a divergence stop


def test_loss_spike_and_clipping_saturation(tiny_base, demo_en, tmp_path, monkeypatch):
    def inject(n, loss_dict):
        if n >= 4:
            for key in ("loss", "loss_mel_ce"):
                loss_dict[key] = loss_dict[key] * 3.0

    _patch_train_loss(monkeypatch, inject)
    extra = {"ema_alpha": 0.5, "spike_burn_in": 2}
    # update/weight ratio measured every 2 optimizer steps; at LR 5e-5 it is ~1e-4, so a floor of 0.1
    # flags every parameter group as "LR too small" (once each)
    result = _run(
        tiny_base,
        demo_en,
        tmp_path,
        extra=extra,
        spike_window=3,
        spike_ratio=0.3,
        grad_clip=0.05,
        clip_window=4,
        clip_share=0.5,
        update_ratio_every=2,
        update_ratio_low=0.1,
    )
    names = [e["event"] for e in result.events]
    assert names.count("loss_spike") == 1 and names.count("clipping_saturation") == 1
    small = [e for e in result.events if e["event"] == "lr_too_small"]
    assert small and len({e["group"] for e in small}) == len(small)
    assert all(0 < e["ratio"] < 0.1 and e["optimizer_step"] == 2 for e in small)
    spike = next(e for e in result.events if e["event"] == "loss_spike")
    assert spike["optimizer_step"] == 7  # steps 5, 6, 7 above 1.3 x the minimum: the third fires
    assert spike["ema"] > 1.3 * spike["ema_min"]
    clip = next(e for e in result.events if e["event"] == "clipping_saturation")
    assert clip["optimizer_step"] == 4 and clip["share"] == 1.0  # grad norms ~1-10 vs clip 0.05
    # the evaluation record after the events names them; metrics.jsonl stays one line per evaluation
    lines = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and lines[0]["health_events"] + lines[1]["health_events"] == names


def test_flat_then_rising_eval_loss_plateau_overfitting_early_stop(tiny_base, demo_en, tmp_path, monkeypatch):
    scripted = [5.0, 4.0, 4.0, 4.0, 4.2, 4.4, 4.6]
    original = ToolkitGPTTrainer.eval_step
    calls = {"n": 0}

    def eval_step(self, batch, criterion, optimizer_idx=None):
        outputs, loss_dict = original(self, batch, criterion)
        loss_dict["loss"] = torch.tensor(scripted[calls["n"]])  # one eval batch per evaluation (2 eval rows)
        calls["n"] += 1
        return outputs, loss_dict

    monkeypatch.setattr(ToolkitGPTTrainer, "eval_step", eval_step)
    # 4 training rows: 2 optimizer steps per epoch, one evaluation per epoch
    result = _run(
        tiny_base,
        demo_en,
        tmp_path,
        n_train=4,
        epochs=7,
        lr=2e-4,
        plateau_window=2,
        overfit_window=2,
        early_stop_patience=4,
    )
    evals = [r["eval_loss"] for r in result.records]
    assert evals == pytest.approx(scripted[:6])  # stopped after the 6th evaluation, not 7
    assert result.stop_reason == "early_stopping" and result.total_steps == 12
    train_losses = [r["train_loss"] for r in result.records]
    assert train_losses[5] < train_losses[4] < train_losses[3]  # the real train loss kept falling
    by_eval = [r["health_events"] for r in result.records]
    assert by_eval[3] == ["plateau"]  # best 4.0 -> 4.0 over 2 evaluations
    assert by_eval[5] == ["overfitting"]  # eval up and train down at evaluations 5 and 6
    # the best checkpoint is kept: eval loss 4.0 after epoch 2 (4 trainer steps)
    best = load_checkpoint(result.run_dir / "best_model.pth", mmap=True)
    assert best["model_loss"]["eval_loss"] == pytest.approx(4.0) and best["toolkit_state"]["steps_done"] == 4
    assert (result.run_dir / "best_model_4.pth").samefile(result.run_dir / "best_model.pth")
    assert (result.run_dir / "checkpoint_12.pth").is_file()
