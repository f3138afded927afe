"""One trial: a FineTune run with the trial's values, its evaluations reported to Optuna.

:class:`EvalReporter` is an event subscriber: each evaluation's eval loss goes to the trial
(``trial.report``); when the pruner says the trial falls behind the others at that evaluation
(``trial.should_prune``), or the eval loss is not finite, it raises :class:`utils.events.StopRun`
and the run ends normally, as early stopping ends one. The run's own output (Coqui's console,
the toolkit's log) goes to ``trials/trial_NNNN.log``; the console shows the search.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from utils.errors import BaseModelError, DataError, LanguageError
from utils.events import Event, EventKind, StopRun
from utils.finetune import FineTune
from utils.search.settings import SearchSettings, StudyFolder

logger = logging.getLogger(__name__)

# Errors that every trial would meet again: the search stops on them instead of failing each trial.
FATAL = (DataError, BaseModelError, LanguageError)


@dataclass
class TrialOutcome:
    """How a trial ended: "complete", "pruned" (also a diverged run) or "failed", and why."""

    state: str
    value: float | None
    reason: str
    run_dir: str | None = None
    evaluations: list[tuple[int, float | None]] = field(default_factory=list)  # (optimizer step, eval loss)
    seconds: float = 0.0


class EvalReporter:
    """Event subscriber: reports each eval loss to ``trial`` and stops a pruned or diverged run."""

    def __init__(self, trial: Any) -> None:
        self.trial = trial
        self.run_dir: str | None = None
        self.evaluations: list[tuple[int, float | None]] = []
        self.divergences = 0
        self.stopped: str | None = None  # why the reporter ended the run
        self.diverged = False

    def __call__(self, event: Event) -> None:
        data = event.data
        if event.kind is EventKind.RUN_DIR:
            self.run_dir = str(data.get("path"))
            self.trial.set_user_attr("run_dir", self.run_dir)
        elif event.kind is EventKind.HEALTH and data.get("event") == "divergence":
            self.divergences += 1
        elif event.kind is EventKind.EVALUATION:
            self._evaluation(data)

    def _evaluation(self, data: Any) -> None:
        loss = data.get("eval_loss")
        n = len(self.evaluations) + 1
        self.evaluations.append((int(data.get("optimizer_step") or 0), loss))
        if loss is None or not math.isfinite(float(loss)):
            self.diverged = True
            self.stopped = f"diverged: eval loss {data.get('eval_loss_nonfinite', loss)} at evaluation {n}"
            raise StopRun(self.stopped)
        self.trial.report(float(loss), step=n)
        if self.trial.should_prune():
            self.stopped = f"pruned at evaluation {n}: eval loss {float(loss):.4f} behind the other trials there"
            raise StopRun(self.stopped)


def run_trial(trial: Any, settings: SearchSettings, folder: StudyFolder, *, keep_weights: bool = False) -> TrialOutcome:
    """Run ``trial``: draw its values, train, classify how it ended.

    Raises:
        DataError, BaseModelError, LanguageError: every trial would fail the same way.
        KeyboardInterrupt: Ctrl-C (the trial's checkpoint is written by the trainer).
    """
    values = settings.space.trial_values(settings.space.suggest(trial))
    trial.set_user_attr("values", {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()})
    folder.trials_dir.mkdir(parents=True, exist_ok=True)
    name = f"trial_{trial.number:04d}"
    config = settings.run_config(values, output_path=folder.trials_dir, run_name=name)
    reporter = EvalReporter(trial)
    started = time.time()
    error: BaseException | None = None
    with trial_output(folder.trials_dir / f"{name}.log"):
        try:
            FineTune(config, subscribers=[reporter]).run()
        except FATAL:
            raise
        except Exception as exc:  # a trial's failure is reported, never the study's end
            error = exc
            logger.debug("trial %d failed", trial.number, exc_info=True)
    outcome = classify(reporter, error)
    outcome.seconds = round(time.time() - started, 2)
    if reporter.run_dir and not keep_weights:
        drop_weights(Path(reporter.run_dir))
    _release_memory()
    return outcome


def classify(reporter: EvalReporter, error: BaseException | None) -> TrialOutcome:
    """The outcome from what the reporter saw and the run's error, if any."""
    evals = list(reporter.evaluations)
    finite = [v for _, v in evals if v is not None and math.isfinite(v)]
    best = min(finite) if finite else None

    def out(state: str, value: float | None, reason: str) -> TrialOutcome:
        return TrialOutcome(state, value, reason, reporter.run_dir, evals)

    if error is not None:
        message = str(error).splitlines()[0][:300] if str(error) else type(error).__name__
        if reporter.divergences or type(error).__name__ == "DivergenceError":
            return out("pruned", best, f"diverged: {message}")
        return out("failed", best, f"{type(error).__name__}: {message}")
    if reporter.stopped:
        return out("pruned", best, reporter.stopped)
    if best is None:
        return out("failed", None, "no evaluation with a finite eval loss")
    return out("complete", best, "")


@contextlib.contextmanager
def trial_output(path: Path) -> Iterator[Path]:
    """The run's stdout and log records into ``path``; the console keeps the search's own lines and errors."""
    root = logging.getLogger()
    with open(path, "a", encoding="utf-8", buffering=1) as fh:
        handler = logging.StreamHandler(fh)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        quiet = _SearchLinesOnly()
        console = list(root.handlers)
        for h in console:
            h.addFilter(quiet)
        level = root.level
        root.setLevel(min(level, logging.INFO))  # the trial log gets INFO lines even when the caller logs less
        root.addHandler(handler)
        try:
            with contextlib.redirect_stdout(fh), _coqui_console_to(fh):
                yield path
        finally:
            root.removeHandler(handler)
            root.setLevel(level)
            for h in console:
                h.removeFilter(quiet)


@contextlib.contextmanager
def _coqui_console_to(stream: Any) -> Iterator[None]:
    """Libraries whose loggers print to the console themselves (Coqui Trainer 0.4's "trainer"
    logger does not propagate, and each Trainer adds a FileHandler for its run folder that is never
    removed; transformers keeps its own handler): for one trial their lines go to ``stream`` (and
    the trial's folder); their handlers are put back afterwards."""
    import importlib

    importlib.import_module("trainer.logger")  # Coqui sets its console handler at import: before the swap
    ours = logging.StreamHandler(stream)
    own = [
        lg
        for lg in logging.Logger.manager.loggerDict.values()
        if isinstance(lg, logging.Logger) and not lg.propagate and lg.handlers
    ]
    saved = {lg.name: list(lg.handlers) for lg in own}
    for lg in own:
        lg.handlers = [ours]
    try:
        yield
    finally:
        for lg in own:
            for h in lg.handlers:
                if h is not ours:
                    h.close()  # e.g. the trial's trainer_0_log.txt
            lg.handlers = saved[lg.name]


class _SearchLinesOnly(logging.Filter):
    """While a trial runs, the console shows the search's lines and errors; the rest is in the trial's log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name.startswith("utils.search") or record.levelno >= logging.ERROR


def drop_weights(run_dir: Path) -> None:
    """Remove a trial's weight files (checkpoints, best models); its metrics and config stay.

    A final run with the best values (``--recipe STUDY_DIR/best.json``) trains the model to keep;
    a trial's weights would take about 1 GB each on XTTS v2 (``--keep-weights`` keeps them).
    """
    for path in run_dir.glob("*.pth"):
        path.unlink(missing_ok=True)


def _release_memory() -> None:
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
