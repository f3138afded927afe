"""Divergence and NaN handling: a non-finite step changes nothing; then good weights and a lower LR, or a stop.

Coqui Trainer 0.4 backpropagates and steps a NaN loss (it only zeroes the logged gradient norm).
Here two parts of :class:`~utils.training.trainer.ToolkitTrainer` take over:

- :class:`StepGuard` runs as each optimizer's step pre/post hook: a step whose gradients are not
  finite changes nothing, decided per optimizer. On the device path (deferred reads, a fused
  Adam/AdamW) it clips the gradients itself and hands the optimizer a ``found_inf`` flag, so the
  step needs no host read; otherwise the norms are read on the host and the gradients dropped.
- :class:`Recovery` acts when the step's values are read (a few steps late on the device path):
  it reloads the newest good weights (the last full checkpoint, a newer best model, else a CPU
  copy of the starting weights), cuts every optimizer's LR by the health monitor's factor, and
  after ``divergence_max_recoveries`` stops with :class:`~utils.training.health.DivergenceError`
  naming a command that works for the run.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from utils.training import checkpoints, compat, distributed
from utils.training.health import DivergenceError, HealthMonitor, UpdateRatioProbe
from utils.training.lr_schedule import LRBridge

logger = logging.getLogger(__name__)


class StepGuard:
    """Optimizer step hooks: non-finite gradients never change the weights; the update-ratio probe.

    Args:
        probe: measures ``||update|| / ||weights||`` of the steps it is armed for.
    """

    def __init__(self, probe: UpdateRatioProbe) -> None:
        self.probe = probe
        self.on_device = False
        self.clip = 0.0
        self._measured: torch.optim.Optimizer | None = None
        self.reset()

    def attach(
        self, optimizers: list[torch.optim.Optimizer], *, read_every: int, lr_optimizer: int, config: Any
    ) -> None:
        """Choose the path for these optimizers: the device path with deferred reads and one optimizer
        that skips a non-finite step itself (several: the host path); the LR optimizer's steps are measured."""
        self.on_device = read_every > 1 and len(optimizers) == 1 and compat.supports_found_inf(optimizers[0])
        self.clip = compat.coqui_grad_clip(config, None) if self.on_device else 0.0
        self._measured = optimizers[lr_optimizer]

    def reset(self) -> None:
        """Forget the previous trainer step's flags (called before each step)."""
        self.nonfinite = False  # host path: some optimizer's gradients were not finite (dropped)
        self.flag: torch.Tensor | None = None  # device path: 1.0 when the step was skipped (found_inf)
        self.grad_norm: torch.Tensor | None = None  # device path: the clipped gradient norm

    @property
    def skipped(self) -> Any:
        """Whether this trainer step skipped an optimizer step: a bool, or a device tensor."""
        return self.flag if self.flag is not None else self.nonfinite

    def before_step(self, optimizer: torch.optim.Optimizer, *_: Any) -> None:
        """Optimizer step pre-hook body: clip and flag on the device, or drop non-finite gradients."""
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        grads = [p.grad for p in params]
        if grads and self.on_device:
            if self.clip > 0:
                total = torch.nn.utils.clip_grad_norm_(params, self.clip)
            else:
                total = torch.linalg.vector_norm(torch.stack([n.float() for n in compat.foreach_norm(grads)]))
            self.grad_norm = total.detach()
            self.flag = (~torch.isfinite(total)).float()
            compat.set_found_inf(optimizer, self.flag)
        # one fused pass over the gradients and one device sync per optimizer step
        elif grads and not bool(torch.isfinite(torch.stack([n.float() for n in compat.foreach_norm(grads)])).all()):
            self.nonfinite = True
            for group in optimizer.param_groups:
                for p in group["params"]:
                    p.grad = None  # Adam/AdamW skip parameters without a gradient: no update, no state change
            return
        if optimizer is self._measured:
            self.probe.before(optimizer)

    def after_step(self, optimizer: torch.optim.Optimizer, *_: Any) -> None:
        """Optimizer step post-hook: clear the ``found_inf`` flag; finish the probe's measurement."""
        compat.set_found_inf(optimizer, None)
        if optimizer is self._measured:
            self.probe.after(optimizer)


