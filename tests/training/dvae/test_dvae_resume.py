"""A DVAE stage killed after a checkpoint goes on from that checkpoint's exact step (Coqui's continue_path)."""

from __future__ import annotations

from pathlib import Path

import pytest

from utils.errors import ConfigError


class _Killed(Exception):
    """Stands for the process dying: nothing after the raise runs, no checkpoint is written on the way out."""


def test_killed_stage_resumes_at_the_checkpoint_step(tiny_base, demo_rows, tiny_stage, tmp_path):
    from utils.runs import checkpoint_step, read_jsonl
    from utils.training.dvae.stage import StageHooks, train_dvae

    train, evals = demo_rows
    rows = train[:4]  # batch 1: 4 steps in the one epoch
    stage = tiny_stage(batch_size=1, save_every_steps=2, lr=5e-5)

    def kill_after_step_3(info: dict) -> None:
        if info["total_steps"] == 3:
            raise _Killed

    with pytest.raises(_Killed):
        train_dvae(
            stage, rows, evals, tmp_path, base_model=tiny_base, hooks=StageHooks(on_progress=[kill_after_step_3])
        )
    trainer_dir = tmp_path / "dvae"  # Coqui's Trainer writes into the stage folder itself
    # the step-interval save after 2 steps done holds the weights after 2 steps; step 3 ran and was
    # lost with the process
    assert sorted(checkpoint_step(p) for p in trainer_dir.glob("checkpoint_*.pth")) == [2]
    assert not (tmp_path / "dvae" / "dvae.pth").exists()
    with pytest.raises(ConfigError, match="already holds a DVAE stage"):
        train_dvae(stage, rows, evals, tmp_path, base_model=tiny_base)  # a fresh start never overwrites it

    resumed: list[dict] = []
    hooks = StageHooks(on_progress=[resumed.append])
    result = train_dvae(None, rows, evals, tmp_path, base_model=tiny_base, resume=True, hooks=hooks)
    assert [p["total_steps"] for p in resumed] == [3, 4]  # the lost step is redone, then the last one
    assert resumed[0]["step"] == 2 and resumed[0]["steps_in_epoch"] == 4  # the 3rd batch of the same epoch
    assert result.stage_dir == trainer_dir and result.report["steps_done"] == 4
    assert result.report["optimizer_steps"] == 4 and result.report["epochs_done"] == 1
    assert result.report["settings"]["lr"]["value"] == 5e-5  # the stage's saved settings
    # the base's record at step 0 and the one at the end of the epoch: nothing the lost step wrote twice
    assert [r["step"] for r in read_jsonl(trainer_dir / "metrics.jsonl")] == [0, 4]
    assert result.dvae_path.is_file() and Path(result.dvae_path).parent.name == "dvae"
