"""The LR scheduler bridge: schedules that really move the LR inside Coqui's Trainer loop.

Coqui Trainer 0.4 gets this wrong in two ways for a single-optimizer model such as GPTTrainer:
with ``scheduler_after_epoch=True`` it steps a scheduler at epoch end only if
``idx in self._stepped_optimizers``, a set that holds ``None`` (not 0) for one optimizer, so it
never steps; with ``scheduler_after_epoch=False`` it calls ``scheduler.step()`` after every
optimizer step with no metric, which ``ReduceLROnPlateau.step(metrics)`` rejects.

:class:`LRBridge` is what the toolkit hands the Trainer instead (``scheduler_after_epoch=False``):
its ``step()`` counts optimizer steps (the Trainer calls it after each real optimizer step, and
not after an AMP-skipped one) and applies step-based parts (warmup); ``on_evaluation(eval_loss)``,
called by :class:`utils.training.trainer.ToolkitTrainer` after every evaluation, applies the
plateau logic. Its ``state_dict`` travels in Trainer checkpoints, so ``--continue`` resumes it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

logger = logging.getLogger(__name__)

SUPPORTED_SCHEDULERS = ("ReduceLROnPlateau",)


@dataclass(frozen=True)
class ScheduleSpec:
    """What the LR should do. Step units are optimizer steps; patience is in evaluations."""

    name: str
    base_lr: float
    min_lr: float = 1e-7
    warmup_steps: int = 0
    factor: float = 0.5
    patience: int = 5
    threshold: float = 1e-4  # relative improvement that counts, as torch's ReduceLROnPlateau (mode "rel")

    def __post_init__(self) -> None:
        if self.name not in SUPPORTED_SCHEDULERS:
            raise ValueError(f"unsupported lr_scheduler {self.name!r}; supported: {', '.join(SUPPORTED_SCHEDULERS)}")
        if not 0 < self.factor < 1:
            raise ValueError(f"factor must be in (0, 1), got {self.factor}")

    @classmethod
    def from_config(cls, config: Any) -> "ScheduleSpec":
        """Build from a GPTTrainerConfig's ``lr``, ``lr_scheduler`` and ``lr_scheduler_params``."""
        params = dict(config.lr_scheduler_params or {})
        params.pop("mode", None)  # always "min": we minimise eval loss
        known = {k: params[k] for k in ("min_lr", "warmup_steps", "factor", "patience", "threshold") if k in params}
        return cls(name=config.lr_scheduler, base_lr=config.lr, **known)


class LRBridge:
    """A duck-typed LR scheduler for Coqui's Trainer (``step``, ``state_dict``, ``load_state_dict``).

    The LR in effect is ``base_lr * plateau_scale * warmup(step)``, where ``plateau_scale`` halves
    (by ``factor``) each time the eval loss fails to improve on its best by more than ``threshold``
    (relative) for more than ``patience`` evaluations in a row, never taking the LR under
    ``min_lr``. This is torch's ReduceLROnPlateau rule (mode "min", cooldown 0).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, spec: ScheduleSpec) -> None:
        self.optimizer = optimizer
        self.spec = spec
        self.optimizer_steps = 0
        self.evaluations = 0
        self.plateau_scale = 1.0
        self.best = math.inf
        self.num_bad_evals = 0
        self.reductions = 0
        self._apply()

    # --- the LR -------------------------------------------------------------------------------

    def warmup_factor(self, steps_done: int) -> float:
        """Linear warmup from base_lr / warmup_steps up to base_lr over ``warmup_steps`` optimizer steps."""
        if self.spec.warmup_steps <= 0:
            return 1.0
        return min(1.0, (steps_done + 1) / self.spec.warmup_steps)

    def current_lr(self) -> float:
        return self.spec.base_lr * self.plateau_scale * self.warmup_factor(self.optimizer_steps)

    def _apply(self) -> None:
        lr = self.current_lr()
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def get_last_lr(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    # --- what the Trainer and the toolkit call ------------------------------------------------

    def step(self, *_args: Any, **_kwargs: Any) -> None:
        """Called by Coqui's Trainer after each optimizer step: count it and apply warmup."""
        self.optimizer_steps += 1
        self._apply()

    def on_evaluation(self, eval_loss: float | None) -> dict[str, Any]:
        """Step the plateau rule with this evaluation's loss; return what happened.

        Returns:
            A dict with ``lr_before``, ``lr``, ``improved``, ``num_bad_evals``, ``reduced``.
        """
        self.evaluations += 1
        lr_before = self.current_lr()
        loss = float(eval_loss) if eval_loss is not None else math.nan
        improved = math.isfinite(loss) and loss < self.best * (1.0 - self.spec.threshold)
        if improved:
            self.best = loss
            self.num_bad_evals = 0
        else:
            self.num_bad_evals += 1
        reduced = False
        if self.num_bad_evals > self.spec.patience:
            floor = self.spec.min_lr / self.spec.base_lr
            new_scale = max(self.plateau_scale * self.spec.factor, floor)
            if self.plateau_scale - new_scale > 1e-12:
                self.plateau_scale = new_scale
                self.reductions += 1
                reduced = True
            self.num_bad_evals = 0
        self._apply()
        lr = self.current_lr()
        if reduced:
            logger.info(
                "eval loss has not improved on %.5f for %d evaluations: LR %.3g -> %.3g", self.best,
                self.spec.patience + 1, lr_before, lr,
            )  # fmt: skip
        elif not math.isfinite(loss):
            logger.warning("eval loss is %s; counted as an evaluation without improvement", loss)
        return {
            "lr_before": lr_before,
            "lr": lr,
            "improved": improved,
            "num_bad_evals": self.num_bad_evals,
            "best_eval_loss": self.best if math.isfinite(self.best) else None,
            "reduced": reduced,
        }

    # --- checkpoints --------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "spec": asdict(self.spec),
            "optimizer_steps": self.optimizer_steps,
            "evaluations": self.evaluations,
            "plateau_scale": self.plateau_scale,
            "best": self.best,
            "num_bad_evals": self.num_bad_evals,
            "reductions": self.reductions,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore counters and plateau state. The spec stays the one this run was built with."""
        for key in ("optimizer_steps", "evaluations", "plateau_scale", "best", "num_bad_evals", "reductions"):
            setattr(self, key, state[key])
        self._apply()
        logger.info(
            "LR schedule restored: %d optimizer steps, %d evaluations, LR %.3g", self.optimizer_steps,
            self.evaluations, self.current_lr(),
        )  # fmt: skip