class Recovery:
    """Back to good weights with a lower LR after a divergence, or a stop with advice.

    Args:
        health: the health monitor that counts recoveries (None: no recovery at all).
    """

    def __init__(self, health: HealthMonitor | None) -> None:
        self.health = health
        self._start_copy: checkpoints.BackgroundCopy | None = None
        self.start_weights: dict[str, torch.Tensor] | None = None

    def keep_start_weights(self, model: torch.nn.Module, run_dir: str | Path) -> None:
        """Start a CPU copy of the trainable weights: divergence before the first checkpoint has
        good weights to go back to (about 1.7 GB of host memory for XTTS v2's GPT).

        The copy runs on a thread beside the first step (whose compile or cached-graph load takes
        seconds; the copy about 2 s on an H200 host); :meth:`starting_weights` waits for it, and the
        trainer calls it before the first optimizer step changes the weights.
        """
        self._start_copy, self.start_weights = None, None
        if self.health is None or checkpoints.last_checkpoint(run_dir, resumable=False) is not None:
            return
        params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self._start_copy = checkpoints.BackgroundCopy(params)

    def starting_weights(self) -> dict[str, torch.Tensor] | None:
        """The starting weights' CPU copy, once it is complete (waits for it the first time)."""
        copy, self._start_copy = self._start_copy, None
        if copy is not None:
            self.start_weights = copy.result()
        return self.start_weights

    def diverged(self, loss: float | None, nonfinite: bool) -> bool:
        """A non-finite loss or gradient (under data parallel: on any rank, so all recover together)."""
        return self.health is not None and distributed.any_rank(self.health.is_divergent(loss, nonfinite))

    def recover(self, trainer: Any, loss: float | None, *, step: int, optimizer_step: int) -> None:
        """Go back to good weights and cut the LR (the step itself was skipped by :class:`StepGuard`).

        Raises:
            DivergenceError: the health monitor allows no more recoveries (``trainer.stop_reason``
                is then "divergence").
        """
        health = self.health
        assert health is not None
        for opt in trainer.optimizer:
            opt.zero_grad(set_to_none=True)  # accumulated non-finite gradients must not reach a later step
        if not health.can_recover():
            health.divergence_event(
                step=step, optimizer_step=optimizer_step, loss=loss, action="stopped training", recovered=False
            )
            trainer.stop_reason = "divergence"
            raise DivergenceError(
                f"training diverged (non-finite loss or gradient) {health.recoveries + 1} times; the last "
                f"{health.recoveries} recoveries (weights reload + LR cut) did not help. "
                f"{self.advice(trainer)}; see events.jsonl in the run folder"
            )
        reloaded = self._reload_good_weights(trainer)
        lr_before, lr_after = cut_lr(trainer, health.config.divergence_lr_factor)
        action = f"skipped the step, {reloaded}LR {lr_before:.3g} -> {lr_after:.3g}"
        health.divergence_event(step=step, optimizer_step=optimizer_step, loss=loss, action=action, recovered=True)

    def advice(self, trainer: Any) -> str:
        """A command that works for this run: restore from a checkpoint it has, or start again."""
        assert self.health is not None
        opt = trainer.optimizer[trainer.stage.lr_optimizer]
        lr = opt.param_groups[0]["lr"] / (self.health.config.divergence_lr_factor**self.health.recoveries)
        trainer.wait_for_writes()
        option = trainer.stage.lr_option
        if checkpoints.run_folder_of(trainer.output_path) != Path(trainer.output_path):  # a DVAE or decoder stage
            return (
                f"Start the run again with a lower LR for this stage (the same command with {option} {lr / 4:.2g}, "
                "a quarter of the LR it diverged at)"
            )
        if checkpoints.last_checkpoint(trainer.output_path, resumable=False) is not None:
            return (
                f"Restart from the best checkpoint with a lower LR: python utils/gpt_train.py --restore "
                f"{trainer.output_path} --preset plateau-breaker (or --lr {lr / 4:.2g})"
            )
        return (
            f"No checkpoint was written before it diverged: start again with a lower LR "
            f"(the same command with --lr {lr / 10:.2g}, a tenth of this run's starting LR)"
        )

    def _reload_good_weights(self, trainer: Any) -> str:
        """The newest weights on disk (full checkpoint or newer best model), else the starting weights."""
        trainer.wait_for_writes()  # a best model still being written is among them
        path = checkpoints.last_checkpoint(trainer.output_path, resumable=False)
        model = compat.unwrap_model(trainer)
        if path is None:
            start = self.starting_weights()
            if not start:
                return "no good weights to go back to, "
            with torch.no_grad():
                for name, param in model.named_parameters():
                    if name in start:
                        param.copy_(start[name].to(param.device))
            for opt in trainer.optimizer:
                opt.state.clear()
            return "no checkpoint yet: went back to the starting weights (optimizer state reset), "
        state = checkpoints.load_checkpoint(path)
        model.load_state_dict(state["model"])
        if state.get("optimizer"):
            for opt, opt_state in zip(trainer.optimizer, state["optimizer"]):
                opt.load_state_dict(opt_state)
            return f"reloaded weights and optimizer state from {path.name}, "
        for opt in trainer.optimizer:
            opt.state.clear()  # moments of the diverged trajectory do not belong to these weights
        return f"reloaded weights from {path.name} (optimizer state reset), "


def cut_lr(trainer: Any, factor: float) -> tuple[float, float]:
    """Multiply every optimizer's LR by ``factor`` (through its LR bridge where it has one).

    Returns:
        The LR optimizer's LR before and after.
    """
    report = trainer.stage.lr_optimizer
    before = after = 0.0
    schedulers = list(trainer.scheduler or [])
    for idx, opt in enumerate(trainer.optimizer):
        bridge = schedulers[idx] if idx < len(schedulers) else None
        if isinstance(bridge, LRBridge):
            lr_before, lr_after = bridge.cut_lr(factor)
        else:
            lr_before = opt.param_groups[0]["lr"]
            for group in opt.param_groups:
                group["lr"] *= factor
            lr_after = opt.param_groups[0]["lr"]
        if idx == report:
            before, after = lr_before, lr_after
    return before, after
