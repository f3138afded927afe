"""Data-parallel building blocks in 2 torchrun workers (gloo, CPU): shared LR decisions, gradient
averaging, weight broadcast, the smallest micro-batch, JSON broadcast; the single-process fallbacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from utils.errors import ConfigError
from utils.training import batch_size, distributed


def test_shared_lr_decisions_averaged_gradients_broadcast_weights(tmp_path: Path) -> None:
    # Rank 0 improves then stalls; rank 1 keeps worsening: alone they would cut the LR at different evaluations.
    losses = [[1.0, 0.9, 0.8, 0.8, 0.8, 0.8, 0.8], [2.0, 2.1, 2.2, 1.5, 1.4, 1.45, 1.5]]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            str(REPO_ROOT / "tests" / "training" / "ddp_targets.py"),
            str(tmp_path),
            json.dumps(losses),
            "1",
        ],
        cwd=REPO_ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    assert r0["world"] == 2 and r1["world"] == 2
    means = [(a + b) / 2 for a, b in zip(*losses)]
    assert r0["means"] == pytest.approx(means) and r1["means"] == pytest.approx(means)
    assert r0["shared"] == r1["shared"]  # the same decisions on every rank
    assert r0["local"] != r1["local"]  # what unshared losses would have done
    # means 1.5, 1.5, 1.5, 1.15, 1.1, 1.125, 1.15 with patience 1: cut after evals 3 and 7
    assert r0["shared"] == pytest.approx([1e-3, 1e-3, 5e-4, 5e-4, 5e-4, 5e-4, 2.5e-4])
    # Same launch: gradients averaged, weights broadcast (see ddp_targets.grads_and_weights).
    assert r0["weights"] == r1["weights"]  # rank 0's weights everywhere
    assert r0["a_grad"] == r1["a_grad"] == [1.5] * 6  # (1 + 2) / 2
    assert r0["b_grad"] == r1["b_grad"] == [2.0] * 2  # (4 + 0) / 2: a missing gradient counts as zero
    assert r0["c_grad_is_none"] and r1["c_grad_is_none"]  # no gradient anywhere: AdamW still skips it
    assert r0["min"] == r1["min"] == 4  # the micro-batch every rank holds
    assert r0["from_rank0"] == r1["from_rank0"] == {"rank": 0, "text": "ä\u00e9"}


def test_single_process_helpers_are_identity() -> None:
    from utils.training import torchrun

    assert not distributed.is_distributed() and distributed.world_size() == 1 and distributed.is_rank_zero()
    assert distributed.all_reduce_mean(0.25) == 0.25 and distributed.all_reduce_mean(None) is None
    assert distributed.any_rank(True) and not distributed.any_rank(False)
    assert batch_size.smallest_over_ranks(5, "cpu") == 5 and distributed.broadcast_json({"a": [1]}) == {"a": [1]}
    assert distributed.trainer_callbacks(1) == {}
    with pytest.raises(ConfigError, match="--gpus"):
        torchrun.check_gpus(0)


def test_worker_env_reads_torchruns_variables() -> None:
    from utils.training.torchrun import WorkerEnv, worker_env

    assert worker_env({}) is None
    env = {"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2"}
    assert worker_env(env) == WorkerEnv(rank=3, local_rank=1, world_size=4, local_world_size=2)
    with pytest.raises(ConfigError, match="whole numbers"):
        worker_env({**env, "RANK": "x"})


def test_evaluation_share_keeps_each_sums_own_count() -> None:
    """A gradient norm is summed on optimizer steps only: its mean divides by those, not by every micro-batch."""
    from utils.training.stage import Stage
    from utils.training.step_values import StepAccounting

    class Base:
        def share_evaluation_inputs(self) -> None:
            pass

    class Shared(distributed.DataParallelMixin, Base):
        keep_avg_eval = None
        stage = Stage(("loss",))
        steps = StepAccounting()

    trainer = Shared()
    trainer.steps.replace_train_sums({"loss": 6.0, "grad_norm": 3.0}, 4, {"loss": 4, "grad_norm": 2})
    trainer.share_evaluation_inputs()  # one process: the totals of one rank
    assert trainer.steps.take_train_means() == ({"loss": 1.5, "grad_norm": 1.5}, 4)
