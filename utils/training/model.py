"""The toolkit's adaptation of Coqui's GPTTrainer (subclass, not a fork).

What changes against ``TTS.tts.layers.xtts.trainer.gpt_trainer.GPTTrainer``:
- ``get_scheduler`` returns :class:`~utils.training.lr_schedule.LRBridge`, because Trainer 0.4
  never steps a single-optimizer scheduler at epoch end and steps it per optimizer step without
  the metric ReduceLROnPlateau needs.
- ``get_data_loader`` builds :class:`~utils.training.dataset.ToolkitXTTSDataset` (no silent drops,
  one pass per epoch, one decode per clip) and shuffles training rows with a seeded generator.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from TTS.tts.layers.xtts.trainer.gpt_trainer import GPTTrainer
from trainer.torch import DistributedSampler
from trainer.utils.distributed import is_dist_avail_and_initialized

from utils.training.dataset import ToolkitXTTSDataset
from utils.training.lr_schedule import LRBridge, ScheduleSpec

logger = logging.getLogger(__name__)


class ToolkitGPTTrainer(GPTTrainer):
    """GPTTrainer with the LR bridge and the toolkit dataset."""

    run_dir: Path | None = None  # set by utils.gpt_train before fit(); run-time exclusions go there

    def get_scheduler(self, optimizer: list[torch.optim.Optimizer] | torch.optim.Optimizer) -> LRBridge:
        opt = optimizer[0] if isinstance(optimizer, (list, tuple)) else optimizer
        return LRBridge(opt, ScheduleSpec.from_config(self.config))

    def get_data_loader(
        self,
        config: Any,
        *,
        is_eval: bool = False,
        samples: list[Any] | None = None,
        verbose: bool = True,
    ) -> DataLoader:
        exclusions = Path(self.run_dir) / "runtime_exclusions.jsonl" if self.run_dir else None
        dataset = ToolkitXTTSDataset(
            self.config, samples or [], self.xtts.tokenizer, config.audio.sample_rate, is_eval, exclusions
        )
        batch_size = config.eval_batch_size if is_eval else config.batch_size
        workers = config.num_eval_loader_workers if is_eval else config.num_loader_workers
        kwargs: dict[str, Any] = {
            "batch_size": batch_size,
            "collate_fn": dataset.collate_fn,
            "num_workers": workers,
            "pin_memory": torch.cuda.is_available(),
            "persistent_workers": workers > 0,
        }
        if is_eval:
            return DataLoader(dataset, shuffle=False, drop_last=False, **kwargs)
        if is_dist_avail_and_initialized():
            return DataLoader(dataset, sampler=DistributedSampler(dataset, shuffle=True), **kwargs)
        generator = torch.Generator().manual_seed(int(config.training_seed))
        return DataLoader(dataset, shuffle=True, drop_last=False, generator=generator, **kwargs)

