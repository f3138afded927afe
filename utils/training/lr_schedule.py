"""The LR scheduler bridge: schedules that really move the LR inside Coqui's Trainer loop.

Coqui Trainer 0.4 gets this wrong in two ways for a single-optimizer model such as GPTTrainer:
with ``scheduler_after_epoch=True`` it steps a scheduler at epoch end only if
``idx in self._stepped_optimizers``, a set that holds ``None`` (not 0) for one optimizer, so it
never steps; with ``scheduler_after_epoch=False`` it calls ``scheduler.step()`` after every
optimizer step with no metric, which ``ReduceLROnPlateau.step(metrics)`` rejects.

:class:`LRBridge` is what the toolkit hands the Trainer instead (``scheduler_after_epoch=False``):
its ``step()`` counts optimizer steps (the Trainer calls it after each real optimizer step, and
not after an AMP-skipped one) and applies the step-based schedule; ``on_evaluation(eval_loss)``,
called by :class:`utils.training.trainer.ToolkitTrainer` after every evaluation, applies the
plateau logic. Its ``state_dict`` travels in Trainer checkpoints, so ``--continue`` resumes it.

Every schedule counts in optimizer steps (one step = ``batch_size x grad_accum`` samples), and
``base_lr`` is always the peak LR the optimizer really sees. The LR in effect is::

    base_lr * warmup(step) * shape(step) * plateau_scale * health_scale

- ``ReduceLROnPlateau`` (default): shape 1; ``plateau_scale`` is cut by ``factor`` after more than
  ``patience`` evaluations without a relative improvement of ``threshold``.
- ``cosine``: after warmup, from base_lr down to min_lr over ``total_steps`` (held at min_lr after).
- ``inverse_sqrt``: after warmup, ``sqrt(warmup_steps / step)``, times ``anneal_rate`` for every
  step in ``anneal_steps`` already passed (FastSpeech2's schedule, but with the peak stated: in
  FastSpeech2 the peak is ``d_model**-0.5 * warmup**-0.5`` times the configured value, which is how
  a configured 1.0 became a real 1.1e-3).
- ``MultiStepLR``: times ``gamma`` for every step in ``milestones`` already passed.
- ``exponential``: the LR range test (scripts/lr_find.py): from base_lr up to ``end_lr`` over
  ``total_steps``.

Linear warmup (``warmup_steps``) sits in front of any of them. ``health_scale`` is cut by the
health monitor after a divergence (utils/training/health.py). The LR never goes below ``min_lr``
except during warmup and the range test.

This module does not import torch: ``--dry-run``, ``--preview-schedule`` and the config checks
evaluate schedules without it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

SUPPORTED_SCHEDULERS = ("ReduceLROnPlateau", "cosine", "inverse_sqrt", "MultiStepLR", "exponential")
STEP_PARAMS = (
    "min_lr",
    "warmup_steps",
    "factor",
    "patience",
    "threshold",
    "total_steps",
    "anneal_steps",
    "anneal_rate",
    "milestones",
    "gamma",
    "end_lr",
)


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
    total_steps: int | None = None  # planned optimizer steps (cosine, exponential; checks)
    anneal_steps: tuple[int, ...] = ()  # inverse_sqrt: optimizer steps at which the LR is multiplied by anneal_rate
    anneal_rate: float = 0.3
    milestones: tuple[int, ...] = ()  # MultiStepLR: optimizer steps at which the LR is multiplied by gamma
    gamma: float = 0.1
    end_lr: float = 1e-2  # exponential (range test): the LR at total_steps

    def __post_init__(self) -> None:
        if self.name not in SUPPORTED_SCHEDULERS:
            raise ValueError(f"unsupported lr_scheduler {self.name!r}; supported: {', '.join(SUPPORTED_SCHEDULERS)}")
        if not 0 < self.factor < 1:
            raise ValueError(f"factor must be in (0, 1), got {self.factor}")
        object.__setattr__(self, "anneal_steps", tuple(int(s) for s in self.anneal_steps or ()))
        object.__setattr__(self, "milestones", tuple(int(s) for s in self.milestones or ()))

    @classmethod
    def from_config(cls, config: Any) -> ScheduleSpec:
        """Build from a GPTTrainerConfig's ``lr``, ``lr_scheduler`` and ``lr_scheduler_params``."""
        params = dict(config.lr_scheduler_params or {})
        params.pop("mode", None)  # always "min": we minimise eval loss
        known = {k: params[k] for k in STEP_PARAMS if k in params and params[k] is not None}
        return cls(name=config.lr_scheduler, base_lr=config.lr, **known)

    # --- the step-based part of the LR (pure, so tests and previews can call it) --------------

    def warmup_factor(self, steps_done: int) -> float:
        """Linear warmup from base_lr / warmup_steps up to base_lr over ``warmup_steps`` optimizer steps."""
        if self.warmup_steps <= 0:
            return 1.0
        return min(1.0, (steps_done + 1) / self.warmup_steps)

    def shape(self, steps_done: int) -> float:
        """The schedule's multiplier of base_lr after ``steps_done`` optimizer steps (warmup excluded)."""
        s = max(0, int(steps_done))
        if self.name == "cosine":
            horizon = max(1, (self.total_steps or 1) - self.warmup_steps)
            progress = min(1.0, max(0.0, (s - self.warmup_steps) / horizon))  # clamped: never NaN past the horizon
            floor = min(1.0, self.min_lr / self.base_lr)
            return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
        if self.name == "inverse_sqrt":
            decay = 1.0 if s < self.warmup_steps or self.warmup_steps <= 0 else math.sqrt(self.warmup_steps / (s + 1))
            return decay * self.anneal_rate ** sum(1 for m in self.anneal_steps if s >= m)
        if self.name == "MultiStepLR":
            return self.gamma ** sum(1 for m in self.milestones if s >= m)
        if self.name == "exponential":
            horizon = max(1, self.total_steps or 1)
            return (self.end_lr / self.base_lr) ** (min(s, horizon) / horizon)
        return 1.0

    def lr_at(self, steps_done: int, plateau_scale: float = 1.0, health_scale: float = 1.0) -> float:
        """The LR the optimizer uses for its next step after ``steps_done`` optimizer steps."""
        lr = self.base_lr * self.shape(steps_done) * plateau_scale * health_scale
        if self.name != "exponential" and steps_done >= self.warmup_steps:
            lr = max(lr, self.min_lr)
        return lr * self.warmup_factor(steps_done)

    def lrs(self, steps: Sequence[int]) -> list[float]:
        """The LR at each of ``steps`` with no plateau or health cuts (previews, checks)."""
        return [self.lr_at(s) for s in steps]


