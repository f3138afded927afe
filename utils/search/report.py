"""What a study leaves behind: best.json (a recipe layer), summary.md / summary.csv, the plots.

best.json holds every value the best trial ran with that a run can set, each with the source
``search STUDY trial K, eval loss X``; ``utils/gpt_train.py --recipe STUDY_DIR/best.json`` trains
with it and ``--dry-run`` shows that source. Epochs are measured, not drawn: the epoch (in epochs
of the full training data) of the best trial's best evaluation; a best trial still improving at
its last evaluation measures nothing, and best.json then leaves the epochs to the table or the
command line (its early-stopping patience ends the run when it stops improving).
"""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from utils.finetune.recipe_file import write_recipe_file
from utils.fs import replace_atomically
from utils.search import storage as st
from utils.search.settings import SearchSettings, StudyFolder
from utils.search.space import SearchSpace

logger = logging.getLogger(__name__)

BEST = "best.json"
EDGE_SHARE = 0.05  # a best value this close to an end of its range (share of the range; log scale for LR) is noted


@dataclass
class TrialRow:
    """One trial as the reports show it."""

    number: int
    state: str  # complete, pruned, failed, interrupted, running, waiting
    value: float | None  # the best finite eval loss it reached
    reason: str
    values: dict[str, Any]
    evaluations: list[float | None]  # eval loss per evaluation, in order
    eval_steps: list[int]  # optimizer step of each (empty when unknown)
    seconds: float | None
    run_dir: str | None
    table: bool  # the table's own values


@dataclass
class SearchOutcome:
    """The study's result: the best trial (None when none completed), every trial, notes."""

    folder: Path
    best: TrialRow | None
    best_path: Path | None
    rows: list[TrialRow]
    counts: st.Counts
    notes: list[str] = field(default_factory=list)
    plots: list[Path] = field(default_factory=list)


def trial_rows(study: Any) -> list[TrialRow]:
    """Every trial of ``study`` with its state, reason, values and eval losses."""
    from optuna.trial import TrialState

    names = {
        TrialState.COMPLETE: "complete",
        TrialState.PRUNED: "pruned",
        TrialState.FAIL: "failed",
        TrialState.RUNNING: "running",
    }
    reasons = study.user_attrs
    rows = []
    for t in study.get_trials(deepcopy=False):
        a = t.user_attrs
        reason = str(a.get("reason") or reasons.get(f"reason_{t.number}") or "")
        state = names.get(t.state, "waiting")
        if state == "failed" and reason.startswith(st.INTERRUPTED):
            state = "interrupted"
        if a.get("evaluations"):
            steps = [int(s) for s, _ in a["evaluations"]]
            losses = [None if v is None else float(v) for _, v in a["evaluations"]]
        else:  # a trial that did not end on its own: what it reported
            steps, losses = [], [float(t.intermediate_values[k]) for k in sorted(t.intermediate_values)]
        finite = [v for v in losses if v is not None and math.isfinite(v)]
        value = float(t.value) if t.value is not None and t.state == TrialState.COMPLETE else None
        rows.append(
            TrialRow(
                number=t.number,
                state=state,
                value=value if value is not None else (min(finite) if finite else None),
                reason=reason,
                values=dict(a.get("values") or t.params),
                evaluations=losses,
                eval_steps=steps,
                seconds=a.get("seconds"),
                run_dir=a.get("run_dir"),
                table="table_row" in a,
            )
        )
    return rows


def write_reports(study: Any, settings: SearchSettings, folder: StudyFolder) -> SearchOutcome:
    """best.json (when a trial completed), summary.md, summary.csv and the PNGs in the study folder."""
    rows = trial_rows(study)
    complete = [r for r in rows if r.state == "complete" and r.value is not None]
    best = min(complete, key=lambda r: r.value) if complete else None  # type: ignore[arg-type, return-value]
    outcome = SearchOutcome(folder.root, best, None, rows, st.count_trials(study))
    if best is not None:
        outcome.notes += edge_notes(best, settings.space)
        epochs, note = measured_epochs(best, settings)
        outcome.notes.append(note)
        outcome.best_path = write_best(folder.root / BEST, best, settings, rows, epochs, outcome.notes)
    for note in outcome.notes:
        logger.info("%s", note)
    write_summary(folder.root, settings, outcome)
    outcome.plots = _plots(study, settings, folder.root, rows)
    return outcome


def measured_epochs(best: TrialRow, settings: SearchSettings) -> tuple[int | None, str]:
    """The epochs (of the full training data) at the best trial's best evaluation, and a note."""
    losses = best.evaluations
    finite = [(i, v) for i, v in enumerate(losses) if v is not None and math.isfinite(v)]
    if not finite or not best.eval_steps:
        return None, "epochs not measured (no evaluation steps recorded): leave them to the table or --epochs"
    i_best = min(finite, key=lambda iv: iv[1])[0]
    if i_best == len(losses) - 1:
        return None, (
            f"the best trial still improved at its last evaluation: the epochs are left to the table or --epochs "
            f"(a budget of {settings.budget_epochs} epochs was too short to measure them; early stopping ends the "
            "final run when it stops improving)"
        )
    per_epoch = settings.planned_steps / settings.budget_epochs  # optimizer steps of one trial epoch
    epochs = max(1, math.ceil(best.eval_steps[i_best] * settings.subset / per_epoch - 1e-9))
    return epochs, f"epochs {epochs}: the best trial's best evaluation (optimizer step {best.eval_steps[i_best]})"


