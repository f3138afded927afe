"""ToolkitTrainer: what the toolkit changes in Coqui Trainer 0.4's loop, and why (a subclass, not a fork).

Every override's docstring starts with the upstream behaviour it changes. State with a life of
its own lives in parts the trainer holds, one job each:

- ``steps`` (:mod:`utils.training.step_values`): each step's values, kept on the device and read
  in batches; the train-loss sums of the next evaluation record; throughput.
- ``guard`` and ``recovery`` (:mod:`utils.training.recovery`): a non-finite step changes nothing;
  a divergence reloads good weights and cuts the LR, or stops with advice.
- ``best_model`` (:mod:`utils.training.best_model`): ``best_model_N.pth`` at every evaluation that
  improves the eval loss, written beside training.
- ``evaluations`` (:mod:`utils.training.evaluations`): each evaluation's record in metrics.jsonl
  and what is decided on it (the LR plateau rule, health checks, early stopping).
- ``position``: where Coqui's loop is in the epoch (exact checkpoint counts, mid-epoch resume).
- ``deadline``: a stage's wall-time limit; past it the run stops at the next optimizer step with an
  evaluation and a checkpoint at that exact position.

What differs between stages (loss names, the model's mode after an evaluation, the optimizer the
run is scheduled by) comes from the model (:mod:`utils.training.stage`): the same trainer drives
the GPT, a one-optimizer stage (the DVAE) and a GAN with two optimizers (the HiFi-GAN decoder).
Private Coqui names are touched only through :mod:`utils.training.compat`. With ``progress=True``
Coqui's console block is quiet (it counts epochs from 0, beside the bar's count from 1) and
progress records go to the ``on_progress`` hooks (the tqdm bar is one). The dashboard
(``config.dashboard_logger``: TensorBoard, a tracker or none) gets the numbers of metrics.jsonl,
per step and per evaluation, instead of Coqui's averages (:mod:`utils.training.dashboard`,
:mod:`utils.training.run_log`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from trainer import Trainer
from trainer.logging.dummy_logger import DummyLogger

from utils.training import batch_size, checkpoints, compat, dashboard, distributed, evaluations, step_values
from utils.training.best_model import BestModelWriter, best_loss_on_disk
from utils.training.health import EarlyStopping, HealthMonitor, StopTraining, UpdateRatioProbe
from utils.training.lr_schedule import LRBridge
from utils.training.recovery import Recovery, StepGuard
from utils.training.run_log import RunLog
from utils.training.stage import Stage, after_evaluation_mode
from utils.training.step_values import StepAccounting, StepValues, batch_clips

logger = logging.getLogger(__name__)

Hook = Callable[["ToolkitTrainer", dict[str, Any]], None]


class ToolkitTrainer(compat.TrainerPrivateHooks, Trainer):
    """Coqui Trainer with evaluation-driven LR scheduling, exact resumes, health checks and recovery.

    Args:
        eval_every_steps: evaluate every this many optimizer steps (None: once per epoch).
        on_evaluation: callables ``fn(trainer, record)`` run after each evaluation record is written.
        on_step: callables ``fn(trainer, info)`` run for each trainer step with ``info = {"step",
            "optimizer_step", "loss", "lr", "grad_norm", "stepped"}`` (the LR range test).
        on_progress: callables ``fn(info)`` run after each trainer step on rank 0 with ``info =
            {"step", "steps_in_epoch", "epoch", "epochs", "total_steps", "optimizer_step", "loss",
            "lr", "eta_s"}`` (the progress bar and other front ends subscribe through it).
        health: the health monitor (None: no checks, no divergence recovery).
        early_stopping: stop when the eval loss stops improving (None: off).
        progress: quiets Coqui's console block (a progress subscriber replaces it).
        save_final_checkpoint: write a checkpoint when training ends (off for the LR range test).
        save_every_minutes: also write a checkpoint at the first optimizer step boundary after this
            many minutes since the last one (None: only Coqui's ``save_step``).
        run_folder: write into exactly this folder (Coqui makes ``{run_name}-{date}-{commit}`` in
            ``output_path``); for a stage's plain folder in a run folder.
        deadline: a wall-clock time (``time.time()``) after which training stops cleanly at the next
            optimizer step: evaluation, best model, checkpoint (``stop_reason`` "time_limit").
        Other arguments are Coqui's ``Trainer`` arguments.
    """

    def __init__(
        self,
        *args: Any,
        eval_every_steps: int | None = None,
        on_evaluation: list[Hook] | None = None,
        on_step: list[Hook] | None = None,
        on_progress: list[Callable[[dict[str, Any]], None]] | None = None,
        health: HealthMonitor | None = None,
        early_stopping: EarlyStopping | None = None,
        progress: bool = True,
        save_final_checkpoint: bool = True,
        save_every_minutes: float | None = None,
        run_folder: str | Path | None = None,
        deadline: float | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("parse_command_line_args", False)  # never parse the caller's sys.argv
        self.eval_every_steps, self.health, self.on_step_hooks = eval_every_steps, health, list(on_step or [])
        self.on_progress_hooks = list(on_progress or [])
        self.progress, self.save_final_checkpoint = progress, save_final_checkpoint
        self.save_every_s = 60.0 * save_every_minutes if save_every_minutes else None
        self.stop_reason: str | None = None
        self.deadline = deadline
        self.started_at = self._last_save_time = time.time()
        self.position = _Position()
        self.steps = StepAccounting(step_values.read_every(distributed.world_size(), each_step=bool(on_step)))
        self.probe = UpdateRatioProbe()
        self.guard, self.recovery = StepGuard(self.probe), Recovery(health)
        self.best_model = BestModelWriter()
        self.evaluations = evaluations.Evaluations(
            health=health, early_stopping=early_stopping, hooks=list(on_evaluation or [])
        )
        config = args[1] if len(args) > 1 else kwargs.get("config")
        if progress and config is not None:
            config.print_step = 10**9  # the progress bar replaces Coqui's console blocks (TensorBoard unchanged)
        with compat.experiment_folder(run_folder):
            super().__init__(*args, **kwargs)
        self._attach_parts()

    def _attach_parts(self) -> None:
        """What needs Coqui's set-up first: the stage (optimizers built), the run folder, the step hooks."""
        self.steps.stage = self.stage
        if any(isinstance(s, LRBridge) for s in self.scheduler or []):
            # an LRBridge counts optimizer steps; with scheduler_after_epoch Coqui would step it once
            # an epoch, and for one optimizer never (its stepped set holds None, not 0)
            self.config.scheduler_after_epoch = False
        self.run_log = RunLog(Path(self.output_path) / "metrics.jsonl", self.dashboard_logger)
        self.evaluations.log = self.run_log
        if self.health is not None:
            if self.health.events_path is None:
                self.health.events_path = Path(self.output_path) / "events.jsonl"
                self.health.events_path.touch()  # in every run folder from the start: empty until a first event
            self.health.on_event = _also(self.health.on_event, self.run_log.health)
        self.guard.attach(
            self.optimizer, read_every=self.steps.read_every, lr_optimizer=self.stage.lr_optimizer, config=self.config
        )
        for opt in self.optimizer:
            opt.register_step_pre_hook(self._before_optimizer_step)
            opt.register_step_post_hook(self.guard.after_step)

    # --- what the trainer reads ---------------------------------------------------------------

    @cached_property
    def stage(self) -> Stage:
        """The model's loss names and scheduling optimizer (:mod:`utils.training.stage`)."""
        return Stage.of(compat.unwrap_model(self), self.config, len(self.optimizer))

    @property
    def lr_bridge(self) -> LRBridge | None:
        """The LR optimizer's scheduler, when it is the toolkit's LR bridge."""
        scheduler = self.scheduler[self.stage.lr_optimizer] if self.scheduler else None
        return scheduler if isinstance(scheduler, LRBridge) else None

    @property
    def optimizer_steps(self) -> int:
        """The run's optimizer steps: the LR optimizer's (Coqui counts trainer steps, i.e. micro-batches)."""
        bridge = self.lr_bridge
        return bridge.optimizer_steps if bridge else self.total_steps_done // max(1, self.grad_accum_steps)

    @property
    def evaluation_records(self) -> list[dict[str, Any]]:
        """Every evaluation record of this process's run (rank 0 also writes them to metrics.jsonl)."""
        return self.evaluations.records

    def current_lr(self) -> float:
        bridge = self.lr_bridge
        return bridge.current_lr() if bridge else float(self.optimizer[self.stage.lr_optimizer].param_groups[0]["lr"])

    def toolkit_state(self) -> dict[str, Any]:
        """What the toolkit adds to every checkpoint (read back by :meth:`restore_model`)."""
        health = self.health.state_dict() if self.health else None
        return {"health": health, **self.evaluations.state_dict(), **self.steps.state_dict()}

    def wait_for_writes(self) -> None:
        """Block until the best model being written beside training is on disk (raise its error)."""
        self.best_model.wait()

    def share_evaluation_inputs(self) -> None:
        """Hook before each evaluation record: data parallel makes its inputs the same on every rank."""

    def init_loggers(self, config: Any, output_path: Any, dashboard_logger: Any = None, c_logger: Any = None) -> Any:
        """Coqui's dashboard gets its own averages and its console counts epochs from 0: the toolkit's
        dashboard and console instead (:mod:`utils.training.dashboard`; a dashboard on rank 0 only)."""
        console = c_logger or dashboard.ToolkitConsole(quiet=self.progress)
        if self.args.rank not in (None, 0):
            return DummyLogger(), console
        return dashboard_logger or dashboard.make_dashboard(config, output_path), console

    # --- the steps ----------------------------------------------------------------------------

    def detach_loss_dict(self, loss_dict: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        """Coqui reads every loss with ``.item()`` (a device sync each): with deferred reads they stay tensors."""
        if self.steps.read_every == 1:
            return super().detach_loss_dict(loss_dict, **kwargs)
        grad_norm = kwargs.get("grad_norm") if kwargs.get("step_optimizer") else None
        return step_values.detached(loss_dict, grad_norm, kwargs.get("optimizer_idx"))

    def grad_clip(self, config: Any, optimizer_idx: int | None) -> float:
        """Coqui clips in ``optimize``: its threshold, but 0 where the optimizer pre-hook clips on the device."""
        return 0.0 if self.guard.on_device else compat.coqui_grad_clip(config, optimizer_idx)

    def _before_optimizer_step(self, optimizer: torch.optim.Optimizer, *_: Any) -> None:
        self.recovery.starting_weights()  # the copy of the weights this step changes is complete first
        self.guard.before_step(optimizer)

    def train_epoch(self) -> None:
        """Coqui's epoch always starts at batch 0: after a mid-epoch resume or an OOM re-batch, only the
        batches left run."""
        pos = self.position
        pos.epoch_complete, pos.batches_done = False, 0
        while True:
            skip, pos.resume_batches = pos.resume_batches, 0
            try:
                self._train_epoch_from(skip)
                break
            except batch_size.MicroBatchHalved as halved:
                pos.resume_batches = halved.skip
        self._read_pending()
        pos.epoch_complete = True

    def _train_epoch_from(self, skip: int) -> None:
        if not skip:
            super().train_epoch()
            return
        if self.train_loader is None:
            self.train_loader = self.prepare_accelerate_loader(self.get_train_dataloader(self.train_samples))
        full = self.train_loader
        # The same share of the epoch is skipped, not the same clips: after a resume or an OOM
        # re-batch a few clips of this one epoch can repeat or be left out. With the continuous
        # loader (gpt.clip_cache.ContinuousLoader) later epochs then start inside a sampler pass.
        self.train_loader, self.position.step_offset = compat.EpochTail(full, skip), skip  # type: ignore[assignment]
        logger.info("going on inside epoch %d: %d of its %d batches were done", self.epochs_done + 1, skip, len(full))
        try:
            super().train_epoch()
        finally:
            if self.train_loader is not None:  # None: a micro-batch change asked for a new loader
                self.train_loader = full
            self.position.step_offset = 0

    def train_step(self, batch: Any, batch_n_steps: int, step: int, loader_start_time: float) -> Any:
        """Coqui's step, counted by the toolkit: step values, a CUDA OOM back-off, the save Coqui asked
        for inside the step, progress records and the evaluation every ``eval_every_steps``."""
        pos = self.position
        step += pos.step_offset
        pos.epoch_step, before, started, lr = step, self.optimizer_steps, time.time(), self.current_lr()
        self.steps.loader_waited(started - loader_start_time)
        clips = batch_clips(batch)
        every = self.health.config.update_ratio_every if self.health else 0
        self.probe.armed = bool(every) and (before + 1) % every == 0
        self.guard.reset()
        pos.in_step, out_of_memory = True, False
        try:
            outputs, loss_dict = super().train_step(batch, batch_n_steps, step, loader_start_time)
        except RuntimeError as exc:  # torch.cuda.OutOfMemoryError is one
            if not (batch_size.oom_backoff_enabled(self) and batch_size.is_oom(exc)):
                raise
            out_of_memory = True  # handled below, once the traceback (and the activations it holds) is gone
        finally:
            pos.in_step = False
        if out_of_memory:
            del batch
            self._read_pending()  # the window's earlier passes are counted before it is redone
            _back_off_after_oom(self, step)
        pos.batches_done = step + 1
        after = self.optimizer_steps
        stepped = after != before
        eval_due = bool(
            self.config.run_eval and self.eval_every_steps and stepped and after % self.eval_every_steps == 0
        )
        self.steps.capture(
            loss_dict,
            step=self.total_steps_done,
            optimizer_step=after,
            stepped=stepped,
            accum=int(self.grad_accum_steps),
            grad_norm=self.guard.grad_norm,
            nonfinite=self.guard.skipped,
            lr=lr,
        )
        last = step + 1 >= batch_n_steps
        if self.steps.due(
            last_batch=last, stepped=stepped, optimizer_step=after, eval_due=eval_due, probed=bool(self.probe.last)
        ):
            self._read_pending()  # inside the step's time: the device work it waits for is training
        if _save_step_due(self, last_batch=last):  # every save_step trainer steps: checkpoint_N holds N steps
            self.save_checkpoint()
        self.steps.timed(clips=clips, step_s=time.time() - started)
        _send_progress(self, step, batch_n_steps, time.time() - started)
        if self.save_every_s is not None and stepped and time.time() - self._last_save_time >= self.save_every_s:
            self.save_checkpoint()  # the full training state, so --continue loses at most the interval
        if eval_due:
            self.eval_epoch()
            after_evaluation_mode(compat.unwrap_model(self), self)
        # every rank decides together (a collective only when a limit is set): one stopping alone would hang the rest
        if stepped and self.deadline is not None and distributed.any_rank(time.time() >= self.deadline):
            _stop_at_deadline(self)
        return outputs, loss_dict

    def _read_pending(self) -> None:
        self.steps.count_pending(self._count_step)

    def _count_step(self, p: StepValues) -> bool:
        """Divergence check, train sums, health checks and on_step hooks of one read step; True if it diverged."""
        grad_norm = p.values.get(self.stage.grad_norm_key)
        diverged = self.recovery.diverged(p.loss, p.nonfinite)
        if diverged:
            self.recovery.recover(self, p.loss, step=p.step, optimizer_step=p.optimizer_step)
        elif p.values:
            step_loss = self.steps.account(p)
            self.run_log.step(p)
            if self.health is not None and p.stepped:
                self.health.check_optimizer_step(p, step_loss, grad_norm, probe=self.probe, lr=self.current_lr)
        self.steps.close(p, diverged=diverged)
        info = {"step": p.step, "optimizer_step": p.optimizer_step, "loss": p.loss, "lr": self.current_lr()}
        for hook in self.on_step_hooks:
            hook(self, {**info, "grad_norm": grad_norm, "stepped": p.stepped})
        return diverged

    # --- evaluation ---------------------------------------------------------------------------

    def eval_step(self, batch: Any, step: int) -> Any:
        """Coqui's average gives an evaluation's first batch weight 0: each batch counts by its clips here."""
        if isinstance(self.keep_avg_eval, evaluations.BatchMeans):
            self.keep_avg_eval.weight = float(batch_clips(batch) or 1)
        return super().eval_step(batch, step)

    def eval_epoch(self) -> None:
        """Coqui averages an epoch's evaluations into one ``KeepAverage`` and runs nothing after one:
        each starts fresh here (a plain mean), the same weights are never evaluated twice, its record follows."""
        self._read_pending()
        # an epoch whose last step was an evaluation step: the same weights would count twice for the plateau rule
        if self.evaluations.last_step == self.total_steps_done:
            logger.debug("step %d already evaluated; skipping the repeated evaluation", self.total_steps_done)
            return
        self.keep_avg_eval = evaluations.BatchMeans()
        super().eval_epoch()
        self.share_evaluation_inputs()
        self.evaluations.after(self)

    # --- checkpoints and resume (atomic; see utils/training/checkpoints.py) -------------------

    def save_checkpoint(self) -> None:
        """Coqui's ``torch.save`` goes straight to the final path (a kill mid-write leaves a truncated newest
        checkpoint for ``--continue``): atomic here, with the toolkit's state, and never cut by Ctrl-C."""
        if self.args.rank not in (None, 0):
            return
        if self.position.in_step:  # Coqui's save_step save, one step late: train_step saves on time instead
            return
        self._read_pending()  # every step before the save counted in the state it saves
        counts = self.position.counts(self.total_steps_done, self.epochs_done)
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
        """Coqui saves the best model at epoch end: here at every improving evaluation, so nothing to do."""

    @staticmethod
    def init_training(args: Any, coqpit_overrides: list[str], config: Any = None) -> Any:
        """Coqui's ``--continue`` falls back to ``best_model.pth`` by file time when no numbered best model
        exists: here it always resumes from the newest complete numbered checkpoint."""
        if args.continue_path:
            checkpoints.remove_partial_files(args.continue_path)
        config, new_fields = Trainer.init_training(args, coqpit_overrides, config)
        if args.continue_path:
            last = checkpoints.last_checkpoint(args.continue_path)
            if last is not None:
                args.restore_path = new_fields["restore_path"] = str(last)
        return config, new_fields

    def restore_model(self) -> None:
        """Coqui sets ``total_steps_done = step + 1`` and ``reset_lr`` ignores the warmup: exact counters
        and the toolkit's state back (``--continue``), the schedule's LR back (``--restore``)."""
        super().restore_model()
        state, saved_world = checkpoints.resume_state(self.args.restore_path)
        if not self.continue_run:
            for bridge in (s for s in self.scheduler or [] if isinstance(s, LRBridge)):
                bridge.apply()
            return
        if state:
            self._resume_state(state, saved_world)
        logger.info(
            "continuing at trainer step %d, optimizer step %d, epoch %d, LR %.3g",
            self.total_steps_done,
            self.optimizer_steps,
            self.epochs_done,
            self.current_lr(),
        )

    def _resume_state(self, state: dict[str, Any], saved_world: int) -> None:
        self.total_steps_done, self.epochs_done = int(state["steps_done"]), int(state["epochs_done"])
        # the same share of the interrupted epoch is skipped when the GPU count changed
        self.position.resume_batches = distributed.resume_batches(
            int(state.get("epoch_batches_done", 0)), saved_world, distributed.world_size()
        )
        self.evaluations.load_state_dict(state)
        self.steps.load_state_dict(state)
        if self.args.rank in (None, 0):
            evaluations.drop_after(self.output_path, int(state["steps_done"]), self.evaluations.last_step)
        if self.health is not None and state.get("health"):
            self.health.load_state_dict(state["health"])

    def restore_best_loss(self) -> None:
        """Coqui's ``_restore_best_loss`` reads the resumed checkpoint's best loss; the run's best models
        can be newer and lower (a worse model must not replace them)."""
        compat.coqui_restore_best_loss(self)
        better = best_loss_on_disk(self.output_path, self.best_loss) if self.continue_run else None
        if better is not None:
            self.best_loss = better
            logger.info("best eval loss so far (from the run's best models): %.5f", better["eval_loss"])

    # --- fit ----------------------------------------------------------------------------------

    def fit(self) -> None:
        """Coqui's ``fit`` turns every error into ``sys.exit(1)`` and deletes a run folder with no checkpoint:
        here errors propagate (a divergence as DivergenceError), the folder stays, a final checkpoint is written."""
        if self.args.rank in (None, 0) and (
            low := checkpoints.checkpoint_space_warning(compat.unwrap_model(self), self.output_path)
        ):
            logger.warning(low)
        self.recovery.keep_start_weights(compat.unwrap_model(self), self.output_path)
        try:
            compat.run_fit_loop(self)
        except StopTraining as stop:
            logger.info("training stopped: %s", stop)
        except KeyboardInterrupt:
            _save_on_interrupt(self)
            raise
        finally:
            try:
                self.wait_for_writes()  # a Ctrl-C or an error still lets the best model finish
            finally:
                if self.args.rank in (None, 0):
                    self.dashboard_logger.finish()
        self.position.finished = self.stop_reason != "time_limit"  # a time limit stops inside an epoch: exact
        if self.args.rank in (None, 0) and self.save_final_checkpoint:
            self.save_checkpoint()


@dataclass
class _Position:
    """Where Coqui's loop is in the current epoch: exact checkpoint counts and mid-epoch resumes."""

    epoch_step: int = 0  # index of the current batch in this epoch
    batches_done: int = 0
    resume_batches: int = 0  # batches of the interrupted epoch a resume skips
    step_offset: int = 0  # batches skipped at this epoch's start (compat.EpochTail)
    in_step: bool = False  # inside Coqui's train_step (its save_step save is made after the step instead)
    epoch_complete: bool = False
    finished: bool = False

    def counts(self, total_steps_done: int, epochs_done: int) -> dict[str, int]:
        """Exact counts for a checkpoint: ``checkpoint_N.pth`` holds the weights after N trainer steps.

        Saves happen between steps (never inside Coqui's ``train_step``), so Coqui's counter is exact.
        """
        epoch_done = self.finished or self.epoch_complete
        return {
            "steps_done": total_steps_done,
            "epochs_done": epochs_done + (1 if epoch_done else 0),
            "epoch_batches_done": 0 if epoch_done else self.batches_done,
        }


def _save_step_due(trainer: ToolkitTrainer, *, last_batch: bool) -> bool:
    """Coqui saves when ``total_steps_done % save_step == 0`` before counting the step in progress, i.e.
    after steps N+1, 2N+1, ...: here after N, 2N, ... steps are done, the number the file is named by.
    Not after the run's last step: the final checkpoint of that step follows its evaluation."""
    config = trainer.config
    every = int(config.save_step or 0)
    final = last_batch and trainer.save_final_checkpoint and trainer.epochs_done + 1 >= int(config.epochs)
    return bool(config.save_checkpoints and every and trainer.total_steps_done % every == 0 and not final)


def _save_on_interrupt(trainer: ToolkitTrainer) -> None:
    """Ctrl-C: write the full state, then name the exact command that goes on from it."""
    if trainer.args.rank not in (None, 0):
        return
    logger.info("interrupted: saving a checkpoint in %s", trainer.output_path)
    try:
        trainer.save_checkpoint()
    except KeyboardInterrupt:  # a Ctrl-C before the write started: the file was not begun
        pass
    logger.warning(checkpoints.interrupted_message(trainer.output_path))


def _send_progress(trainer: ToolkitTrainer, step: int, batch_n_steps: int, seconds: float) -> None:
    """Send one progress record (step, epoch, loss, LR, the run's ETA) to the on_progress hooks."""
    if not trainer.on_progress_hooks or trainer.args.rank not in (None, 0):
        return
    left = (trainer.config.epochs - trainer.epochs_done - 1) * batch_n_steps + (batch_n_steps - step - 1)
    info = {
        "step": step,
        "steps_in_epoch": batch_n_steps,
        "epoch": trainer.epochs_done + 1,
        "epochs": trainer.config.epochs,
        "total_steps": trainer.total_steps_done,
        "optimizer_step": trainer.optimizer_steps,
        "loss": trainer.steps.last_loss,
        "lr": trainer.current_lr(),
        "eta_s": trainer.steps.eta(seconds, left),
    }
    for hook in trainer.on_progress_hooks:
        hook(info)


def _also(first: Callable[[dict[str, Any]], None] | None, then: Callable[[dict[str, Any]], None]) -> Callable:
    """A health-event callback calling ``first`` (the event bus, if any), then ``then``."""

    def both(record: dict[str, Any]) -> None:
        if first is not None:
            first(record)
        then(record)

    return both


def _plain(value: Any) -> Any:
    """A float for a 0-dim tensor (Coqui's running averages hold tensors while reads are deferred)."""
    return float(value) if torch.is_tensor(value) else value


def _stop_at_deadline(trainer: ToolkitTrainer) -> None:
    """The stage's time limit passed: evaluate (the best model), then stop; ``fit`` writes the checkpoint."""
    trainer.stop_reason = "time_limit"
    logger.info("time limit reached at optimizer step %d: evaluating, then stopping", trainer.optimizer_steps)
    trainer.eval_epoch()  # skipped when this step was just evaluated
    raise StopTraining("time limit")


# --- CUDA out of memory: at most half the micro-batch, the same effective batch -------------------


def _back_off_after_oom(trainer: ToolkitTrainer, step: int) -> None:
    """Halve the micro-batch (utils.training.batch_size) and restart the epoch at the interrupted window."""
    trainer.steps.drop_window()  # the interrupted window is redone
    trainer.position.batches_done = batch_size.back_off_after_oom(trainer, step)  # in batches of the new size
    raise batch_size.MicroBatchHalved(trainer.position.batches_done)
