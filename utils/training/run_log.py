"""The numbers a run records, written from one place to ``metrics.jsonl`` and to the dashboard.

``metrics.jsonl`` (one JSON line per evaluation; the toolkit's plots, the web UI, the search and
the tests read it) and the dashboard (TensorBoard, an experiment tracker or none:
:mod:`utils.training.dashboard`) get the same values, fed by the trainer's step values
(:mod:`utils.training.step_values`) and evaluation records (:mod:`utils.training.evaluations`):

- each counted trainer step: ``Step/<key>`` for its losses and gradient norm (the values the next
  evaluation record's train means are made of: the loss with Coqui's division by the gradient
  accumulation undone) and ``Step/lr``, the LR its update used; x is the step's number (trainer
  steps done after it, as ``step`` in metrics.jsonl). The mean of ``Step/loss`` over the steps
  after one evaluation up to the next is that evaluation's ``train_loss``.
- each evaluation: its line in metrics.jsonl, and every number of that line as
  ``Evaluation/<key>`` at its ``step`` (true/false as 1/0): ``train_loss``, ``eval_loss`` and the
  loss components, ``lr``, ``grad_norm``, ``train_samples_per_s``, ``gpu_peak_reserved_gib``, ...
- each health event: its message, action and recommendation as text (``Health/events``) at its step.

Non-finite numbers are left out of the dashboard, as metrics.jsonl writes them as null.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from utils.training.step_values import StepValues


class RunLog:
    """Writes a run's step values, evaluation records and health events (see the module doc).

    Args:
        metrics_path: the run's metrics.jsonl (None: not written, e.g. on data-parallel ranks other than 0).
        dashboard: a Coqui dashboard logger (``add_scalar``, ``add_text``, ``flush``), or None.
    """

    def __init__(self, metrics_path: str | Path | None, dashboard: Any = None) -> None:
        self.metrics_path = Path(metrics_path) if metrics_path is not None else None
        self.dashboard = dashboard

    def step(self, p: StepValues) -> None:
        """One counted trainer step's values (read from the device) and the LR its update used."""
        if self.dashboard is None:
            return
        for key, value in p.values.items():
            if _finite(value):
                self.dashboard.add_scalar(f"Step/{key}", float(value), p.step)
        if p.lr is not None and _finite(p.lr):
            self.dashboard.add_scalar("Step/lr", float(p.lr), p.step)

    def evaluation(self, record: Mapping[str, Any]) -> None:
        """One evaluation record: a line in metrics.jsonl, its numbers on the dashboard."""
        if self.metrics_path is not None:
            with open(self.metrics_path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")
        if self.dashboard is None:
            return
        step = int(record["step"])
        for key, value in record.items():
            if key != "step" and _finite(value):
                self.dashboard.add_scalar(f"Evaluation/{key}", float(value), step)
        self.dashboard.flush()  # an evaluation is worth seeing at once (trackers batch until a flush)

    def health(self, event: Mapping[str, Any]) -> None:
        """One health event (as written to events.jsonl), as text at its step."""
        if self.dashboard is None:
            return
        text = (
            f"**{event.get('event')}** at step {event.get('step')} (optimizer step {event.get('optimizer_step')}): "
            f"{event.get('message')}. Action: {event.get('action')}. Recommendation: {event.get('recommendation')}"
        )
        self.dashboard.add_text("Health/events", text, int(event.get("step") or 0))


def _finite(value: Any) -> bool:
    """A number worth a scalar: int, float or bool, and finite."""
    return isinstance(value, (int, float)) and math.isfinite(value)