def edge_notes(best: TrialRow, space: SearchSpace) -> list[str]:
    """Notes for scale parameters (searched on a log scale: LR, weight decay, ...) whose best value
    sits at an end of its range: the optimum may lie beyond it. The plateau settings and warmup are
    left out: in a short trial they often never act, and their end of the range then means nothing."""
    notes = []
    for name, p in space.params.items():
        value = best.values.get(name)
        if value is None or not p.log:
            continue
        lo, hi, v = math.log(p.low), math.log(p.high), math.log(value)
        for end, at in (("bottom", (v - lo) / (hi - lo) <= EDGE_SHARE), ("top", (hi - v) / (hi - lo) <= EDGE_SHARE)):
            if at:
                notes.append(
                    f"{name} {value:.3g} is at the {end} of its range ({p.low:g}..{p.high:g}): the best value may "
                    f"lie beyond it; widen it with --range {name}=LO:HI in a new study"
                )
    return notes


def write_best(
    path: Path, best: TrialRow, settings: SearchSettings, rows: list[TrialRow], epochs: int | None, notes: list[str]
) -> Path:
    """best.json: the best trial's values, each with the study as its source."""
    values = {k: v for k, v in best.values.items() if v is not None}
    if epochs is not None:
        values["epochs"] = epochs
    source = f"search {settings.name} trial {best.number}, eval loss {best.value:.4f}"
    table = next((r for r in rows if r.table and r.value is not None), None)
    dataset = Path(settings.train_csv).parent
    about = {
        "study": settings.name,
        "trial": best.number,
        "eval_loss": best.value,
        "table_trial": {"trial": table.number, "state": table.state, "eval_loss": table.value} if table else None,
        "table_row": settings.table_row,
        "table_lr": settings.row_lr,
        "dataset_hours": settings.dataset_hours,
        "budget_epochs": settings.budget_epochs,
        "subset": settings.subset,
        "notes": notes,
        "identity": dict(settings.identity),
        "train": f"python utils/gpt_train.py --recipe {path} --dataset {dataset} --base-model "
        f"{settings.base_model} --language {settings.language}",
    }
    write_recipe_file(path, values, dict.fromkeys(values, source), about)
    logger.info("best trial %d (eval loss %.4f): %s", best.number, best.value, path)
    return path


def _columns(settings: SearchSettings) -> list[str]:
    return [*settings.space.params, "early_stop_patience"]


def write_summary(root: Path, settings: SearchSettings, outcome: SearchOutcome) -> None:
    """summary.csv (one row per trial) and summary.md (the same as a table, with the result)."""
    cols = _columns(settings)
    header = ["trial", "state", "best_eval_loss", *cols, "evaluations", "seconds", "reason", "run_dir"]

    def write_csv(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(header)
            for r in outcome.rows:
                w.writerow(
                    [r.number, r.state, _raw(r.value), *(_raw(r.values.get(c)) for c in cols), len(r.evaluations)]
                    + [_raw(r.seconds), r.reason, r.run_dir or ""]
                )

    # whole-file writes: several workers of one study may write the reports at the same time
    replace_atomically(root / "summary.csv", write_csv)
    c = outcome.counts
    seconds = sum(r.seconds or 0.0 for r in outcome.rows)
    lines = [
        f"# Search {settings.name}",
        "",
        f"- data: {settings.train_csv} ({settings.dataset_hours:.3g} h, {settings.table_row}); trials train on "
        f"{settings.subset:g} of the rows for up to {settings.budget_epochs} epochs; pruner {settings.pruner}",
        f"- trials: {c.done} ({c.complete} complete, {c.pruned} pruned or diverged, {c.failed} failed"
        + (f"; {c.interrupted} interrupted and run again" if c.interrupted else "")
        + f"), {seconds:.0f} s of trials",
    ]
    best = outcome.best
    if best is not None:
        lines.append(f"- best: trial {best.number}, eval loss {best.value:.4f} -> {outcome.best_path}")
        table = next((r for r in outcome.rows if r.table), None)
        if table is not None:
            lines.append(
                f"- the table's own values: trial {table.number}, {table.state}, eval loss {_num(table.value)}"
            )
    else:
        lines.append("- no trial completed with a finite eval loss: no best.json (see the reasons below)")
    lines += [f"- {note}" for note in outcome.notes]
    lines += ["", "| " + " | ".join(header[:-1]) + " |", "|" + "---|" * (len(header) - 1)]
    for r in outcome.rows:
        mark = " (best)" if best is not None and r.number == best.number else ""
        cells = [f"{r.number}{mark}", r.state, _num(r.value), *(_num(r.values.get(col)) for col in cols)]
        cells += [str(len(r.evaluations)), _num(r.seconds), r.reason.replace("|", "/")]
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    replace_atomically(root / "summary.md", lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _raw(value: Any) -> str:
    """A CSV cell: full precision (the markdown table rounds)."""
    return "" if value is None else str(value)


def _num(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _plots(study: Any, settings: SearchSettings, root: Path, rows: list[TrialRow]) -> list[Path]:
    from utils.search import plots

    made = []
    for name, draw in (
        ("history.png", lambda p: plots.plot_history(rows, p)),
        ("eval_curves.png", lambda p: plots.plot_curves(rows, p)),
        ("lr_vs_eval_loss.png", lambda p: plots.plot_lr(rows, p, settings)),
        ("importance.png", lambda p: plots.plot_importance(study, p)),
    ):
        try:
            made.append(draw(root / name))
        except (OSError, ValueError, RuntimeError) as exc:  # a plot must not hide the study's result
            logger.warning("could not draw %s: %s", name, exc)
    return made
