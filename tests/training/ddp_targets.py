"""Checks the DDP tests run inside torchrun workers (tests/training/test_ddp_collectives.py).

    python -m torch.distributed.run --standalone --nproc-per-node 2 \
        tests/training/ddp_targets.py OUT_DIR LOSSES_JSON PATIENCE

Each rank joins the process group as utils/gpt_train.py does (utils.training.torchrun) and writes
what it saw to ``OUT_DIR/rank{r}.json`` so the test can compare ranks.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # run as a script by torchrun: make the repository root importable
    sys.path[0] = str(Path(__file__).resolve().parents[2])

from utils.training import batch_size, distributed


def _write(out_dir: str, payload: dict[str, Any]) -> None:
    Path(out_dir, f"rank{distributed.rank()}.json").write_text(json.dumps(payload), encoding="utf-8")


def lr_decisions(out_dir: str, losses_by_rank: list[list[float]], patience: int) -> list[float]:
    """Two LR bridges per rank over rank-dependent eval losses: one on the shared mean, one local.

    Then the gradient and weight checks of :func:`grads_and_weights` (one launch for both).
    """
    import torch

    from utils.training.lr_schedule import LRBridge, ScheduleSpec

    def bridge() -> LRBridge:
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        return LRBridge(opt, ScheduleSpec("ReduceLROnPlateau", base_lr=1e-3, min_lr=1e-6, patience=patience))

    shared, local = bridge(), bridge()
    shared_lrs, local_lrs, means = [], [], []
    for loss in losses_by_rank[distributed.rank()]:
        mean = distributed.all_reduce_mean(loss)
        means.append(mean)
        shared_lrs.append(shared.on_evaluation(mean)["lr"])
        local_lrs.append(local.on_evaluation(loss)["lr"])
    payload = {"shared": shared_lrs, "local": local_lrs, "means": means, "world": distributed.world_size()}
    payload.update(grads_and_weights())
    payload["min"] = batch_size.smallest_over_ranks(7 - 3 * distributed.rank(), "cpu")  # 7 on rank 0, 4 on rank 1
    payload["from_rank0"] = distributed.broadcast_json({"rank": distributed.rank(), "text": "ä\u00e9"})
    _write(out_dir, payload)
    return shared_lrs


def grads_and_weights() -> dict[str, Any]:
    """sync_gradients with rank-dependent gradients (one None on rank 1); broadcast_module."""
    import torch

    r = distributed.rank()
    torch.manual_seed(100 + r)  # different weights per rank before the broadcast
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1), torch.nn.Linear(1, 1))
    distributed.broadcast_module(model)
    a, b, c = model
    a.weight.grad = torch.full_like(a.weight, float(r + 1))  # 1 on rank 0, 2 on rank 1
    b.weight.grad = None if r == 1 else torch.full_like(b.weight, 4.0)
    c.weight.grad = None  # None everywhere: stays None
    distributed.sync_gradients(model.parameters())
    return {
        "weights": [p.detach().flatten().tolist() for p in model.parameters()],
        "a_grad": a.weight.grad.flatten().tolist(),
        "b_grad": b.weight.grad.flatten().tolist(),
        "c_grad_is_none": c.weight.grad is None,
    }


def main(argv: list[str]) -> int:
    from utils.training import torchrun

    out_dir, losses, patience = argv[0], json.loads(argv[1]), int(argv[2])
    env = torchrun.worker_env()
    assert env is not None, "run me under torchrun"
    return torchrun.run_worker(env, lambda: (lr_decisions(out_dir, losses, patience), 0)[1])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
