"""The toolkit's adaptation of Coqui's Trainer (subclass, not a fork).

Upstream behaviours this works around (Trainer 0.4):
- No hook runs after an evaluation, so nothing can step ReduceLROnPlateau with the eval loss:
  ``eval_epoch`` is extended to call the LR bridge and write ``metrics.jsonl``.
- ``run_eval_steps`` counts micro-batches, and mid-epoch evaluations average their losses with
  earlier evaluations of the same epoch (one ``KeepAverage`` per epoch): evaluations here are
  scheduled in optimizer steps and each starts from a fresh average.
- A mid-epoch evaluation ends with ``model.train()``, which also puts the frozen DVAE in train mode;
  the toolkit restores GPTTrainer's "only the GPT trains" state.
- When the last step of an epoch is also an evaluation step, the epoch-end evaluation would
  evaluate the same weights again and count twice for the plateau rule: it is skipped.
- ``fit()`` turns every exception into ``sys.exit(1)`` and deletes a run folder that has no
  checkpoint (taking the preflight report and logs with it): here errors propagate and the run
  folder stays. A final checkpoint is written when training ends, so ``--continue`` always has one.
- Checkpoints are written with ``torch.save`` straight to the final path and ``best_model.pth`` is
  a byte copy (``trainer.io``): a kill mid-write leaves a truncated newest checkpoint that
  ``--continue`` picks. ``save_checkpoint``/``save_best_model`` here write atomically
  (utils/training/checkpoints.py) and add the toolkit's state (exact step and epoch counts, health
  monitor, early stopping), which ``restore_model`` reads back.
- ``restore_model`` sets ``total_steps_done = step + 1`` (right only for checkpoints written inside
  a step) and, for ``--restore``, ``reset_lr`` sets the config LR ignoring warmup: both corrected.
- The best model is saved only at epoch end; here it is saved at every evaluation that improves
  the eval loss (so early stopping keeps the best weights even with mid-epoch evaluations), from a
  CPU copy of the weights on a worker thread while training goes on; the next checkpoint, the end
  of training and Ctrl-C wait for it.
- A NaN loss is backpropagated and stepped (Coqui only zeroes the logged grad norm): an optimizer
  step pre-hook drops non-finite gradients so the step changes nothing, and the health monitor
  (utils/training/health.py) reloads the last checkpoint and cuts the LR.
- The console logger prints a block per ``print_step``; with ``progress=True`` it is quieted and
  progress records go to the ``on_progress`` hooks (the tqdm bar is one). TensorBoard is unchanged.
- ``detach_loss_dict`` reads every loss back with ``.item()`` and ``optimize`` checks the clipped
  gradient norm with ``isnan``/``isinf`` on the host: several device syncs per step, each of which
  drains the GPU's queue. On a GPU (one process) the toolkit keeps the step's values on the device
  and reads them all at once every :func:`default_read_every` optimizer steps (and before each
  evaluation, checkpoint and epoch end); it clips the gradients itself and skips a non-finite step
  on the device (fused AdamW's ``found_inf``), so a step needs no host read at all. The health
  checks, the loss sums and the progress records then see each step's values in order, a few
  steps late.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from trainer import Trainer
from trainer.generic_utils import KeepAverage

from utils.training import batch_size, checkpoints, compat, distributed
from utils.training.health import DivergenceError, EarlyStopping, HealthMonitor, StopTraining, UpdateRatioProbe
from utils.training.lr_schedule import LRBridge

logger = logging.getLogger(__name__)

LOSS_KEYS = ("loss", "loss_text_ce", "loss_mel_ce")


def default_read_every() -> int:
    """Optimizer steps between host reads of the step values: 10 on a GPU, every step elsewhere."""
    return 10 if torch.cuda.is_available() else 1


@dataclass
class _StepValues:
    """One trainer step's values, kept on the device until they are read (:meth:`ToolkitTrainer._read_pending`)."""

    step: int  # total_steps_done after the step
    optimizer_step: int
    stepped: bool
    accum: int
    values: dict[str, Any]  # LOSS_KEYS and grad_norm: tensors (or floats) until read
    nonfinite: Any  # bool, or a 0-dim tensor (1.0: the optimizer step was skipped on the device)


