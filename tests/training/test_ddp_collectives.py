"""Data-parallel building blocks with 2 CPU processes (gloo): shared LR decisions, gradient
averaging, weight broadcast, failure propagation; batch arithmetic in one process."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from utils.errors import ConfigError, DataError
from utils.training import distributed
from utils.training.distributed import plan_batch
from utils.training.launch import check_gpus, launch_train


def _ranks(out: Path, n: int = 2) -> list[dict]:
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(n)]


def test_shared_lr_decisions_averaged_gradients_broadcast_weights(tmp_path: Path) -> None:
    # Rank 0 improves then stalls; rank 1 keeps worsening: alone they would cut the LR at different evaluations.
    losses = [[1.0, 0.9, 0.8, 0.8, 0.8, 0.8, 0.8], [2.0, 2.1, 2.2, 1.5, 1.4, 1.45, 1.5]]
    result = launch_train(2, "tests.training.ddp_targets:lr_decisions", str(tmp_path), losses, 1,
                          backend="gloo", staging_dir=tmp_path, timeout_s=120)  # fmt: skip
    r0, r1 = _ranks(tmp_path)
    assert r0["world"] == 2 and r1["world"] == 2
    means = [(a + b) / 2 for a, b in zip(*losses)]
    assert r0["means"] == pytest.approx(means) and r1["means"] == pytest.approx(means)
    assert r0["shared"] == r1["shared"] == result  # the same decisions on every rank
    assert r0["local"] != r1["local"]  # what unshared losses would have done
    # means 1.5, 1.5, 1.5, 1.15, 1.1, 1.125, 1.15 with patience 1: cut after evals 3 and 7
    assert result == pytest.approx([1e-3, 1e-3, 5e-4, 5e-4, 5e-4, 5e-4, 2.5e-4])
    assert not list(tmp_path.glob("ddp-*")), "the job folder is removed after success"
    # Same launch: gradients averaged, weights broadcast (see ddp_targets.grads_and_weights).
    assert r0["weights"] == r1["weights"]  # rank 0's weights everywhere
    assert r0["a_grad"] == r1["a_grad"] == [1.5] * 6  # (1 + 2) / 2
    assert r0["b_grad"] == r1["b_grad"] == [2.0] * 2  # (4 + 0) / 2: a missing gradient counts as zero
    assert r0["c_grad_is_none"] and r1["c_grad_is_none"]  # no gradient anywhere: AdamW still skips it


def test_first_failure_stops_the_other_ranks_and_keeps_its_error(tmp_path: Path) -> None:
    start = time.monotonic()
    with pytest.raises(DataError, match="fix the CSV"):
        launch_train(2, "tests.training.ddp_targets:fail_on_rank", str(tmp_path), 1, backend="gloo",
                     staging_dir=tmp_path, timeout_s=120)  # fmt: skip
    assert time.monotonic() - start < 60  # rank 0 was stopped, not left waiting in its barrier
    job = next(tmp_path.glob("ddp-*"))
    assert (job / "rank1.log").is_file()  # kept for the user on failure


def test_batch_plan_keeps_the_planned_effective_batch() -> None:
    one = plan_batch(3, 84, 1)
    two = plan_batch(3, 84, 2)
    assert (one.per_rank_grad_accum, one.effective_batch) == (84, 252)
    assert (two.per_rank_grad_accum, two.effective_batch, two.planned_effective_batch) == (42, 252, 252)
    odd = plan_batch(3, 84, 5)  # 84 does not divide by 5: rounds up, and says so
    assert (odd.per_rank_grad_accum, odd.effective_batch) == (17, 255)
    assert "planned 252" in distributed.describe_plan(odd)
    assert "planned" not in distributed.describe_plan(two)
    with pytest.raises(ConfigError):
        plan_batch(3, 0, 2)
    # What the 2-process test run does: 10 rows, micro-batch 2, grad_accum 2 -> 3 steps per epoch either way.
    assert plan_batch(2, 2, 2).optimizer_steps_per_epoch(10) == plan_batch(2, 2, 1).optimizer_steps_per_epoch(10) == 3
    assert plan_batch(3, 84, 2).optimizer_steps_per_epoch(10_001) == 40  # 5001 rows/rank, 1667 batches, 42 per step


def test_single_process_helpers_are_identity() -> None:
    assert not distributed.is_distributed() and distributed.world_size() == 1 and distributed.is_rank_zero()
    assert distributed.all_reduce_mean(0.25) == 0.25 and distributed.all_reduce_mean(None) is None
    assert distributed.any_rank(True) and not distributed.any_rank(False)
    assert distributed.trainer_callbacks(1) == {}
    with pytest.raises(ConfigError, match="--gpus"):
        check_gpus(0, "gloo")
