"""Functions the DDP tests run inside worker processes (started by distributed.launch_train).

Each writes what its rank saw to ``out_dir/rank{r}.json`` so the test can compare ranks.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from utils.errors import DataError
from utils.training import distributed


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
    _write(out_dir, payload)
    return shared_lrs


def fail_on_rank(out_dir: str, failing_rank: int) -> None:
    """The failing rank raises a DataError; the others wait in a barrier that never completes."""
    if distributed.rank() == failing_rank:
        raise DataError("rank-specific bad row; fix the CSV")
    _write(out_dir, {"waiting": True})
    distributed.barrier()


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


def tiny_run(
    out_dir: str, tiny_base: str, demo_dir: str, output_path: str, values: dict[str, Any], split_eval: bool,
    continue_path: str | None = None,
) -> Any:
    """A real fine-tune of the tiny base on the demo data, as utils.finetune.training.train runs it.

    Records the training rows this rank loaded (per epoch) and a checksum of its GPT weights.
    With ``split_eval`` each rank evaluates a different half of the eval rows, so the rank-local
    eval losses differ and only the shared mean can keep the LR decisions equal.
    """
    from tests.conftest import read_demo_samples
    from utils.gpt_train import build_config
    from utils.hparams import resolve
    from utils.training.dataset import ToolkitXTTSDataset

    seen: list[str] = []
    original = ToolkitXTTSDataset.__getitem__

    def spy(self: Any, index: int) -> Any:
        if not self.is_eval:
            seen.append(Path(self.samples[index]["audio_file"]).name)
        return original(self, index)

    ToolkitXTTSDataset.__getitem__ = spy  # this worker process only
    hp = resolve(dataset_hours=0.01, cli=values)
    config = build_config(hp, tiny_base, output_path=output_path, language="en")
    train_rows = read_demo_samples(Path(demo_dir) / "metadata_train.csv")
    eval_rows = read_demo_samples(Path(demo_dir) / "metadata_eval.csv")
    if split_eval:
        eval_rows = eval_rows[distributed.rank() :: distributed.world_size()]
    result, trainer = run_train(config, train_rows, eval_rows, continue_path=continue_path)
    import torch

    gpt = trainer.model.xtts.gpt
    _write(out_dir, {
        "seen": seen,
        "records": result["records"],
        "weight_sum": float(sum(p.detach().double().sum() for p in gpt.parameters())),
        "weight_abs": float(sum(p.detach().double().abs().sum() for p in gpt.parameters())),
        "run_dir": result["run_dir"],
        "grad_accum_steps": trainer.grad_accum_steps,
        "output_path": str(trainer.output_path),
        "torch_threads": torch.get_num_threads(),
    })  # fmt: skip
    return result


def run_train(config: Any, train_rows: list, eval_rows: list, continue_path: str | None = None) -> tuple[dict, Any]:
    """What utils.gpt_train.train does, through distributed.build_trainer."""
    from trainer import TrainerArgs

    from utils.training.model import ToolkitGPTTrainer
    from utils.training.trainer import ToolkitTrainer

    args = TrainerArgs(grad_accum_steps=int(config.toolkit.get("grad_accum", 1)))
    if continue_path:
        args.continue_path = continue_path
    model = ToolkitGPTTrainer(config)
    trainer = distributed.build_trainer(
        ToolkitTrainer, args, config, output_path=config.output_path, model=model, train_samples=train_rows,
        eval_samples=eval_rows, eval_every_steps=config.toolkit.get("eval_every_steps"),
    )  # fmt: skip
    model.run_dir = Path(trainer.output_path)
    trainer.fit()
    return {"run_dir": str(trainer.output_path), "records": trainer.evaluation_records,
            "total_steps": trainer.total_steps_done, "optimizer_steps": trainer.optimizer_steps}, trainer  # fmt: skip


def job_folder_modes() -> list[int]:
    """Permission bits of this worker's job folder and of its pickled job file."""
    import os
    import stat

    from utils.training.launch import ENV_STAGING

    job = Path(os.environ[ENV_STAGING])
    return [stat.S_IMODE(job.stat().st_mode), stat.S_IMODE((job / "job.pkl").stat().st_mode)]
