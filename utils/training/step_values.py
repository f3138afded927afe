"""Step accounting: each trainer step's values, read from the device in batches and summed per evaluation.

Coqui Trainer 0.4's ``detach_loss_dict`` reads every loss back with ``.item()`` and ``optimize``
checks the clipped gradient norm with ``isnan``/``isinf`` on the host: several device syncs per
step, each of which drains the GPU's queue. On a GPU (one process) the trainer keeps each step's
values on the device (:class:`StepValues`) and :class:`StepAccounting` reads them all at once
every :func:`default_read_every` optimizer steps (and before each evaluation, checkpoint and epoch
end). The health checks, the train-loss sums and the progress records then see each step's values
in order, a few steps late. The sums and counts since the last evaluation (the train losses of an
evaluation record) and the training throughput between evaluations live here too.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from utils.training.stage import Stage

logger = logging.getLogger(__name__)


def default_read_every() -> int:
    """Optimizer steps between host reads of the step values: 10 on a GPU, every step elsewhere."""
    return 10 if torch.cuda.is_available() else 1


def read_every(world_size: int, *, each_step: bool) -> int:
    """Optimizer steps between host reads for a run: :func:`default_read_every`, but every step under
    several processes (the reads hold collectives every rank makes at the same step) and when
    ``each_step`` hooks act on each step's loss (the LR range test)."""
    return 1 if world_size > 1 or each_step else max(1, int(default_read_every()))


def detached(loss_dict: dict[str, Any], grad_norm: Any = None, optimizer_idx: int | None = None) -> dict[str, Any]:
    """Coqui's ``detach_loss_dict`` without its host reads: the values stay (detached) on the device.

    With several optimizers Coqui names each one's ``loss`` and ``grad_norm`` ``loss_<idx>`` and
    ``grad_norm_<idx>``; so does this.
    """
    out = {k: (v.detach() if torch.is_tensor(v) else v) for k, v in loss_dict.items()}
    suffix = "" if optimizer_idx is None else f"_{optimizer_idx}"
    if suffix and "loss" in out:
        out[f"loss{suffix}"] = out.pop("loss")
    if grad_norm is not None:
        out[f"grad_norm{suffix}"] = grad_norm.detach() if torch.is_tensor(grad_norm) else grad_norm
    return out


@dataclass
class StepValues:
    """One trainer step's values, kept on the device until :meth:`StepAccounting.read`."""

    step: int  # total_steps_done after the step
    optimizer_step: int
    stepped: bool
    accum: int
    values: dict[str, Any]  # Stage.step_keys: tensors (or floats) until read, then floats
    nonfinite: Any  # bool, or a 0-dim tensor (1.0: the optimizer step was skipped on the device)
    loss: float | None = None  # the stage's deciding loss, once read
    lr: float | None = None  # the LR the step's update used (read before the step: a later read may see a newer one)


@dataclass
class Throughput:
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


def batch_clips(batch: Any) -> int:
    """Clips in a collated batch: the first dimension of its first batched tensor (0 when it has none)."""
    values = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, (list, tuple)) else ()
    for value in values:
        if torch.is_tensor(value) and value.dim() > 0:
            return int(value.shape[0])
    return 0


