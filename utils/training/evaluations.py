"""What follows each evaluation: its record in ``metrics.jsonl`` and the decisions taken on it.

Coqui Trainer 0.4 runs nothing after an evaluation (no hook could step ReduceLROnPlateau with
the eval loss) and writes TensorBoard scalars only. :class:`Evaluations` (held by
:class:`~utils.training.trainer.ToolkitTrainer`) turns each evaluation into one record: the
stage's train and eval losses, the LR bridges' plateau rule, throughput, the stage's own columns
(:func:`~utils.training.stage.evaluation_fields`); then the health
monitor's evaluation checks, early stopping, the best model, one JSON line in ``metrics.jsonl``
and the same numbers on the dashboard (rank 0, :mod:`utils.training.run_log`; the toolkit's
plots, the web UI, the search and the tests read metrics.jsonl) and the ``on_evaluation`` hooks.

An evaluation's losses are the mean over its batches, each batch weighted by its clips
(:class:`BatchMeans`): Coqui's ``KeepAverage`` gives its first value weight 0, so with several
eval batches the first was left out of the eval loss that drives the plateau rule, early
stopping and the best model.

A ``--continue`` can resume from a checkpoint older than records already written (Coqui's
numbered checkpoint is written inside the epoch's last step, before the epoch-end evaluation):
:func:`drop_after` removes what the resumed run will write again, in ``metrics.jsonl`` and in the
health monitor's ``events.jsonl``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from trainer.generic_utils import KeepAverage

from utils.training import compat
from utils.training.health import EarlyStopping, HealthMonitor, StopTraining
from utils.training.lr_schedule import LRBridge
from utils.training.run_log import RunLog
from utils.training.stage import evaluation_fields

logger = logging.getLogger(__name__)


def evaluation_record(
    *,
    position: Mapping[str, Any],
    lr: float,
    lr_event: Mapping[str, Any],
    losses: Mapping[str, Any],
    train_count: int,
    elapsed_s: float,
    throughput: Mapping[str, Any],
) -> dict[str, Any]:
    """One evaluation's record; non-finite numbers become None (JSON has no NaN).

    Args:
        position: ``step``, ``optimizer_step``, ``epoch``.
        lr / lr_event: the LR now and what the LR bridge did with this evaluation.
        losses: the stage's loss fields (``train_loss``, ``eval_loss``, ``train_<key>``, ...).
        train_count: trainer steps the train losses average.
        throughput: the training-speed fields since the previous evaluation.
    """
    record: dict[str, Any] = {
        **position,
        "lr": lr,
        "lr_before": lr_event.get("lr_before"),
        "lr_reduced": lr_event.get("reduced", False),
        "train_loss": losses.get("train_loss"),
        "eval_loss": losses.get("eval_loss"),
        "best_eval_loss": lr_event.get("best_eval_loss"),
        "evals_without_improvement": lr_event.get("num_bad_evals"),
        "train_steps_averaged": train_count,
        "elapsed_s": round(elapsed_s, 2),
        **losses,
        **throughput,
    }
    eval_loss = record["eval_loss"]
    record = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
    if eval_loss is not None and not math.isfinite(eval_loss):
        record["eval_loss_nonfinite"] = str(eval_loss)
    return record


class Evaluations:
    """Every evaluation's record (``records``) and what is decided on it.

    Args:
        health: the health monitor (its evaluation checks; None: none).
        early_stopping: stops training when the eval loss stops improving (None: off).
        hooks: ``fn(trainer, record)`` callables run after each record is written.
    """

    def __init__(
        self,
        *,
        health: HealthMonitor | None,
        early_stopping: EarlyStopping | None,
        hooks: list[Callable[[Any, dict[str, Any]], None]],
    ) -> None:
        self.health, self.early_stopping, self.hooks = health, early_stopping, hooks
        self.records: list[dict[str, Any]] = []
        self.log: RunLog | None = None  # metrics.jsonl and the dashboard (set once the run folder exists)
        self.last_step: int | None = None  # total_steps_done at the last evaluation

    def after(self, trainer: Any) -> None:
        """Record the evaluation that just ran in ``trainer`` and act on it.

        Raises:
            StopTraining: early stopping (``trainer.stop_reason`` is then "early_stopping").
        """
        stage = trainer.stage
        keep = trainer.keep_avg_eval
        evals = stage.eval_values(keep.avg_values if keep is not None else None)
        eval_loss = evals.get(stage.keys[0])
        # every LR bridge hears the evaluation; the LR optimizer's is the one recorded
        bridges = {i: s for i, s in enumerate(trainer.scheduler or []) if isinstance(s, LRBridge)}
        events = {i: bridge.on_evaluation(eval_loss) for i, bridge in bridges.items()}
        train, count = trainer.steps.take_train_means()
        self.last_step = trainer.total_steps_done
        record = evaluation_record(
            position={"step": self.last_step, "optimizer_step": trainer.optimizer_steps, "epoch": trainer.epochs_done},
            lr=trainer.current_lr(),
            lr_event=events.get(stage.lr_optimizer, {}),
            losses=stage.record(train, evals),
            train_count=count,
            elapsed_s=time.time() - trainer.started_at,
            throughput=trainer.steps.take_throughput(),
        )
        record.update(evaluation_fields(compat.unwrap_model(trainer), trainer))  # the stage's own columns
        if self.health is not None:
            bridge = bridges.get(stage.lr_optimizer)
            self.health.check_evaluation(record, plateau_rule=bool(bridge and bridge.spec.name == "ReduceLROnPlateau"))
            record["health_events"] = self.health.take_pending()
        stop = self.early_stopping is not None and self.early_stopping.update(eval_loss)
        if self.early_stopping is not None:
            record["early_stop_bad_evals"] = self.early_stopping.bad_evals
        self._keep(trainer, record, eval_loss)
        if stop:
            self._stop(trainer)

    def _keep(self, trainer: Any, record: dict[str, Any], eval_loss: float | None) -> None:
        """The best model and metrics.jsonl (rank 0), the log line, the hooks."""
        rank0 = trainer.args.rank in (None, 0)
        if rank0:
            counts = trainer.position.counts(trainer.total_steps_done, trainer.epochs_done)
            trainer.best_model.save_if_improved(trainer, eval_loss, record["train_loss"], counts)
        self.records.append(record)
        if rank0 and self.log is not None:
            self.log.evaluation(record)
        logger.info(
            "evaluation at step %d (optimizer step %d): eval loss %s, train loss %s, LR %.3g",
            record["step"],
            record["optimizer_step"],
            _fmt(eval_loss),
            _fmt(record["train_loss"]),
            record["lr"],
        )
        for hook in self.hooks:
            hook(trainer, record)

    def _stop(self, trainer: Any) -> None:
        assert self.early_stopping is not None
        trainer.stop_reason = "early_stopping"
        logger.info(
            "early stopping: eval loss has not improved on %.5f by %g for %d evaluations; best model: %s",
            self.early_stopping.best,
            self.early_stopping.min_delta,
            self.early_stopping.bad_evals,
            Path(trainer.output_path) / "best_model.pth",
        )
        raise StopTraining("early stopping")

    def state_dict(self) -> dict[str, Any]:
        return {
            "early_stopping": self.early_stopping.state_dict() if self.early_stopping else None,
            "last_eval_step": self.last_step,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.last_step = state.get("last_eval_step")
        if self.early_stopping is not None and state.get("early_stopping"):
            self.early_stopping.load_state_dict(state["early_stopping"])


class BatchMeans(KeepAverage):
    """Coqui's ``KeepAverage`` as the mean over batches, each weighted by ``weight`` (its clips).

    Coqui's first value starts with weight 0 (``add_value(init_iter=0)``) and every later one with
    weight 1, so the mean of three batches with losses 1, 2 and 6 is 4 there and 3 here. The
    trainer sets ``weight`` before each evaluation batch; Coqui's code updates the values as usual.
    """

    def __init__(self) -> None:
        super().__init__()
        self.weight = 1.0
        self.weights: dict[str, float] = {}

    def add_value(self, name: str, init_val: float = 0, init_iter: int = 0) -> None:
        super().add_value(name, init_val, init_iter)
        self.weights[name] = float(init_iter)

    def update_value(self, name: str, value: float, *, weighted_avg: bool = False) -> None:
        if weighted_avg:  # Coqui's moving average (the Trainer does not ask for it), as Coqui computes it
            super().update_value(name, value, weighted_avg=True)
            return
        before, w = self.weights.get(name, 0.0), float(self.weight)
        total = before + w
        mean = self.avg_values.get(name, 0.0) if before else 0.0
        self.avg_values[name] = mean + (value - mean) * (w / total) if total else value
        self.weights[name] = total
        self.iters[name] = self.iters.get(name, 0) + 1


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.5f}"


def drop_after(run_dir: str | Path, steps_done: int, last_eval_step: int | None) -> None:
    """Remove the metrics and health events a run resumed after ``steps_done`` trainer steps redoes.

    Evaluation records after ``last_eval_step`` (the checkpoint's last evaluation) and events from
    step ``steps_done`` on (except those of an evaluation at exactly that step) are removed.
    """
    last = -1 if last_eval_step is None else int(last_eval_step)
    keeps: tuple[tuple[str, Callable[[dict[str, Any]], bool]], ...] = (
        ("metrics.jsonl", lambda r: int(r.get("step", 0)) <= last),
        ("events.jsonl", lambda r: int(r.get("step", 0)) < steps_done or (int(r.get("step", 0)) == steps_done == last)),
    )
    for name, keep in keeps:
        path = Path(run_dir) / name
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
