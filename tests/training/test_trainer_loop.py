"""The LR bridge inside the real Coqui Trainer loop, on the tiny base and real speech."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import read_demo_samples
from utils.gpt_train import build_config, train
from utils.hparams import resolve


def _run(tiny_base: Path, demo_en: Path, out: Path, **cli):
    values = {
        "epochs": 2,
        "batch_size": 2,
        "grad_accum": 1,
        "eval_every_steps": 1,
        "num_loader_workers": 0,
        "save_every_steps": 10_000,
        "keep_checkpoints": 1,
        **cli,
    }
    hp = resolve(dataset_hours=0.01, cli=values)
    config = build_config(hp, tiny_base, output_path=out, language="en")
    train_rows = read_demo_samples(demo_en / "metadata_train.csv")
    eval_rows = read_demo_samples(demo_en / "metadata_eval.csv")
    return train(config, train_rows, eval_rows)


def test_flat_eval_loss_halves_lr_after_patience_plus_one_and_stops_at_min_lr(tiny_base, demo_en, tmp_path):
    # An LR of 8e-7 for 15 steps moves the eval loss far less than the 1 % threshold: a flat loss.
    # Default patience 5: eval 1 sets the best, evals 2..7 are patience + 1 = 6 without improvement.
    result = _run(tiny_base, demo_en, tmp_path, epochs=3, lr=8e-7, min_lr=4e-7, plateau_threshold=0.01)
    lrs = [r["lr"] for r in result.records]
    assert len(lrs) == 15  # 5 steps per epoch x 3 epochs, one evaluation per optimizer step; none doubled
    assert lrs == pytest.approx([8e-7] * 6 + [4e-7] * 9, rel=1e-9)  # halved at eval 7, then held at min_lr
    assert [r["lr_reduced"] for r in result.records].count(True) == 1
    # The optimizer itself (its own saved state, not the evaluation records) ends at the held LR
    from utils.runs import last_checkpoint, load_checkpoint

    state = load_checkpoint(last_checkpoint(result.run_dir), mmap=True)
    groups = state["optimizer"][0]["param_groups"]
    assert groups and all(g["lr"] == pytest.approx(4e-7, rel=1e-9) for g in groups)
    # metrics.jsonl on disk: one record per evaluation, in step order
    lines = (result.run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == list(range(1, 16))


def test_improving_eval_loss_keeps_lr(tiny_base, demo_en, tmp_path):
    result = _run(tiny_base, demo_en, tmp_path, lr=2e-4, plateau_patience=1, epochs=1, eval_every_steps=1)
    eval_losses = [r["eval_loss"] for r in result.records]
    assert all(b < a for a, b in zip(eval_losses, eval_losses[1:])), eval_losses
    assert [r["lr"] for r in result.records] == [2e-4] * 5
    rec = result.records[-1]
    for key in ("step", "epoch", "lr", "train_loss", "eval_loss", "train_loss_mel_ce", "eval_loss_text_ce"):
        assert rec[key] is not None
    assert (result.run_dir / "checkpoint_5.pth").is_file()