class StepAccounting:
    """The pending step values, the train-loss sums since the last evaluation, and the throughput.

    Args:
        read_every: optimizer steps between host reads (1: every step, as Coqui does).
    """

    def __init__(self, read_every: int = 1) -> None:
        self.read_every = max(1, int(read_every))
        self.stage = Stage(("loss",))  # the trainer sets its model's once Coqui has built the optimizers
        self.pending: list[StepValues] = []
        self.train_sums: dict[str, float] = {}
        self.train_count = 0  # trainer steps counted
        self.train_counts: dict[str, int] = {}  # steps each sum holds (a gradient norm: only the stepped ones)
        self.window: list[float] = []  # micro-batch losses since the last optimizer step
        self.period = Throughput()
        self.last_loss: float | None = None
        self._step_time_ema: float | None = None

    # --- one step ---------------------------------------------------------------------------

    def capture(
        self,
        loss_dict: dict[str, Any] | None,
        *,
        step: int,
        optimizer_step: int,
        stepped: bool,
        accum: int,
        grad_norm: Any = None,
        nonfinite: Any = False,
        lr: float | None = None,
    ) -> None:
        """Keep a step's values (device tensors or floats) until the next :meth:`read`.

        ``grad_norm``: the norm the trainer's own clipping measured on the device (replaces Coqui's).
        ``lr``: the LR the step's update used.
        """
        values = {k: v for k in self.stage.step_keys if (v := (loss_dict or {}).get(k)) is not None}
        if stepped and grad_norm is not None:
            values[self.stage.grad_norm_key] = grad_norm
        self.pending.append(StepValues(step, optimizer_step, stepped, int(accum), values, nonfinite, lr=lr))

    def due(self, *, last_batch: bool, stepped: bool, optimizer_step: int, eval_due: bool, probed: bool) -> bool:
        """Read now: every step without deferral; else at every ``read_every``-th optimizer step, before
        an evaluation, at the epoch's last batch and on steps the update-ratio probe measured."""
        if self.read_every == 1 or probed or last_batch:
            return True
        return stepped and (optimizer_step % self.read_every == 0 or eval_due)

    def read(self) -> list[StepValues]:
        """Every pending step's values on the host, read from the device at once, in step order."""
        pending, self.pending = self.pending, []
        if not pending:
            return []
        tensors = [v for p in pending for v in (*p.values.values(), p.nonfinite) if torch.is_tensor(v)]
        host = iter(torch.stack([t.detach().float().reshape(()) for t in tensors]).tolist() if tensors else [])
        for p in pending:  # the same order as above
            values = {k: (next(host) if torch.is_tensor(v) else float(v)) for k, v in p.values.items()}
            p.nonfinite = bool(next(host)) if torch.is_tensor(p.nonfinite) else bool(p.nonfinite)
            p.values = self.stage.complete(values, p.accum)
            p.loss = p.values.get(self.stage.keys[0])
        return pending

    def count_pending(self, count: Callable[[StepValues], bool]) -> None:
        """:meth:`read`, then ``count`` each step in order; ``count`` returns True for a step that
        diverged, and the steps after it (run on the weights before the recovery) are not counted."""
        pending = self.read()
        for i, p in enumerate(pending):
            if count(p) and i + 1 < len(pending):
                logger.info(
                    "the %d steps after the diverged step %d ran on the weights before the recovery; not counted",
                    len(pending) - i - 1,
                    p.step,
                )
                return

    def account(self, p: StepValues) -> float | None:
        """Add a read step to the train sums; returns the loss of its optimizer step (the mean over
        its accumulated micro-batches) when it stepped."""
        for key, value in p.values.items():
            if math.isfinite(value):
                self.train_sums[key] = self.train_sums.get(key, 0.0) + value
                self.train_counts[key] = self.train_counts.get(key, 0) + 1
        self.train_count += 1
        if p.loss is not None and math.isfinite(p.loss):
            self.window.append(p.loss)
        if not p.stepped:
            return None
        return sum(self.window) / len(self.window) if self.window else None

    def close(self, p: StepValues, *, diverged: bool) -> None:
        """After a step is counted: its loss is the last one; a stepped or diverged step ends the window."""
        if p.stepped or diverged:
            self.drop_window()
        if p.loss is not None:
            self.last_loss = p.loss

    def drop_window(self) -> None:
        """Forget the micro-batch losses of the optimizer step in progress (it stepped, or is redone)."""
        self.window = []

    def loader_waited(self, seconds: float) -> None:
        """Count time blocked waiting for a batch in the throughput."""
        self.period.loader_wait_s += max(0.0, seconds)

    def timed(self, *, clips: int, step_s: float) -> None:
        """Count a finished step's clips and time in the throughput."""
        self.period.samples += clips
        self.period.steps += 1
        self.period.step_s += step_s

    def eta(self, seconds: float, steps_left: int) -> float:
        """Seconds left: ``steps_left`` at the smoothed step time (``seconds``: this step's)."""
        a = 0.1
        ema = self._step_time_ema
        self._step_time_ema = seconds if ema is None else a * seconds + (1 - a) * ema
        return steps_left * self._step_time_ema

    # --- per evaluation ---------------------------------------------------------------------

    @property
    def sum_keys(self) -> tuple[str, ...]:
        """Every key a train sum can have (the same on every rank)."""
        return self.stage.step_keys

    def take_train_means(self) -> tuple[dict[str, float], int]:
        """The mean of each summed value over the steps that gave it since the last evaluation, and the
        steps counted; resets both. A gradient norm is the mean over optimizer steps, not micro-batches."""
        n = self.train_count
        counts = {k: self.train_counts.get(k, n) for k in self.train_sums}
        means = {k: v / counts[k] for k, v in self.train_sums.items() if counts[k]}
        self.train_sums, self.train_count, self.train_counts = {}, 0, {}
        return means, n

    def take_throughput(self) -> dict[str, Any]:
        """The throughput fields of an evaluation record; starts the next period."""
        record, self.period = self.period.as_record(), Throughput()
        return record

    def replace_train_sums(self, sums: dict[str, float], count: int, counts: dict[str, int] | None = None) -> None:
        """Set the sums, the steps counted and the steps each sum holds (default: all of them); data
        parallel sets their totals over the ranks before an evaluation record."""
        self.train_sums, self.train_count = {k: float(v) for k, v in sums.items()}, int(count)
        held = counts if counts is not None else dict.fromkeys(self.train_sums, self.train_count)
        self.train_counts = {k: int(v) for k, v in held.items()}

    # --- checkpoints ------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The running sums, so the first evaluation after a resume reports its whole period's train loss."""
        return {
            "train_sums": dict(self.train_sums),
            "train_count": self.train_count,
            "train_counts": dict(self.train_counts),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.replace_train_sums(
            state.get("train_sums") or {}, int(state.get("train_count") or 0), state.get("train_counts")
        )
