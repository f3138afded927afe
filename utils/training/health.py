"""Training that watches itself: health checks, early stopping and the actions they take.

Each problem once found by staring at logs after days of GPU time is a check here,
run inside the Trainer loop by :class:`utils.training.trainer.ToolkitTrainer`:

- divergence: a non-finite loss or gradient. The optimizer step is skipped (the gradients are
  dropped before ``optimizer.step``), the last complete checkpoint is reloaded (weights and
  optimizer state; the step counter goes on), the LR is multiplied by ``divergence_lr_factor``;
  after ``divergence_max_recoveries`` recoveries training stops with :class:`DivergenceError`.
- loss spike: the smoothed train loss stays more than ``spike_ratio`` above its running minimum
  for ``spike_window`` optimizer steps.
- plateau: the best eval loss improved by less than ``plateau_min_improvement`` (relative) over
  the last ``plateau_window`` evaluations (ReduceLROnPlateau acts on the same signal).
- overfitting: eval loss rose while train loss fell, ``overfit_window`` evaluations in a row.
- clipping saturation: more than ``clip_share`` of the last ``clip_window`` optimizer steps clipped.
- LR too small / too large: ``||update|| / ||weights||`` of an optimizer step, per parameter
  group, below ``update_ratio_low`` or above ``update_ratio_high`` (every ``update_ratio_every``
  optimizer steps).

Every event is one JSON line in ``<run>/events.jsonl`` (``{"event": "plateau", "step": ...,
"message": ..., "recommendation": ..., "action": ...}``) and a WARNING in the log; the
evaluation record in ``metrics.jsonl`` that follows lists the names of the events since the
previous evaluation under ``health_events`` (metrics.jsonl stays one line per evaluation).
"""

from __future__ import annotations

import json
import logging
import math
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from utils.errors import ToolkitError
from utils.events import StopRun

logger = logging.getLogger(__name__)


class DivergenceError(ToolkitError):
    """Training produced non-finite losses or gradients more often than it may recover."""


# Raised inside the loop to end training normally (early stopping, LR range test, an event
# subscriber such as a search's pruner): one class, kept in utils.events so front ends can raise it.
StopTraining = StopRun


@dataclass
class HealthConfig:
    """Thresholds of the health checks (defaults as in :data:`utils.hparams.DEFAULTS`)."""

    divergence_max_recoveries: int = 3
    divergence_lr_factor: float = 0.5
    spike_ratio: float = 0.3
    spike_window: int = 20
    plateau_window: int = 5
    plateau_min_improvement: float = 0.01
    overfit_window: int = 3
    clip_window: int = 50
    clip_share: float = 0.5
    update_ratio_every: int = 100
    update_ratio_low: float = 1e-6
    update_ratio_high: float = 5e-3
    ema_alpha: float = 0.1  # smoothing of the train loss per optimizer step
    spike_burn_in: int = 10  # optimizer steps before the running minimum counts

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> HealthConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names and v is not None})


@dataclass
class EarlyStopping:
    """Stop when the eval loss has not improved by ``min_delta`` for ``patience`` evaluations."""

    patience: int
    min_delta: float = 0.0
    best: float = math.inf
    bad_evals: int = 0

    def update(self, eval_loss: float | None) -> bool:
        """Count this evaluation; True when training should stop."""
        if eval_loss is not None and math.isfinite(eval_loss) and eval_loss < self.best - self.min_delta:
            self.best, self.bad_evals = float(eval_loss), 0
        else:
            self.bad_evals += 1
        return self.bad_evals >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best, self.bad_evals = float(state["best"]), int(state["bad_evals"])