class ToolkitTrainer(Trainer):
    """Coqui Trainer with evaluation-driven LR scheduling and per-evaluation metrics.

    Args:
        eval_every_steps: evaluate every this many optimizer steps (None: once per epoch).
        on_evaluation: optional callables ``fn(trainer, record)`` run after each evaluation record
            is written (plots).
        on_step: optional callables ``fn(trainer, info)`` run after each trainer step with
            ``info = {"step", "optimizer_step", "loss", "lr", "grad_norm", "stepped"}`` (LR range test).
        health: the health monitor (None: no checks, no divergence recovery).
        early_stopping: stop when the eval loss stops improving (None: off).
        on_progress: optional callables ``fn(info)`` run after each trainer step on rank 0 with
            ``info = {"step", "steps_in_epoch", "epoch", "epochs", "total_steps", "optimizer_step",
            "loss", "lr", "eta_s"}`` (the progress bar and other front ends subscribe through it).
        progress: quiets Coqui's per-step console prints (a progress subscriber replaces them).
        save_final_checkpoint: write a checkpoint when training ends (off for the LR range test).
        save_every_minutes: also write a checkpoint (the full training state) at the first optimizer
            step boundary after this many minutes since the last one (None: only Coqui's save_step).
        Other arguments are Coqui's ``Trainer`` arguments.
    """

    def __init__(
        self,
        *args: Any,
        eval_every_steps: int | None = None,
        on_evaluation: list[Callable[[ToolkitTrainer, dict[str, Any]], None]] | None = None,
        on_step: list[Callable[[ToolkitTrainer, dict[str, Any]], None]] | None = None,
        on_progress: list[Callable[[dict[str, Any]], None]] | None = None,
        health: HealthMonitor | None = None,
        early_stopping: EarlyStopping | None = None,
        progress: bool = True,
        save_final_checkpoint: bool = True,
        save_every_minutes: float | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("parse_command_line_args", False)  # never parse the caller's sys.argv
        self.eval_every_steps = eval_every_steps
        self.on_evaluation_hooks = list(on_evaluation or [])
        self.on_step_hooks = list(on_step or [])
        self.on_progress_hooks = list(on_progress or [])
        self.health = health
        self.early_stopping = early_stopping
        self.progress = progress
        self.save_final_checkpoint = save_final_checkpoint
        self.save_every_s = 60.0 * save_every_minutes if save_every_minutes else None
        self._last_save_time = time.time()
        self._best_writer = checkpoints.BackgroundWriter("best-model write")
        self._period = _Throughput()
        self.stop_reason: str | None = None
        self._last_eval_step: int | None = None
        self._last_eval_opt_step = -1
        self._train_sums: dict[str, float] = {}
        self._train_count = 0
        self._in_coqui_step = False
        self._save_pending = False
        self._train_started = time.time()
        self._in_step = False
        self._finished = False
        self._epoch_complete = False
        self._epoch_step = 0  # index of the current batch in this epoch
        self._epoch_batches_done = 0
        self._resume_batches = 0  # batches of the interrupted epoch a resume skips
        self._opt_step_losses: list[float] = []  # micro-batch losses since the last optimizer step
        self._step_offset = 0
        self._nonfinite_grad = False
        self._nonfinite_flag: torch.Tensor | None = None  # the device-side skip of this step (found_inf)
        self._grad_norm_dev: torch.Tensor | None = None  # this step's gradient norm, on the device
        self._pending: list[_StepValues] = []
        self._last_loss: float | None = None
        self._step_time_ema: float | None = None
        self._probe = UpdateRatioProbe()
        self.evaluation_records: list[dict[str, Any]] = []
        config = args[1] if len(args) > 1 else kwargs.get("config")
        if progress and config is not None:
            config.print_step = 10**9  # the progress bar replaces Coqui's console blocks (TensorBoard unchanged)
        super().__init__(*args, **kwargs)
        self.metrics_path = Path(self.output_path) / "metrics.jsonl"
        if self.health is not None and self.health.events_path is None:
            self.health.events_path = Path(self.output_path) / "events.jsonl"
        for opt in self.optimizer:
            opt.register_step_pre_hook(self._before_optimizer_step)
            opt.register_step_post_hook(self._after_optimizer_step)

    # --- helpers ------------------------------------------------------------------------------

    @property
    def lr_bridge(self) -> LRBridge | None:
        scheduler = self.scheduler[0] if self.scheduler else None
        return scheduler if isinstance(scheduler, LRBridge) else None

    @property
    def optimizer_steps(self) -> int:
        bridge = self.lr_bridge
        return bridge.optimizer_steps if bridge else self.total_steps_done // max(1, self.grad_accum_steps)

    @property
    def read_every(self) -> int:
        """Optimizer steps between host reads of the step values (1: every step, as Coqui does).

        Every step under several processes (the reads hold collectives that every rank must make
        at the same step) and with on_step hooks (the LR range test acts on each step's loss).
        """
        if distributed.world_size() > 1 or self.on_step_hooks:
            return 1
        return max(1, int(default_read_every()))

    def detach_loss_dict(
        self,
        loss_dict: dict[str, Any],
        *,
        step_optimizer: bool,
        optimizer_idx: int | None = None,
        grad_norm: Any = None,
    ) -> dict[str, Any]:
        """Coqui's, but with reads deferred the values stay tensors on the device (no ``.item()``)."""
        if self.read_every == 1 or optimizer_idx is not None:
            return super().detach_loss_dict(
                loss_dict, step_optimizer=step_optimizer, optimizer_idx=optimizer_idx, grad_norm=grad_norm
            )
        out = {k: (v.detach() if torch.is_tensor(v) else v) for k, v in loss_dict.items()}
        if step_optimizer and grad_norm is not None:
            out["grad_norm"] = grad_norm.detach() if torch.is_tensor(grad_norm) else grad_norm
        return out

    def _set_grad_clip_per_optimizer(self, config: Any, optimizer_idx: int | None) -> float:  # compat.py
        """Coqui's clip threshold; 0 (Coqui does not clip) where the toolkit clips in the step pre-hook."""
        clip = Trainer._set_grad_clip_per_optimizer(config=config, optimizer_idx=optimizer_idx)
        return 0.0 if self._clips_itself() else clip

    def _clips_itself(self) -> bool:
        """The device-side step: deferred reads and an optimizer that can skip a step without a host read."""
        return self.read_every > 1 and len(self.optimizer) == 1 and compat.supports_found_inf(self.optimizer[0])

    def toolkit_state(self) -> dict[str, Any]:
        """What the toolkit adds to every checkpoint (read back by :meth:`restore_model`)."""
        return {
            "health": self.health.state_dict() if self.health else None,
            "early_stopping": self.early_stopping.state_dict() if self.early_stopping else None,
            "last_eval_step": self._last_eval_step,
            # the running train-loss sums since the last evaluation, so the next evaluation after a
            # resume still reports the train loss of its whole period
            "train_sums": dict(self._train_sums),
            "train_count": self._train_count,
        }

    def _restore_gpt_only_training(self) -> None:
        model = compat.unwrap_model(self)
        if hasattr(model, "on_train_epoch_start"):
            model.on_train_epoch_start(self)  # GPTTrainer: whole model eval(), GPT train()

    # --- training steps -----------------------------------------------------------------------

    def _before_optimizer_step(self, optimizer: torch.optim.Optimizer, *_: Any) -> None:
        """Optimizer step pre-hook: a step with non-finite gradients changes nothing.

        On the device path (:meth:`_clips_itself`) the gradients are clipped here and the fused
        optimizer skips the step itself when their norm is not finite: no host read. Otherwise the
        non-finite check is read on the host and the gradients are dropped.
        """
        self._starting_weights()  # the copy of the weights this step changes is complete first
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if grads and self._clips_itself():
            clip = float(Trainer._set_grad_clip_per_optimizer(config=self.config, optimizer_idx=None) or 0.0)
            params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
            if clip > 0:
                total = torch.nn.utils.clip_grad_norm_(params, clip)
            else:
                total = torch.linalg.vector_norm(torch.stack([n.float() for n in compat.foreach_norm(grads)]))
            self._grad_norm_dev = total.detach()
            self._nonfinite_flag = (~torch.isfinite(total)).float()
            compat.set_found_inf(optimizer, self._nonfinite_flag)
            self._probe.before(optimizer)
            return
        # one fused pass over the gradients and one device sync per optimizer step
        if grads and not bool(torch.isfinite(torch.stack([n.float() for n in compat.foreach_norm(grads)])).all()):
            self._nonfinite_grad = True
            for g in optimizer.param_groups:
                for p in g["params"]:
                    p.grad = None  # AdamW skips parameters without a gradient: no update, no state change
            return
        self._probe.before(optimizer)

    def _after_optimizer_step(self, optimizer: torch.optim.Optimizer, *_: Any) -> None:
        compat.set_found_inf(optimizer, None)
        self._probe.after(optimizer)

    def train_epoch(self) -> None:
        """Coqui's epoch; after a mid-epoch resume, only the batches the interrupted epoch had left.

        After a CUDA OOM with the OOM fallback on, the epoch goes on from the start of the
        interrupted accumulation window with half the micro-batch (:meth:`_back_off_after_oom`).
        """
        self._epoch_complete = False
        self._epoch_batches_done = 0
        while True:
            skip, self._resume_batches = self._resume_batches, 0
            try:
                self._train_epoch_from(skip)
                break
            except batch_size.MicroBatchHalved as halved:
                self._resume_batches = halved.skip
        self._read_pending()
        self._epoch_complete = True

    def _train_epoch_from(self, skip: int) -> None:
        if not skip:
            super().train_epoch()
            return
        if self.train_loader is None:
            self.train_loader = self.prepare_accelerate_loader(
                self.get_train_dataloader(self.train_samples, verbose=True)
            )
        full = self.train_loader
        # The same share of the epoch is skipped, not the same clips: after a resume or an OOM
        # re-batch a few clips of this one epoch can repeat or be left out. With the continuous
        # loader (gpt.clip_cache.ContinuousLoader) later epochs then start inside a sampler pass.
        self.train_loader, self._step_offset = compat.EpochTail(full, skip), skip  # type: ignore[assignment]
        logger.info("going on inside epoch %d: %d of its %d batches were done", self.epochs_done + 1, skip, len(full))
        try:
            super().train_epoch()
        finally:
            if self.train_loader is not None:  # None: a micro-batch change asked for a new loader
                self.train_loader = full
            self._step_offset = 0

    @property
    def oom_backoff(self) -> bool:
        """The OOM fallback is on (utils.training.batch_size decides)."""
        return batch_size.oom_backoff_enabled(self)

    def _back_off_after_oom(self, step: int) -> None:
        """Halve the micro-batch (utils.training.batch_size) and restart from the window's start."""
        self._opt_step_losses = []  # the interrupted window is redone
        self._epoch_batches_done = batch_size.back_off_after_oom(self, step)  # in batches of the new size
        raise batch_size.MicroBatchHalved(self._epoch_batches_done)

    def train_step(self, batch: Any, batch_n_steps: int, step: int, loader_start_time: float) -> Any:
        step += self._step_offset
        self._epoch_step = step
        before = self.optimizer_steps
        started = time.time()
        self._period.loader_wait_s += max(0.0, started - loader_start_time)
        clips = _batch_len(batch)
        every = self.health.config.update_ratio_every if self.health else 0
        self._probe.armed = bool(every) and (before + 1) % every == 0
        self._nonfinite_grad = False
        self._nonfinite_flag = self._grad_norm_dev = None
        self._in_step = True
        out_of_memory = False
        self._in_coqui_step = True
        try:
            outputs, loss_dict = super().train_step(batch, batch_n_steps, step, loader_start_time)
        except RuntimeError as exc:  # torch.cuda.OutOfMemoryError is one
            if not (self.oom_backoff and batch_size.is_oom(exc)):
                raise
            out_of_memory = True  # handled below, once the traceback (and the activations it holds) is gone
        finally:
            self._in_step = self._in_coqui_step = False
        if out_of_memory:
            del batch
            self._read_pending()  # the window's earlier passes are counted before it is redone
            self._back_off_after_oom(step)
        self._period.samples += clips  # passes that ran (a redone window's earlier passes included)
        self._epoch_batches_done = step + 1
        after = self.optimizer_steps
        stepped = after != before
        self._pending.append(self._step_values(loss_dict, after, stepped))
        if self._read_due(step, batch_n_steps, after, stepped):
            self._read_pending()  # inside the step's time: the device work it waits for is training
        self._run_deferred_save()
        self._period.steps += 1
        self._period.step_s += time.time() - started
        self._update_progress(step, batch_n_steps, self._last_loss, time.time() - started)
        self._after_step(after, stepped=stepped)
        return outputs, loss_dict

    def _step_values(self, loss_dict: dict[str, Any] | None, after: int, stepped: bool) -> _StepValues:
        values: dict[str, Any] = {}
        for key in (*LOSS_KEYS, "grad_norm"):
            value = (loss_dict or {}).get(key)
            if value is not None:
                values[key] = value
        if stepped and self._grad_norm_dev is not None:
            values["grad_norm"] = self._grad_norm_dev
        nonfinite = self._nonfinite_flag if self._nonfinite_flag is not None else self._nonfinite_grad
        return _StepValues(
            step=self.total_steps_done,
            optimizer_step=after,
            stepped=stepped,
            accum=int(self.grad_accum_steps),
            values=values,
            nonfinite=nonfinite,
        )

    def _read_due(self, step: int, batch_n_steps: int, after: int, stepped: bool) -> bool:
        """Read now: every step without deferral; else at every read_every-th optimizer step, before
        an evaluation, at the epoch's last batch and on steps the update-ratio probe measured."""
        n = self.read_every
        if n == 1 or self._probe.last or step + 1 >= batch_n_steps:
            return True
        due_eval = bool(self.config.run_eval and self.eval_every_steps) and after % int(self.eval_every_steps) == 0
        return stepped and (after % n == 0 or due_eval)

    def _read_pending(self) -> None:
        """Read every pending step's values from the device at once, then count each step in order."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        tensors = [v for p in pending for v in (*p.values.values(), p.nonfinite) if torch.is_tensor(v)]
        host = iter(torch.stack([t.detach().float().reshape(()) for t in tensors]).tolist() if tensors else [])
        for p in pending:  # the same order as above
            p.values = {k: (next(host) if torch.is_tensor(v) else float(v)) for k, v in p.values.items()}
            p.nonfinite = bool(next(host)) if torch.is_tensor(p.nonfinite) else bool(p.nonfinite)
        for i, p in enumerate(pending):
            if self._count_step(p) and i + 1 < len(pending):
                logger.info(
                    "the %d steps after the diverged step %d ran on the weights before the recovery; not counted",
                    len(pending) - i - 1,
                    p.step,
                )
                break

    def _count_step(self, p: _StepValues) -> bool:
        """Divergence check, loss sums, health checks and on_step hooks of one step; True if it diverged."""
        loss = p.values["loss"] * p.accum if "loss" in p.values else None  # Trainer divides it by grad_accum_steps
        grad_norm = p.values.get("grad_norm")
        # under DDP every rank recovers together or none does
        diverged = self.health is not None and distributed.any_rank(self.health.is_divergent(loss, p.nonfinite))
        if diverged:
            self._recover_from_divergence(loss, step=p.step, optimizer_step=p.optimizer_step)
        elif p.values:
            self._account_step(p, loss, grad_norm)
        if p.stepped or self.health is None or diverged:
            self._opt_step_losses = []
        if loss is not None:
            self._last_loss = loss
        info = {
            "step": p.step,
            "optimizer_step": p.optimizer_step,
            "loss": loss,
            "lr": self._current_lr(),
            "grad_norm": grad_norm,
            "stepped": p.stepped,
        }
        for hook in self.on_step_hooks:
            hook(self, info)
        return diverged

    def _account_step(self, p: _StepValues, loss: float | None, grad_norm: float | None) -> None:
        """Sums for the next evaluation record; the health checks at each optimizer step."""
        for key in (*LOSS_KEYS, "grad_norm"):
            value = p.values.get(key)
            if value is not None:
                value = float(value) * (p.accum if key == "loss" else 1)
                if math.isfinite(value):
                    self._train_sums[key] = self._train_sums.get(key, 0.0) + value
        self._train_count += 1
        if loss is not None and math.isfinite(loss):
            self._opt_step_losses.append(loss)
        if self.health is not None and p.stepped:
            # the loss of the whole optimizer step: the mean over its accumulated micro-batches
            step_loss = sum(self._opt_step_losses) / len(self._opt_step_losses) if self._opt_step_losses else None
            self.health.check_step(step=p.step, optimizer_step=p.optimizer_step, loss=step_loss, grad_norm=grad_norm)
            if self._probe.last:
                self.health.check_update_ratios(
                    self._probe.last, step=p.step, optimizer_step=p.optimizer_step, lr=self._current_lr()
                )
                self._probe.last = {}

    def _after_step(self, after: int, *, stepped: bool) -> None:
        """Time-based checkpoint and the evaluation every eval_every_steps."""
        if self.save_every_s is not None and stepped and time.time() - self._last_save_time >= self.save_every_s:
            self.save_checkpoint()  # the full training state, so --continue loses at most the interval
        if self.config.run_eval and self.eval_every_steps and stepped and after % self.eval_every_steps == 0:
            self.eval_epoch()
            self._restore_gpt_only_training()

    def _current_lr(self) -> float:
        bridge = self.lr_bridge
        return bridge.current_lr() if bridge else float(self.optimizer[0].param_groups[0]["lr"])

    def _recover_from_divergence(
        self, loss: float | None, *, step: int | None = None, optimizer_step: int | None = None
    ) -> None:
        """Skip (already done by the pre-hook), go back to good weights, cut the LR; or stop."""
        assert self.health is not None
        for opt in self.optimizer:
            opt.zero_grad(set_to_none=True)  # accumulated non-finite gradients must not reach a later step
        step = self.total_steps_done if step is None else step
        opt_step = self.optimizer_steps if optimizer_step is None else optimizer_step
        if not self.health.can_recover():
            self.health.divergence_event(
                step=step, optimizer_step=opt_step, loss=loss, action="stopped training", recovered=False
            )
            self.stop_reason = "divergence"
            raise DivergenceError(
                f"training diverged (non-finite loss or gradient) {self.health.recoveries + 1} times; the last "
                f"{self.health.recoveries} recoveries (weights reload + LR cut) did not help. "
                f"{self._divergence_advice()}; "
                "see events.jsonl in the run folder"
            )
        reloaded = self._reload_good_weights()
        factor = self.health.config.divergence_lr_factor
        bridge = self.lr_bridge
        if bridge is not None:
            lr_before, lr_after = bridge.cut_lr(factor)
        else:
            lr_before = self.optimizer[0].param_groups[0]["lr"]
            lr_after = lr_before * factor
            for opt in self.optimizer:
                for group in opt.param_groups:
                    group["lr"] *= factor
        action = f"skipped the step, {reloaded}LR {lr_before:.3g} -> {lr_after:.3g}"
        self.health.divergence_event(step=step, optimizer_step=opt_step, loss=loss, action=action, recovered=True)

    def _divergence_advice(self) -> str:
        """A command that works for this run: restore from a checkpoint it has, or start again."""
        lr = self.optimizer[0].param_groups[0]["lr"] / (self.health.config.divergence_lr_factor**self.health.recoveries)
        self.wait_for_writes()
        if checkpoints.last_checkpoint(self.output_path, resumable=False) is not None:
            return (
                f"Restart from the best checkpoint with a lower LR: python utils/gpt_train.py --restore "
                f"{self.output_path} --preset plateau-breaker (or --lr {lr / 4:.2g})"
            )
        return (
            f"No checkpoint was written before it diverged: start again with a lower LR "
            f"(the same command with --lr {lr / 10:.2g}, a tenth of this run's starting LR)"
        )

    def _reload_good_weights(self) -> str:
        """The newest weights on disk (full checkpoint or newer best model), else the starting weights."""
        self.wait_for_writes()  # a best model still being written is among them
        path = checkpoints.last_checkpoint(self.output_path, resumable=False)
        if path is None:
            start = self._starting_weights()
            if not start:
                return "no good weights to go back to, "
            with torch.no_grad():
                for name, param in compat.unwrap_model(self).named_parameters():
                    if name in start:
                        param.copy_(start[name].to(param.device))
            for opt in self.optimizer:
                opt.state.clear()
            return "no checkpoint yet: went back to the starting weights (optimizer state reset), "
        state = checkpoints.load_checkpoint(path)
        compat.unwrap_model(self).load_state_dict(state["model"])
        if state.get("optimizer"):
            for opt, opt_state in zip(self.optimizer, state["optimizer"]):
                opt.load_state_dict(opt_state)
            return f"reloaded weights and optimizer state from {path.name}, "
        for opt in self.optimizer:
            opt.state.clear()  # moments of the diverged trajectory do not belong to these weights
        return f"reloaded weights from {path.name} (optimizer state reset), "

    def _update_progress(self, step: int, batch_n_steps: int, loss: float | None, seconds: float) -> None:
        """Send one progress record (step, epoch, loss, LR, the run's ETA) to the on_progress hooks."""
        if not self.on_progress_hooks or self.args.rank not in (None, 0):
            return
        a = 0.1
        self._step_time_ema = seconds if self._step_time_ema is None else a * seconds + (1 - a) * self._step_time_ema
        left = (self.config.epochs - self.epochs_done - 1) * batch_n_steps + (batch_n_steps - step - 1)
        info = {
            "step": step,
            "steps_in_epoch": batch_n_steps,
            "epoch": self.epochs_done + 1,
            "epochs": self.config.epochs,
            "total_steps": self.total_steps_done,
            "optimizer_step": self.optimizer_steps,
            "loss": loss,
            "lr": self._current_lr(),
            "eta_s": left * self._step_time_ema,
        }
        for hook in self.on_progress_hooks:
            hook(info)

    # --- evaluation ---------------------------------------------------------------------------

    def eval_epoch(self) -> None:
        self._read_pending()
        if self._last_eval_step == self.total_steps_done:
            logger.debug("step %d already evaluated; skipping the repeated evaluation", self.total_steps_done)
            return
        self.keep_avg_eval = KeepAverage()
        super().eval_epoch()
        self._last_eval_step = self.total_steps_done
        self._after_evaluation()

    def _after_evaluation(self) -> None:
        avg = self.keep_avg_eval.avg_values if self.keep_avg_eval is not None else {}
        eval_losses = {k: float(avg[f"avg_{k}"]) for k in LOSS_KEYS if f"avg_{k}" in avg}
        eval_loss = eval_losses.get("loss")
        bridge = self.lr_bridge
        event = bridge.on_evaluation(eval_loss) if bridge is not None else {}
        n = max(1, self._train_count)
        train = {k: v / n for k, v in self._train_sums.items()} if self._train_count else {}
        record: dict[str, Any] = {
            "step": self.total_steps_done,
            "optimizer_step": self.optimizer_steps,
            "epoch": self.epochs_done,
            "lr": bridge.current_lr() if bridge else self.optimizer[0].param_groups[0]["lr"],
            "lr_before": event.get("lr_before"),
            "lr_reduced": event.get("reduced", False),
            "train_loss": train.get("loss"),
            "eval_loss": eval_loss,
            "best_eval_loss": event.get("best_eval_loss"),
            "evals_without_improvement": event.get("num_bad_evals"),
            "train_steps_averaged": self._train_count,
            "elapsed_s": round(time.time() - self._train_started, 2),
        }
        for key in LOSS_KEYS[1:]:
            record[f"train_{key}"] = train.get(key)
            record[f"eval_{key}"] = eval_losses.get(key)
        record["grad_norm"] = train.get("grad_norm")
        record.update(self._period.as_record())
        self._period = _Throughput()
        record = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        if eval_loss is not None and not math.isfinite(eval_loss):
            record["eval_loss_nonfinite"] = str(eval_loss)
        self._train_sums, self._train_count = {}, 0
        if self.health is not None:
            self.health.check_evaluation(record, plateau_rule=bool(bridge and bridge.spec.name == "ReduceLROnPlateau"))
            record["health_events"] = self.health.take_pending()
        stop = False
        if self.early_stopping is not None:
            stop = self.early_stopping.update(eval_loss)
            record["early_stop_bad_evals"] = self.early_stopping.bad_evals
        self.evaluation_records.append(record)
        if self.args.rank in (None, 0):
            self._save_best_if_improved(eval_loss)
            with open(self.metrics_path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")
        logger.info(
            "evaluation at step %d (optimizer step %d): eval loss %s, train loss %s, LR %.3g",
            record["step"],
            record["optimizer_step"],
            _fmt(eval_loss),
            _fmt(record["train_loss"]),
            record["lr"],
        )
        for hook in self.on_evaluation_hooks:
            hook(self, record)
        if stop:
            assert self.early_stopping is not None
            self.stop_reason = "early_stopping"
            logger.info(
                "early stopping: eval loss has not improved on %.5f by %g for %d evaluations; best model: %s",
                self.early_stopping.best,
                self.early_stopping.min_delta,
                self.early_stopping.bad_evals,
                Path(self.output_path) / "best_model.pth",
            )
            raise StopTraining("early stopping")

    # --- checkpoints (atomic; see utils/training/checkpoints.py) -------------------------------

    def _save_best_if_improved(self, eval_loss: float | None) -> None:
        best = self.best_loss.get("eval_loss") if isinstance(self.best_loss, dict) else None
        if eval_loss is None or not math.isfinite(eval_loss) or (best is not None and eval_loss >= best):
            return
        train_loss = self.evaluation_records[-1].get("train_loss") if self.evaluation_records else None
        model_loss = {"train_loss": train_loss if train_loss is not None else math.inf, "eval_loss": eval_loss}
        run_dir = Path(self.output_path)
        path = run_dir / f"best_model_{self._counts()['steps_done']}.pth"
        keep_all = bool(self.config.save_all_best)
        started = time.time()
        # weights only: the optimizer state (2x the weights) lives in checkpoint_N.pth, for resuming.
        # A CPU copy is taken now and written on a worker thread while training goes on.
        self.wait_for_writes()  # the previous best model is complete (and any error in it raised) first
        state = checkpoints.cpu_copy(
            checkpoints.training_state(self, **self._counts(), model_loss=model_loss, optimizer=False)
        )
        copied = time.time() - started
        self.best_loss = model_loss

        def write() -> None:
            begun = time.time()
            checkpoints.atomic_torch_save(state, path)
            for old in run_dir.glob("best_model_*.pth"):
                if old != path and not keep_all:
                    old.unlink(missing_ok=True)
            checkpoints.atomic_link(path, run_dir / "best_model.pth")
            logger.info(
                "best model so far (eval loss %.5f): %s (written in %.1f s beside training; training "
                "waited %.1f s for the copy)",
                eval_loss,
                path.name,
                time.time() - begun,
                copied,
            )

        self._best_writer.submit(write)

    def wait_for_writes(self) -> None:
        """Block until the best model being written beside training is on disk (raise its error)."""
        self._best_writer.wait()

    def _counts(self) -> dict[str, int]:
        # Inside a step Coqui saves before incrementing total_steps_done, with that step's update
        # already applied. File names use these exact counts: checkpoint_N.pth holds the weights
        # after N trainer steps.
        epoch_done = self._finished or self._epoch_complete
        return {
            "steps_done": self.total_steps_done + (1 if self._in_step else 0),
            "epochs_done": self.epochs_done + (1 if epoch_done else 0),
            "epoch_batches_done": 0
            if epoch_done
            else (self._epoch_step + 1 if self._in_step else self._epoch_batches_done),
        }

    def _run_deferred_save(self) -> None:
        """The save Coqui asked for inside this step, now that the step's checks are counted."""
        if not self._save_pending:
            return
        self._save_pending = False
        self.save_checkpoint()  # Coqui has counted the step by now: the plain counts are this step's

    def save_checkpoint(self) -> None:
        """Write checkpoint_N.pth atomically (replaces Coqui's direct torch.save).

        Coqui's step-interval save runs inside ``train_step``, before the toolkit has counted the
        step (health monitor, loss sums): that save is deferred to the end of the step, so a resume
        from it sees exactly the same state. A second Ctrl-C while it writes does not cut it short.
        """
        if self.args.rank not in (None, 0):
            return
        if self._in_coqui_step:
            self._save_pending = True
            return
        self._read_pending()  # every step before the save counted in the state it saves
        counts = self._counts()
        path = Path(self.output_path) / f"checkpoint_{counts['steps_done']}.pth"
        model_loss = {
            "train_loss": _plain(compat.target_avg_loss(self, self.keep_avg_train)),
            "eval_loss": _plain(compat.target_avg_loss(self, self.keep_avg_eval)),
        }
        started = time.time()
        # a Ctrl-C while the best model finishes or while this file is written stops the run after it
        with checkpoints.sigint_deferred(path.name):
            self.wait_for_writes()  # one file at a time: the best model being written is complete first
            checkpoints.atomic_torch_save(checkpoints.training_state(self, **counts, model_loss=model_loss), path)
        self._last_save_time = time.time()
        logger.info("checkpoint: %s (written in %.1f s)", path, self._last_save_time - started)
        if self.config.save_n_checkpoints is not None:
            checkpoints.keep_newest(self.output_path, "checkpoint", int(self.config.save_n_checkpoints))

    def save_best_model(self) -> None:
        """Coqui's epoch-end best-model save: done at every evaluation here, so nothing to do."""

    @staticmethod
    def init_training(args: Any, coqpit_overrides: list[str], config: Any = None) -> Any:
        """Coqui's set-up, but ``--continue`` resumes from the newest *complete* numbered checkpoint.

        ``trainer.io.get_last_checkpoint`` falls back to ``best_model.pth`` by file time when no
        numbered best model exists; here the choice is always :func:`checkpoints.last_checkpoint`.
        """
        if args.continue_path:
            checkpoints.remove_partial_files(args.continue_path)
        config, new_fields = Trainer.init_training(args, coqpit_overrides, config)
        if args.continue_path:
            last = checkpoints.last_checkpoint(args.continue_path)
            if last is not None:
                args.restore_path = str(last)
                new_fields["restore_path"] = str(last)
        return config, new_fields

    def restore_model(self) -> None:
        """Coqui's restore, then the exact counters and the toolkit state (continue), or the LR (restore)."""
        super().restore_model()
        full = checkpoints.load_checkpoint(self.args.restore_path, mmap=True)
        state = full.get("toolkit_state") or {}
        saved_world = int(
            (((full.get("config") or {}).get("toolkit") or {}).get("distributed") or {}).get("world_size", 1)
        )
        del full
        if self.continue_run:
            if state:
                self.total_steps_done = int(state["steps_done"])
                self.epochs_done = int(state["epochs_done"])
                # the same share of the interrupted epoch is skipped when the GPU count changed
                self._resume_batches = distributed.resume_batches(
                    int(state.get("epoch_batches_done", 0)), saved_world, distributed.world_size()
                )
                self._last_eval_step = state.get("last_eval_step")
                self._train_sums = {k: float(v) for k, v in (state.get("train_sums") or {}).items()}
                self._train_count = int(state.get("train_count") or 0)
                if self.args.rank in (None, 0):
                    self._drop_records_after(int(state["steps_done"]), self._last_eval_step)
                if self.health is not None and state.get("health"):
                    self.health.load_state_dict(state["health"])
                if self.early_stopping is not None and state.get("early_stopping"):
                    self.early_stopping.load_state_dict(state["early_stopping"])
            logger.info(
                "continuing at trainer step %d, optimizer step %d, epoch %d, LR %.3g",
                self.total_steps_done,
                self.optimizer_steps,
                self.epochs_done,
                self._current_lr(),
            )
        elif self.lr_bridge is not None:
            self.lr_bridge._apply()  # Coqui's reset_lr wrote the config LR over the warmup's first LR

    def _drop_records_after(self, steps_done: int, last_eval_step: int | None) -> None:
        """Remove metrics and health events the resumed run will produce again.

        A checkpoint can predate work that was logged (Coqui's numbered checkpoint is written
        inside the epoch's last step, before the epoch-end evaluation); the resumed run redoes that
        work, so its records would otherwise appear twice.
        """
        last = -1 if last_eval_step is None else int(last_eval_step)
        for path, keep in (
            (Path(self.output_path) / "metrics.jsonl", lambda r: int(r.get("step", 0)) <= last),  # before __init__ ends
            (
                Path(self.output_path) / "events.jsonl",
                lambda r: int(r.get("step", 0)) < steps_done or (int(r.get("step", 0)) == steps_done == last),
            ),
        ):
            if not path.is_file():
                continue
            lines = path.read_text(encoding="utf-8").splitlines()
            kept = [line for line in lines if line.strip() and keep(json.loads(line))]
            if len(kept) != len(lines):
                tmp = path.with_name(f".{path.name}.partial")
                tmp.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")
                tmp.replace(path)
                logger.info(
                    "%s: %d record(s) after the checkpoint removed (the resumed run redoes them)",
                    path.name,
                    len(lines) - len(kept),
                )

    def _restore_best_loss(self) -> None:  # overrides a private Trainer method (utils/training/compat.py)
        """Coqui's, then the lowest eval loss of the run's best models (they can be newer than the
        checkpoint a ``--continue`` resumes from; a worse model must not replace them)."""
        super()._restore_best_loss()
        if not self.continue_run:
            return
        best = checkpoints.best_eval_loss(self.output_path)
        current = self.best_loss.get("eval_loss") if isinstance(self.best_loss, dict) else None
        if best is not None and (current is None or best["eval_loss"] < float(current)):
            self.best_loss = {"train_loss": best.get("train_loss", math.inf), "eval_loss": best["eval_loss"]}
            logger.info("best eval loss so far (from the run's best models): %.5f", best["eval_loss"])

    # --- fit ----------------------------------------------------------------------------------

    def fit(self) -> None:
        """Train for the configured epochs; errors propagate and the run folder is kept.

        Early stopping ends training normally (final checkpoint written); a divergence that the
        health monitor could not recover from raises :class:`DivergenceError` without one.
        """
        self._check_free_space()
        self._keep_start_weights()
        try:
            compat.run_fit_loop(self)
        except StopTraining as stop:
            logger.info("training stopped: %s", stop)
        except KeyboardInterrupt:
            self._save_on_interrupt()
            raise
        finally:
            try:
                self.wait_for_writes()  # a Ctrl-C or an error still lets the best model finish
            finally:
                if self.args.rank in (None, 0):
                    self.dashboard_logger.finish()
        self._finished = True
        if self.args.rank in (None, 0) and self.save_final_checkpoint:
            self.save_checkpoint()

    def _save_on_interrupt(self) -> None:
        """Ctrl-C: write the full state, then name the exact command that goes on from it."""
        if self.args.rank not in (None, 0):
            return
        logger.info("interrupted: saving a checkpoint in %s", self.output_path)
        try:
            self.save_checkpoint()
        except KeyboardInterrupt:  # a Ctrl-C before the write started: the file was not begun
            pass
        last = checkpoints.last_checkpoint(self.output_path)
        if last is not None:
            logger.warning(
                "interrupted; %s holds the state; to go on: python utils/gpt_train.py --continue %s",
                last.name,
                self.output_path,
            )
        elif (Path(self.output_path) / "best_model.pth").is_file():
            logger.warning(
                "interrupted before a full checkpoint; the best weights are in %s; to go on from them: "
                "python utils/gpt_train.py --restore %s (with the same options)",
                Path(self.output_path) / "best_model.pth",
                Path(self.output_path) / "best_model.pth",
            )
        else:
            logger.warning("interrupted before any checkpoint was written; start the run again")

    def _check_free_space(self) -> None:
        if self.args.rank not in (None, 0):
            return
        weights = checkpoints.tensor_bytes(compat.unwrap_model(self).state_dict())
        # two full checkpoints at once (the new one is complete before the old is deleted), each
        # weights + AdamW's two moments of the trainable part, plus one weights-only best model
        trainable = sum(p.numel() * p.element_size() for p in compat.unwrap_model(self).parameters() if p.requires_grad)
        warning = checkpoints.free_space_warning(self.output_path, 3 * weights + 4 * trainable)
        if warning:
            logger.warning(warning)

    def _keep_start_weights(self) -> None:
        """A CPU copy of the trainable weights at the start: divergence before the first checkpoint
        has good weights to go back to (about 1.7 GB of host memory for XTTS v2's GPT).

        The copy runs on a thread beside the first step (whose compile or cached-graph load takes
        seconds; the copy about 2 s on an H200 host) and is waited for before the first optimizer
        step changes the weights (:meth:`_starting_weights`).
        """
        self._start_weights = None
        self._start_copy = None
        if self.health is None or checkpoints.last_checkpoint(self.output_path, resumable=False) is not None:
            return
        model = compat.unwrap_model(self)
        params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self._start_copy = checkpoints.BackgroundCopy(params)

    def _starting_weights(self) -> dict[str, torch.Tensor] | None:
        """The starting weights' CPU copy, once it is complete (waits for it the first time)."""
        copy = getattr(self, "_start_copy", None)
        if copy is not None:
            self._start_copy = None
            self._start_weights = copy.result()
        return getattr(self, "_start_weights", None)


@dataclass
class _Throughput:
    """Training-step figures between two evaluations (evaluation and checkpoint time excluded)."""

    samples: int = 0
    steps: int = 0
    step_s: float = 0.0  # inside train_step (forward, backward, optimizer, host syncs)
    loader_wait_s: float = 0.0  # blocked waiting for the next batch

    def as_record(self) -> dict[str, Any]:
        busy = self.step_s + self.loader_wait_s
        out: dict[str, Any] = {
            "train_samples": self.samples,
            "train_samples_per_s": round(self.samples / busy, 2) if busy > 0 and self.samples else None,
            "step_s": round(self.step_s / self.steps, 4) if self.steps else None,
            "loader_wait_share": round(self.loader_wait_s / busy, 4) if busy > 0 else None,
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            stats = torch.cuda.memory_stats()
            out["gpu_peak_reserved_gib"] = round(torch.cuda.max_memory_reserved() / 2**30, 2)
            out["gpu_alloc_retries"] = int(stats.get("num_alloc_retries", 0))
            torch.cuda.reset_peak_memory_stats()
        return out


def _batch_len(batch: Any) -> int:
    """Clips in a collated batch (0 when it cannot tell)."""
    if isinstance(batch, dict):
        for key in ("text_lengths", "wav_lengths", "padded_text", "wav"):
            value = batch.get(key)
            if torch.is_tensor(value) and value.dim() > 0:
                return int(value.shape[0])
    return 0


def _plain(value: Any) -> Any:
    """A float for a 0-dim tensor (Coqui's running averages hold tensors while reads are deferred)."""
    return float(value) if torch.is_tensor(value) else value


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.5f}"
