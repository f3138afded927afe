"""The study's PNGs: optimisation history, every trial's eval-loss curve, LR against the best eval
loss, and parameter importance (``optuna.importance``, fANOVA over the completed trials)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# The toolkit's plotting helpers (Agg back end; whole-file writes)
from utils.plots import pyplot, save_png

STATE_STYLE = {  # marker, colour
    "complete": ("o", "tab:blue"),
    "pruned": ("x", "tab:orange"),
    "failed": ("s", "tab:red"),
    "interrupted": ("s", "tab:gray"),
    "running": ("s", "tab:gray"),
    "waiting": ("s", "tab:gray"),
}


def plot_history(rows: Sequence[Any], path: Path) -> Path:
    """Each trial's best eval loss by trial number, by state, with the best so far as a line."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for state, (marker, colour) in STATE_STYLE.items():
        pts = [(r.number, r.value) for r in rows if r.state == state and _finite(r.value)]
        if pts:
            ax.plot(*zip(*pts), marker, color=colour, linestyle="none", label=state)
    best, line = math.inf, []
    for r in sorted(rows, key=lambda r: r.number):
        if r.state == "complete" and _finite(r.value):
            best = min(best, r.value)
        if math.isfinite(best):
            line.append((r.number, best))
    if line:
        ax.step(*zip(*line), where="post", color="black", alpha=0.6, label="best so far (complete)")
    _mark_without_value(ax, rows)
    ax.set_xlabel("trial")
    _whole_numbers(ax)
    ax.set_ylabel("best eval loss of the trial")
    ax.set_title("optimisation history (pruned: the best loss before the pruner stopped it)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _finish(plt, fig, path)


def plot_curves(rows: Sequence[Any], path: Path) -> Path:
    """Every trial's eval loss per evaluation; pruned dashed, the best trial thick."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    complete = [r for r in rows if r.state == "complete" and _finite(r.value)]
    best = min(complete, key=lambda r: r.value).number if complete else None
    for r in rows:
        pts = [(i, v) for i, v in enumerate(r.evaluations, 1) if _finite(v)]
        if not pts:
            continue
        style = "--" if r.state != "complete" else "-"
        width = 2.5 if r.number == best else 1.0
        colour = STATE_STYLE.get(r.state, ("", None))[1] if r.number != best else "black"
        ax.plot(*zip(*pts), style, marker=".", linewidth=width, color=colour, alpha=0.8)
        ax.annotate(str(r.number), pts[-1], fontsize=7, xytext=(3, 0), textcoords="offset points")
    ax.set_xlabel("evaluation")
    _whole_numbers(ax)
    ax.set_ylabel("eval loss")
    ax.set_title("eval loss of each trial (numbers: trials; dashed: pruned or failed; thick: best)", fontsize=9)
    ax.grid(alpha=0.3)
    return _finish(plt, fig, path)


def plot_lr(rows: Sequence[Any], path: Path, settings: Any) -> Path:
    """The LR of each trial against its best eval loss (log LR), the table's LR marked."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for state, (marker, colour) in STATE_STYLE.items():
        pts = [(float(r.values["lr"]), r.value) for r in rows if r.state == state and "lr" in r.values]
        pts = [(x, y) for x, y in pts if _finite(y)]
        if pts:
            ax.plot(*zip(*pts), marker, color=colour, linestyle="none", label=state)
    ax.axvline(settings.row_lr, color="green", alpha=0.6, label=f"table row's LR {settings.row_lr:.3g}")
    lr = settings.space.params.get("lr")
    if lr is not None:
        ax.axvspan(lr.low, lr.high, color="green", alpha=0.05, label="searched range")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("best eval loss of the trial")
    ax.set_title("LR against the best eval loss (diverged or failed trials have no point)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _finish(plt, fig, path)


def plot_importance(study: Any, path: Path) -> Path:
    """Parameter importance over the completed trials (a note instead when there are too few)."""
    import optuna

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    try:
        importance = optuna.importance.get_param_importances(study)
    except (ValueError, RuntimeError) as exc:  # fewer than two completed trials, or nothing varied
        importance, why = {}, str(exc).splitlines()[0]
    else:
        why = "no parameter varied between the completed trials"
    if importance:
        names = list(importance)[::-1]
        ax.barh(names, [importance[n] for n in names], color="tab:blue")
        ax.set_xlabel("importance (fANOVA, share of the eval loss's variance; sums to 1)")
        complete = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
        rough = " (few trials: a rough guide)" if complete < 10 else ""
        ax.set_title(f"parameter importance over {complete} completed trials{rough}", fontsize=9)
    else:
        ax.axis("off")
        ax.text(0.5, 0.5, f"parameter importance needs at least two completed trials\n({why})", ha="center")
    return _finish(plt, fig, path)


def _mark_without_value(ax: Any, rows: Sequence[Any]) -> None:
    """Trials with no finite eval loss (diverged, failed early) as marks on the top edge."""
    none = [r.number for r in rows if not _finite(r.value) and r.state not in ("running", "waiting")]
    if none:
        ax.plot(none, [1.0] * len(none), "v", color="tab:red", transform=ax.get_xaxis_transform(), clip_on=False)
        ax.plot([], [], "v", color="tab:red", label="no finite eval loss")


def _whole_numbers(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _finish(plt: Any, fig: Any, path: Path) -> Path:
    fig.tight_layout()
    out = save_png(fig, Path(path))
    plt.close(fig)
    return out


def _finite(value: Any) -> bool:
    return value is not None and math.isfinite(float(value))