class HealthMonitor:
    """The checks above; pure bookkeeping, the trainer calls it and carries out actions.

    Args:
        config: thresholds.
        events_path: where events are appended as JSON lines (None: only logged and kept).
        grad_clip: the clipping threshold in use (0: no clipping; the clipping check is off).
    """

    def __init__(
        self, config: HealthConfig | None = None, events_path: str | Path | None = None, grad_clip: float = 0.0
    ) -> None:
        self.config = config or HealthConfig()
        self.events_path = Path(events_path) if events_path else None
        self.grad_clip = float(grad_clip or 0.0)
        self.events: list[dict[str, Any]] = []
        self.pending: list[str] = []  # event names since the last evaluation record
        self.recoveries = 0
        self.ema: float | None = None
        self.ema_min = math.inf
        self.steps_seen = 0
        self.spike_run = 0
        self.in_spike = False
        self.clipped: deque[bool] = deque(maxlen=self.config.clip_window)
        self.in_clip_saturation = False
        self.eval_history: list[tuple[float | None, float | None]] = []  # (train_loss, eval_loss)
        self.best_evals: list[float] = []
        self.in_plateau = False
        self.overfit_run = 0
        self.in_overfit = False
        self.ratio_flags: dict[str, bool] = {}
        self.on_event: Callable[[dict[str, Any]], None] | None = None  # e.g. an event bus (utils.events)

    # --- events -------------------------------------------------------------------------------

    def emit(
        self,
        event: str,
        *,
        step: int,
        optimizer_step: int,
        message: str,
        recommendation: str,
        action: str = "none",
        **details: Any,
    ) -> dict[str, Any]:
        """Record one event: events.jsonl, the log, the next evaluation record."""
        record = {
            "event": event,
            "step": step,
            "optimizer_step": optimizer_step,
            "message": message,
            "recommendation": recommendation,
            "action": action,
            **details,
        }
        record = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        self.events.append(record)
        self.pending.append(event)
        if self.on_event is not None:
            self.on_event(record)
        if self.events_path is not None:
            with open(self.events_path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")
        logger.warning(
            "health: %s at step %d: %s. Action: %s. Recommendation: %s", event, step, message, action, recommendation
        )
        return record

    def take_pending(self) -> list[str]:
        names, self.pending = self.pending, []
        return names

    # --- per optimizer step -------------------------------------------------------------------

    @staticmethod
    def is_divergent(loss: float | None, nonfinite_grad: bool) -> bool:
        return nonfinite_grad or (loss is not None and not math.isfinite(loss))

    def can_recover(self) -> bool:
        return self.recoveries < self.config.divergence_max_recoveries

    def check_step(self, *, step: int, optimizer_step: int, loss: float | None, grad_norm: float | None) -> None:
        """Spike and clipping checks after an optimizer step with a finite loss."""
        c = self.config
        if loss is not None and math.isfinite(loss):
            self.ema = loss if self.ema is None else c.ema_alpha * loss + (1 - c.ema_alpha) * self.ema
            self.steps_seen += 1
            if self.steps_seen > c.spike_burn_in:
                if self.ema > self.ema_min * (1 + c.spike_ratio):
                    self.spike_run += 1
                else:
                    self.spike_run, self.in_spike = 0, False
                self.ema_min = min(self.ema_min, self.ema)
                if self.spike_run >= c.spike_window and not self.in_spike:
                    self.in_spike = True
                    self.emit(
                        "loss_spike",
                        step=step,
                        optimizer_step=optimizer_step,
                        message=f"smoothed train loss {self.ema:.4f} has been more than {c.spike_ratio:.0%} above its "
                        f"minimum {self.ema_min:.4f} for {c.spike_window} optimizer steps",
                        recommendation="lower the LR (e.g. --preset stable, or --restore the best checkpoint with "
                        "--lr halved); check the data loaded at these steps for bad rows",
                        ema=self.ema,
                        ema_min=self.ema_min,
                    )
            else:
                self.ema_min = min(self.ema_min, self.ema)
        if self.grad_clip > 0 and grad_norm is not None and math.isfinite(grad_norm):
            self.clipped.append(grad_norm > self.grad_clip)
            share = sum(self.clipped) / len(self.clipped)
            full = len(self.clipped) == self.clipped.maxlen
            if full and share > c.clip_share and not self.in_clip_saturation:
                self.in_clip_saturation = True
                self.emit(
                    "clipping_saturation",
                    step=step,
                    optimizer_step=optimizer_step,
                    message=f"{share:.0%} of the last {len(self.clipped)} optimizer steps had their gradient norm "
                    f"clipped to {self.grad_clip:g}",
                    recommendation="the clip, not the LR, sets the step size: lower the LR (scripts/lr_find.py) "
                    "or raise --grad-clip if the loss is healthy",
                    share=share,
                )
            elif full and share <= c.clip_share / 2:
                self.in_clip_saturation = False

    def check_optimizer_step(
        self,
        values: Any,
        loss: float | None,
        grad_norm: float | None,
        *,
        probe: UpdateRatioProbe,
        lr: Callable[[], float],
    ) -> None:
        """:meth:`check_step` for an optimizer step (``values``: its ``step`` and ``optimizer_step``;
        ``loss``: the mean over its micro-batches), then :meth:`check_update_ratios` when ``probe``
        measured it (``lr``: the LR in effect, asked only then)."""
        step, optimizer_step = values.step, values.optimizer_step
        self.check_step(step=step, optimizer_step=optimizer_step, loss=loss, grad_norm=grad_norm)
        if probe.last:
            ratios, probe.last = probe.last, {}
            self.check_update_ratios(ratios, step=step, optimizer_step=optimizer_step, lr=lr())

    def divergence_event(
        self, *, step: int, optimizer_step: int, loss: float | None, action: str, recovered: bool
    ) -> dict[str, Any]:
        c = self.config
        if recovered:
            self.recoveries += 1
        what = f"loss {loss}" if loss is not None and not math.isfinite(loss) else "non-finite gradient"
        return self.emit(
            "divergence",
            step=step,
            optimizer_step=optimizer_step,
            message=f"{what}; the optimizer step was skipped (recovery {self.recoveries} of at most "
            f"{c.divergence_max_recoveries})",
            recommendation="if this repeats, restart from the best checkpoint with a lower LR: "
            "--restore RUN_DIR --preset plateau-breaker, or --lr at half the current value; check for bad rows",
            action=action,
            recoveries=self.recoveries,
        )

    def check_update_ratios(self, ratios: Mapping[str, float], *, step: int, optimizer_step: int, lr: float) -> None:
        """LR too small/large: ``ratios`` maps a parameter group name to ||update|| / ||weights||."""
        c = self.config
        for group, ratio in ratios.items():
            if not math.isfinite(ratio):
                continue
            kind = (
                "lr_too_small"
                if ratio < c.update_ratio_low
                else "lr_too_large"
                if ratio > c.update_ratio_high
                else None
            )
            key = f"{group}:{kind}"
            if kind and not self.ratio_flags.get(key):
                self.ratio_flags[key] = True
                bound = c.update_ratio_low if kind == "lr_too_small" else c.update_ratio_high
                self.emit(
                    kind,
                    step=step,
                    optimizer_step=optimizer_step,
                    message=f"parameter group {group}: update/weight norm ratio {ratio:.2e} per step at LR {lr:.3g} "
                    f"is {'below' if kind == 'lr_too_small' else 'above'} {bound:.0e}",
                    recommendation=(
                        "the weights barely move: raise the LR (try scripts/lr_find.py) or check that the group "
                        "should train"
                        if kind == "lr_too_small"
                        else "each step changes the weights a lot: lower the LR "
                        "(try scripts/lr_find.py, --preset stable)"
                    ),
                    group=group,
                    ratio=ratio,
                )
            elif not kind:
                self.ratio_flags.pop(f"{group}:lr_too_small", None)
                self.ratio_flags.pop(f"{group}:lr_too_large", None)

    # --- per evaluation -----------------------------------------------------------------------

    def check_evaluation(self, record: Mapping[str, Any], *, plateau_rule: bool) -> None:
        """Plateau and overfitting checks on an evaluation record (``train_loss``, ``eval_loss``)."""
        c = self.config
        step, opt_step = int(record.get("step") or 0), int(record.get("optimizer_step") or 0)
        train, ev = record.get("train_loss"), record.get("eval_loss")
        self.eval_history.append((train, ev))
        finite = ev is not None and math.isfinite(ev)
        prev_best = self.best_evals[-1] if self.best_evals else math.inf
        self.best_evals.append(min(prev_best, ev) if finite else prev_best)
        if len(self.best_evals) > c.plateau_window:
            old = self.best_evals[-1 - c.plateau_window]
            now = self.best_evals[-1]
            gain = (old - now) / abs(old) if math.isfinite(old) and old != 0 else math.inf
            if gain < c.plateau_min_improvement and not self.in_plateau:
                self.in_plateau = True
                rule = (
                    "ReduceLROnPlateau cuts the LR on this signal (after --plateau-patience evaluations)"
                    if plateau_rule
                    else "this schedule does not react to plateaus"
                )
                self.emit(
                    "plateau",
                    step=step,
                    optimizer_step=opt_step,
                    message=f"best eval loss improved {gain:.2%} over the last {c.plateau_window} evaluations "
                    f"(threshold {c.plateau_min_improvement:.2%}); {rule}",
                    recommendation="if it persists after LR cuts: --restore RUN_DIR --preset plateau-breaker; "
                    "more or cleaner data helps more than more epochs",
                    best_eval_loss=now,
                    gain=gain,
                )
            elif gain >= c.plateau_min_improvement:
                self.in_plateau = False
        if len(self.eval_history) >= 2:
            (t0, e0), (t1, e1) = self.eval_history[-2], self.eval_history[-1]
            diverging = None not in (t0, e0, t1, e1) and e1 > e0 and t1 < t0
            self.overfit_run = self.overfit_run + 1 if diverging else 0
            if self.overfit_run >= c.overfit_window and not self.in_overfit:
                self.in_overfit = True
                self.emit(
                    "overfitting",
                    step=step,
                    optimizer_step=opt_step,
                    message=f"eval loss rose while train loss fell for {self.overfit_run} evaluations in a row "
                    f"(eval {e0:.4f} -> {e1:.4f}, train {t0:.4f} -> {t1:.4f})",
                    recommendation="use best_model.pth (saved at the lowest eval loss); stop here or set "
                    "--early-stop-patience; more data or a higher --weight-decay",
                )
            elif not diverging:
                self.in_overfit = False

    # --- checkpoints --------------------------------------------------------------------------

    _STATE = (
        "recoveries",
        "ema",
        "ema_min",
        "steps_seen",
        "spike_run",
        "in_spike",
        "in_clip_saturation",
        "best_evals",
        "in_plateau",
        "overfit_run",
        "in_overfit",
        "ratio_flags",
    )

    def state_dict(self) -> dict[str, Any]:
        state = {k: getattr(self, k) for k in self._STATE}
        state["clipped"] = list(self.clipped)
        state["eval_history"] = [list(x) for x in self.eval_history]
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for key in self._STATE:
            if key in state:
                setattr(self, key, state[key])
        self.best_evals = list(self.best_evals)
        self.ratio_flags = dict(self.ratio_flags)
        self.clipped = deque(state.get("clipped", []), maxlen=self.config.clip_window)
        self.eval_history = [tuple(x) for x in state.get("eval_history", [])]


class UpdateRatioProbe:
    """``||w_after - w_before|| / ||w_before||`` per parameter group for one optimizer step.

    Registered as optimizer step pre/post hooks; active only on the steps it is armed for, when it
    keeps one copy of the trainable weights (for XTTS's 428 M-parameter GPT, 1.7 GB in fp32).
    """

    def __init__(self) -> None:
        self.armed = False
        self._before: list[list[Any]] | None = None
        self.last: dict[str, float] = {}

    def before(self, optimizer: Any) -> None:
        if not self.armed:
            return
        self._before = [[p.detach().clone() for p in g["params"] if p.grad is not None] for g in optimizer.param_groups]

    def after(self, optimizer: Any) -> None:
        import torch

        if not self.armed or self._before is None:
            return
        ratios = {}
        for i, (group, before) in enumerate(zip(optimizer.param_groups, self._before)):
            params = [p for p in group["params"] if p.grad is not None]
            if not params or len(params) != len(before):
                continue
            num = torch.sqrt(sum(((p.detach() - b) ** 2).sum() for p, b in zip(params, before)))
            den = torch.sqrt(sum((b**2).sum() for b in before))
            name = str(group.get("name", f"group{i}"))
            ratios[name] = float(num / den) if float(den) > 0 else math.nan
        self.last, self._before, self.armed = ratios, None, False