class LRBridge:
    """A duck-typed LR scheduler for Coqui's Trainer (``step``, ``state_dict``, ``load_state_dict``).

    The LR in effect is ``spec.lr_at(optimizer_steps, plateau_scale, health_scale)``. The plateau
    rule (only for ``ReduceLROnPlateau``) is torch's ReduceLROnPlateau (mode "min", cooldown 0):
    ``plateau_scale`` is multiplied by ``factor`` each time the eval loss fails to improve on its
    best by more than ``threshold`` (relative) for more than ``patience`` evaluations in a row,
    never taking the LR under ``min_lr``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, spec: ScheduleSpec) -> None:
        self.optimizer = optimizer
        self.spec = spec
        self.optimizer_steps = 0
        self.evaluations = 0
        self.plateau_scale = 1.0
        self.health_scale = 1.0
        self.best = math.inf
        self.num_bad_evals = 0
        self.reductions = 0
        self.apply()

    # --- the LR -------------------------------------------------------------------------------

    def warmup_factor(self, steps_done: int) -> float:
        return self.spec.warmup_factor(steps_done)

    def current_lr(self) -> float:
        return self.spec.lr_at(self.optimizer_steps, self.plateau_scale, self.health_scale)

    def apply(self) -> None:
        """Set the optimizer's LR to :meth:`current_lr` (e.g. after Coqui's ``reset_lr`` wrote the config LR)."""
        lr = self.current_lr()
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def get_last_lr(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def cut_lr(self, factor: float) -> tuple[float, float]:
        """Multiply the LR by ``factor`` from now on (health monitor); returns (before, after)."""
        before = self.current_lr()
        self.health_scale *= factor
        self.apply()
        return before, self.current_lr()

    # --- what the Trainer and the toolkit call ------------------------------------------------

    def step(self, *_args: Any, **_kwargs: Any) -> None:
        """Called by Coqui's Trainer after each optimizer step: count it and apply the schedule."""
        self.optimizer_steps += 1
        self.apply()

    def on_evaluation(self, eval_loss: float | None) -> dict[str, Any]:
        """Step the plateau rule with this evaluation's loss; return what happened.

        Other schedules only track the best eval loss here; their LR depends on steps alone.

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
        if self.spec.name == "ReduceLROnPlateau" and self.num_bad_evals > self.spec.patience:
            floor = self.spec.min_lr / (self.spec.base_lr * self.health_scale)
            new_scale = max(self.plateau_scale * self.spec.factor, floor)
            if self.plateau_scale - new_scale > 1e-12:
                self.plateau_scale = new_scale
                self.reductions += 1
                reduced = True
            self.num_bad_evals = 0
        self.apply()
        lr = self.current_lr()
        if reduced:
            logger.info(
                "eval loss has not improved on %.5f for %d evaluations: LR %.3g -> %.3g",
                self.best,
                self.spec.patience + 1,
                lr_before,
                lr,
            )
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

    _STATE_KEYS = ("optimizer_steps", "evaluations", "plateau_scale", "best", "num_bad_evals", "reductions")

    def state_dict(self) -> dict[str, Any]:
        spec = asdict(self.spec)
        spec["anneal_steps"], spec["milestones"] = list(spec["anneal_steps"]), list(spec["milestones"])
        state = {"spec": spec, **{k: getattr(self, k) for k in self._STATE_KEYS}}
        state["health_scale"] = self.health_scale
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore counters and plateau state. The spec stays the one this run was built with."""
        for key in self._STATE_KEYS:
            setattr(self, key, state[key])
        self.health_scale = float(state.get("health_scale", 1.0))  # absent in checkpoints before the health monitor
        self.apply()
        logger.info(
            "LR schedule restored: %d optimizer steps, %d evaluations, LR %.3g",
            self.optimizer_steps,
            self.evaluations,
            self.current_lr(),
        )


