"""LR range test: train the real model on the real data with an exponentially growing LR.

The LR goes from ``start_lr`` to ``end_lr`` over ``num_steps`` optimizer steps (the bridge's
``exponential`` schedule, so it runs in the real Coqui loop with the real batch and accumulation);
the run stops early once the smoothed loss exceeds ``divergence_factor`` times its minimum or turns
non-finite. The suggestion is the LR where the smoothed loss falls fastest (steepest descent of
loss vs log LR, before the minimum), the usual reading of Smith's range test; ``lr_at_min / 10`` is
reported too. Nothing is checkpointed; the folder keeps lr_find.png and lr_find.json.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


@dataclass
class LRFindResult:
    """Losses per optimizer step of the range test and the LRs they were taken at."""

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggestion: float | None
    lr_at_min_over_10: float | None
    stopped_early: bool
    run_dir: Path | None = None
    notes: list[str] = field(default_factory=list)


def smooth(losses: list[float], beta: float = 0.9) -> list[float]:
    """Bias-corrected exponential moving average (as fastai's range test)."""
    out, avg = [], 0.0
    for i, loss in enumerate(losses, 1):
        avg = beta * avg + (1 - beta) * loss
        out.append(avg / (1 - beta**i))
    return out


def suggest_lr(lrs: list[float], smoothed: list[float], skip_start: int = 3) -> tuple[float | None, float | None]:
    """(LR at the steepest descent of smoothed loss vs log LR before its minimum, LR at the minimum / 10)."""
    if len(lrs) < skip_start + 3:
        return None, None
    i_min = min(range(len(smoothed)), key=smoothed.__getitem__)
    best, slope_best = None, 0.0
    for i in range(skip_start, max(skip_start + 1, i_min)):
        if i + 1 >= len(lrs):
            break
        slope = (smoothed[i + 1] - smoothed[i - 1]) / (math.log(lrs[i + 1]) - math.log(lrs[i - 1]))
        if slope < slope_best:
            best, slope_best = lrs[i], slope
    return best, lrs[i_min] / 10


def lr_range_test(
    config: Any,
    train_samples: list[dict[str, Any]],
    *,
    start_lr: float = 1e-8,
    end_lr: float = 1e-2,
    num_steps: int = 200,
    divergence_factor: float = 4.0,
    progress: bool = True,
) -> LRFindResult:
    """Run the range test with ``config`` (from :meth:`utils.finetune.FineTune.build_trainer`).

    Args:
        config: the training config; its batch size and ``toolkit["grad_accum"]`` are used as is.
        train_samples: training rows (dicts as for :func:`utils.finetune.training.train`).
        start_lr / end_lr: the LR range, covered exponentially over ``num_steps`` optimizer steps.
        divergence_factor: stop when the smoothed loss exceeds this times its minimum.
    """
    from trainer import TrainerArgs

    from utils.training.gpt.model import ToolkitGPTTrainer
    from utils.training.trainer import ToolkitTrainer

    accum = int(config.toolkit.get("grad_accum", 1))
    _range_config(config, len(train_samples), accum, start_lr=start_lr, end_lr=end_lr, num_steps=num_steps)
    watch = _RangeWatch(num_steps, divergence_factor)
    from utils.events import ProgressBar

    model = ToolkitGPTTrainer(config)
    bar = ProgressBar.as_hook() if progress else None
    trainer = ToolkitTrainer(
        TrainerArgs(grad_accum_steps=accum),
        config,
        output_path=config.output_path,
        model=model,
        train_samples=train_samples,
        eval_samples=train_samples[:1],
        on_step=[watch],
        health=None,
        progress=progress,
        on_progress=[bar] if bar else None,
        save_final_checkpoint=False,
    )
    model.run_dir = Path(trainer.output_path)
    try:
        trainer.fit()
    finally:
        if bar is not None:
            bar.close()
    result = _result(watch.lrs, watch.losses, watch.stopped_early, Path(trainer.output_path))
    return result


class _RangeWatch:
    """Trainer on_step hook: records (LR, loss) per optimizer step; stops at divergence or the end."""

    def __init__(self, num_steps: int, divergence_factor: float) -> None:
        self.num_steps, self.divergence_factor = num_steps, divergence_factor
        self.lrs: list[float] = []
        self.losses: list[float] = []
        self.stopped_early = False

    def __call__(self, trainer: Any, info: dict[str, Any]) -> None:
        from utils.training.health import StopTraining

        if not info["stepped"]:
            return
        lr_used = trainer.lr_bridge.spec.lr_at(info["optimizer_step"] - 1)
        loss = info["loss"]
        if loss is None or not math.isfinite(loss):
            self.stopped_early = True
            raise StopTraining(f"loss {loss} at LR {lr_used:.3g}")
        self.lrs.append(lr_used)
        self.losses.append(loss)
        sm = smooth(self.losses)
        if len(sm) > 5 and sm[-1] > self.divergence_factor * min(sm):
            self.stopped_early = True
            raise StopTraining(
                f"smoothed loss {sm[-1]:.3f} > {self.divergence_factor:g} x its minimum at LR {lr_used:.3g}"
            )
        if info["optimizer_step"] >= self.num_steps:
            raise StopTraining("range covered")


def _range_config(config: Any, rows: int, accum: int, *, start_lr: float, end_lr: float, num_steps: int) -> None:
    """The training config turned into a range test: exponential LR, no evaluation, no saves."""
    from utils.training.lr_schedule import optimizer_steps_per_epoch

    per_epoch = max(1, optimizer_steps_per_epoch(rows, int(config.batch_size), accum))
    config.epochs = math.ceil(num_steps / per_epoch)
    config.lr = float(start_lr)
    config.lr_scheduler = "exponential"
    config.lr_scheduler_params = {
        "end_lr": float(end_lr),
        "total_steps": int(num_steps),
        "warmup_steps": 0,
        "min_lr": 0.0,
    }
    config.run_eval = False
    config.save_step = 10**9
    config.run_name = f"lr_find_{config.run_name}"


def _result(lrs: list[float], losses: list[float], stopped_early: bool, run_dir: Path) -> LRFindResult:
    """The suggestion, the notes, lr_find.png and lr_find.json in the run folder."""
    from utils.plots import plot_lr_find

    smoothed = smooth(losses)
    suggestion, at_min = suggest_lr(lrs, smoothed)
    result = LRFindResult(lrs, losses, smoothed, suggestion, at_min, stopped_early, run_dir)
    if not stopped_early:
        result.notes.append("the loss never diverged: the range may end too low; raise --end-lr")
    if suggestion is None:
        result.notes.append("too few steps for a suggestion; raise --steps")
    plot_lr_find(lrs, losses, smoothed, suggestion, result.run_dir / "lr_find.png")
    out = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(result).items()}
    (result.run_dir / "lr_find.json").write_text(json.dumps(out, indent=2), encoding="utf-8")
    return result
