"""A tiny ToolkitTrainer run (no XTTS) for the dashboard, tracker and console tests.

8 training rows in micro-batches of 2 with 2 accumulation steps (4 trainer steps, 2 optimizer
steps per epoch), an evaluation after every optimizer step on 5 eval rows (batches of 2, 2 and 1),
an LR warmup over 4 optimizer steps, and an update-ratio check that reports ``lr_too_large`` at
the first optimizer step (one health event).
"""

# no "from __future__ import annotations": coqpit reads the config's field types at run time
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader
from trainer import TrainerArgs, TrainerConfig
from trainer.model import TrainerModel

from utils.training.health import HealthConfig, HealthMonitor
from utils.training.lr_schedule import LRBridge, ScheduleSpec
from utils.training.trainer import ToolkitTrainer

BASE_LR, WARMUP, ACCUM = 1e-2, 4, 2


@dataclass
class TinyConfig(TrainerConfig):
    run_name: str = "tiny"
    project_name: str = "tiny_project"
    epochs: int = 2
    batch_size: int = 2
    eval_batch_size: int = 2
    lr: float = BASE_LR
    print_step: int = 1
    save_step: int = 10_000
    dashboard_logger: str = "tensorboard"
    grad_clip: float = 5.0


class TinyRegression(TrainerModel):
    """One optimizer, losses named like a DVAE's."""

    loss_keys = ("loss", "recon_loss", "commitment_loss")

    def __init__(self, config: TinyConfig) -> None:
        super().__init__()
        self.config = config
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.net(x)

    def train_step(self, batch: dict[str, Any], criterion: Any) -> tuple[dict[str, Any], dict[str, Any]]:  # type: ignore[override]
        out = self(batch["x"])
        recon = F.mse_loss(out, batch["y"])
        commitment = 0.1 * out.pow(2).mean()
        return {"model_outputs": out}, {"loss": recon + commitment, "recon_loss": recon, "commitment_loss": commitment}

    def eval_step(self, batch: dict[str, Any], criterion: Any) -> tuple[dict[str, Any], dict[str, Any]]:  # type: ignore[override]
        return self.train_step(batch, criterion)

    def get_data_loader(self, config: Any, *, is_eval: bool = False, samples: Any = None, verbose: bool = True) -> Any:
        return DataLoader(samples, batch_size=config.eval_batch_size if is_eval else config.batch_size, shuffle=False)

    def get_criterion(self) -> nn.Module:
        return nn.Identity()

    def get_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.config.lr)

    def get_scheduler(self, optimizer: Any) -> LRBridge:
        return LRBridge(optimizer[0], ScheduleSpec("ReduceLROnPlateau", base_lr=self.config.lr, warmup_steps=WARMUP))


def samples(n: int, seed: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    xs = torch.randn(n, 4, generator=g)
    ys = torch.tanh(xs @ torch.randn(4, 4, generator=g))
    return [{"x": x, "y": y} for x, y in zip(xs, ys)]


def tiny_trainer(out: Path, *, logger: str = "tensorboard", **options: Any) -> ToolkitTrainer:
    """The tiny run's trainer, writing under ``out`` with dashboard ``logger``."""
    config = TinyConfig(output_path=str(out), dashboard_logger=logger)
    health = HealthMonitor(HealthConfig(update_ratio_every=1, update_ratio_high=1e-12))
    return ToolkitTrainer(
        TrainerArgs(grad_accum_steps=ACCUM),
        config,
        output_path=str(out),
        model=TinyRegression(config),
        train_samples=samples(8, seed=1),
        eval_samples=samples(5, seed=2),
        eval_every_steps=1,
        health=health,
        **options,
    )


def lr_of_step(step: int) -> float:
    """The LR trainer step ``step`` (1-based) updated with: the warmup at the optimizer steps done before it."""
    done = (step - 1) // ACCUM
    return BASE_LR * min(1.0, (done + 1) / WARMUP)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