# ------------------------------------------------------------------------------------------------
# Planning and checks (pure Python: used by --dry-run and --preview-schedule)
# ------------------------------------------------------------------------------------------------


def optimizer_steps_per_epoch(num_samples: int, batch_size: int, grad_accum: int, num_gpus: int = 1) -> int:
    """Optimizer steps in one epoch as Coqui's Trainer counts them.

    One pass over ``num_samples`` rows in micro-batches of ``batch_size`` (the last one partial),
    split over ``num_gpus``; the Trainer steps the optimizer every ``grad_accum`` micro-batches and
    at the last micro-batch of the epoch.
    """
    per_gpu = math.ceil(num_samples / max(1, num_gpus))
    batches = math.ceil(per_gpu / max(1, batch_size))
    return math.ceil(batches / max(1, grad_accum)) if batches else 0


EFFECTIVELY_ZERO_LR = 1e-12  # far under any useful fine-tuning LR (the table's smallest is 5e-7)


@dataclass
class ScheduleCheck:
    """What :func:`check_schedule` found: ``errors`` refuse the run, ``warnings`` are logged."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def sample_steps(total_steps: int, spec: ScheduleSpec, points: int = 2000) -> list[int]:
    """Steps to evaluate a schedule on: an even grid plus every boundary (warmup, milestones)."""
    total = max(1, int(total_steps))
    grid = {round(i * (total - 1) / max(1, points - 1)) for i in range(points)} if total > 1 else {0}
    for b in (spec.warmup_steps, *spec.milestones, *spec.anneal_steps):
        for s in (b - 1, b, b + 1):
            if 0 <= s < total:
                grid.add(s)
    return sorted(grid)


def check_schedule(
    spec: ScheduleSpec,
    total_steps: int,
    *,
    table_lr: float | None = None,
    effective_batch: int | None = None,
    min_effective_batch: int = 32,
    lr_range_factor: float = 10.0,
) -> ScheduleCheck:
    """Check a schedule against the planned horizon before any GPU time is spent.

    Refuses: an LR that is NaN, infinite, zero or negative at any planned step; a cosine or range
    test without a horizon. Warns: milestones or anneal steps beyond the horizon (they never fire),
    warmup longer than the run, a peak LR more than ``lr_range_factor`` away from the table's LR
    for the dataset's hours, an effective batch (batch x accumulation x GPUs) under
    ``min_effective_batch``.
    """
    out = ScheduleCheck()
    if spec.name in ("cosine", "exponential") and not spec.total_steps:
        out.errors.append(f"the {spec.name} schedule needs total_steps (the planned optimizer steps)")
        return out
    for s, lr in zip(steps := sample_steps(total_steps, spec), spec.lrs(steps)):
        if not math.isfinite(lr) or lr < EFFECTIVELY_ZERO_LR:
            out.errors.append(
                f"the {spec.name} schedule gives LR {lr!r} at optimizer step {s} (NaN, infinite, or below "
                f"{EFFECTIVELY_ZERO_LR:g}, where the weights no longer move); check --lr, --min-lr and the "
                "schedule's parameters (preview them with --preview-schedule)"
            )
            break
    for label, points in (("milestones", spec.milestones), ("anneal steps", spec.anneal_steps)):
        late = [m for m in points if m >= total_steps]
        if late:
            out.warnings.append(
                f"{label} {late} are at or beyond the planned {total_steps} optimizer steps and will never fire; "
                "lower them or train longer (units: optimizer steps, not samples or micro-batches)"
            )
    if spec.warmup_steps >= total_steps > 0:
        out.warnings.append(
            f"warmup of {spec.warmup_steps} optimizer steps is not shorter than the planned {total_steps}: the LR "
            "never reaches its peak; lower --warmup-steps"
        )
    if table_lr and not (table_lr / lr_range_factor <= spec.base_lr <= table_lr * lr_range_factor):
        out.warnings.append(
            f"LR {spec.base_lr:.3g} is more than {lr_range_factor:g}x away from the table's {table_lr:.3g} for this "
            "dataset's hours; check it with scripts/lr_find.py or use the table's value"
        )
    if effective_batch is not None and effective_batch < min_effective_batch:
        out.warnings.append(
            f"effective batch {effective_batch} (batch x grad accumulation x GPUs) is under {min_effective_batch}: "
            "noisy updates; raise --grad-accum"
        )
    return out
