"""utils/gpt_train.py as torchrun runs it, recording what each rank did (for test_ddp_training.py).

    python -m torch.distributed.run --standalone --nproc-per-node 2 \
        tests/training/ddp_entry.py OUT_DIR [gpt_train options]

Runs ``utils.gpt_train.main`` unchanged and writes ``OUT_DIR/rank{r}.json``: the training batches
this rank drew in each sampler pass (clip file names), its GPT parameters' SHA-256 before and after
training, the largest difference between its parameters and rank 0's after training, its records.
With ``XTTS_TEST_FAIL_RANK=r`` rank ``r`` raises a DataError in its second training step (the
other ranks are then inside that step's collectives).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

sys.path[0] = str(Path(__file__).resolve().parents[2])  # the repository root, as gpt_train.py does


def _param_digest(module: Any) -> str:
    h = hashlib.sha256()
    for name, p in module.state_dict().items():
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _max_diff_to_rank_zero(module: Any) -> float:
    import torch.distributed as dist

    worst = 0.0
    for p in module.parameters():
        theirs = p.detach().clone()
        dist.broadcast(theirs, src=0)
        worst = max(worst, float((theirs.double() - p.detach().double()).abs().max()))
    return worst


def main() -> int:
    out_dir, argv = Path(sys.argv[1]), sys.argv[2:]
    from utils import cli
    from utils.errors import DataError
    from utils.gpt_train import main as gpt_train_main
    from utils.training import distributed
    from utils.training.gpt.clip_cache import LengthBucketBatchSampler
    from utils.training.trainer import ToolkitTrainer

    passes: list[dict[str, Any]] = []
    report: dict[str, Any] = {}
    original_iter, original_fit, original_step = (
        LengthBucketBatchSampler.__iter__,
        ToolkitTrainer.fit,
        ToolkitTrainer.train_step,
    )
    fail_rank = os.environ.get("XTTS_TEST_FAIL_RANK")

    def spy_iter(self: LengthBucketBatchSampler) -> Any:
        if self.shuffle:  # the training sampler
            passes.append({"epoch": self.epoch, "batches": self._batches()})
        return original_iter(self)

    def spy_fit(self: ToolkitTrainer) -> Any:
        gpt = self.model.xtts.gpt
        report["before"] = _param_digest(gpt)
        result = original_fit(self)
        # after a successful fit only (a failed one leaves its peers inside a collective)
        names = [
            Path(it.source).name for it in self.model.clip_dataset(self.config, self.train_samples, is_eval=False).items
        ]
        report.update(
            after=_param_digest(gpt),
            max_diff_to_rank0=_max_diff_to_rank_zero(gpt),
            records=self.evaluation_records,
            optimizer_steps=self.optimizer_steps,
            grad_accum_steps=self.grad_accum_steps,
            output_path=str(self.output_path),
            rank=distributed.rank(),
            world=distributed.world_size(),
            local_rank=int(os.environ.get("LOCAL_RANK", 0)),
            passes=[{"epoch": p["epoch"], "batches": [[names[i] for i in b] for b in p["batches"]]} for p in passes],
        )
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / f"rank{distributed.rank()}.json").write_text(json.dumps(report), encoding="utf-8")
        return result

    def failing_step(self: ToolkitTrainer, batch: Any, batch_n_steps: int, step: int, *args: Any) -> Any:
        if step + self.position.step_offset >= 1 and str(distributed.rank()) == fail_rank:
            raise DataError("rank-specific bad row; fix the CSV")
        return original_step(self, batch, batch_n_steps, step, *args)

    LengthBucketBatchSampler.__iter__ = spy_iter  # type: ignore[method-assign]
    ToolkitTrainer.fit = spy_fit  # type: ignore[method-assign]
    if fail_rank is not None:
        ToolkitTrainer.train_step = failing_step  # type: ignore[method-assign]
    return cli.run(gpt_train_main, argv)


if __name__ == "__main__":
    sys.exit(main())
