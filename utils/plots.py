"""PNG plots: the helpers every stage draws with, and the training plots of a run folder.

:func:`pyplot` (matplotlib with the Agg backend: no display needed) and :func:`save_png` (written
to a temporary name and renamed, so a viewer never sees half a PNG) are what training, evaluation
and the hyperparameter search draw with. The plots of training itself: the curves refreshed at
each evaluation (``training_curves.png``, next to Coqui's TensorBoard logs), the LR schedule
preview and the LR range test.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from utils.runs import read_jsonl

logger = logging.getLogger(__name__)

CURVES_NAME = "training_curves.png"


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (imported on first use: matplotlib is slow to import)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def save_png(fig: Any, path: str | os.PathLike[str]) -> Path:
    """Write ``fig`` as a PNG at ``path`` atomically (a temporary name, then a rename); returns the path."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    fig.savefig(tmp, dpi=90, format="png")
    os.replace(tmp, path)
    return path


def plot_training(run_dir: str | os.PathLike[str]) -> Path | None:
    """Write ``training_curves.png``: losses, loss components, LR and gradient norm per evaluation.

    Health events (events.jsonl) are marked as vertical lines. Returns the path, or None when
    metrics.jsonl has no records yet.
    """
    run_dir = Path(run_dir)
    records = read_jsonl(run_dir / "metrics.jsonl")
    if not records:
        return None
    events = read_jsonl(run_dir / "events.jsonl")
    plt = pyplot()
    steps = [r["optimizer_step"] for r in records]

    def series(key: str) -> list[float]:
        return [r.get(key) if r.get(key) is not None else float("nan") for r in records]

    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    ax = axes[0][0]
    ax.plot(steps, series("train_loss"), "o-", label="train loss", ms=3)
    ax.plot(steps, series("eval_loss"), "o-", label="eval loss", ms=3)
    ax.set_title("loss")
    ax = axes[0][1]
    for key in ("loss_text_ce", "loss_mel_ce"):
        ax.plot(steps, series(f"train_{key}"), "-", label=f"train {key}")
        ax.plot(steps, series(f"eval_{key}"), "--", label=f"eval {key}")
    ax.set_yscale("log")  # text CE is ~100x smaller than mel CE
    ax.set_title("loss components (log scale)")
    ax = axes[1][0]
    ax.plot(steps, series("lr"), "o-", ms=3)
    ax.set_yscale("log")
    ax.set_title("learning rate")
    ax = axes[1][1]
    ax.plot(steps, series("grad_norm"), "o-", ms=3)
    ax.set_title("gradient norm (mean before clipping)")
    for ax in axes.flat:
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
        for ev in events:
            ax.axvline(ev.get("optimizer_step", 0), color="red", alpha=0.25, lw=1)
    for ax in (axes[0][0], axes[0][1]):
        ax.legend(fontsize=8)
    if events:
        names = sorted({ev["event"] for ev in events})
        fig.suptitle(f"red lines: health events ({', '.join(names)}; see events.jsonl)", fontsize=9)
    fig.tight_layout()
    path = save_png(fig, run_dir / CURVES_NAME)
    plt.close(fig)
    return path


def plot_schedule(steps: Sequence[int], lrs: Sequence[float], path: str | os.PathLike[str], *, title: str) -> Path:
    """Write the LR over the planned optimizer steps (``--preview-schedule``)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.plot(list(steps), list(lrs))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("learning rate")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out = save_png(fig, Path(path))
    plt.close(fig)
    return out


def plot_lr_find(
    lrs: Sequence[float],
    losses: Sequence[float],
    smoothed: Sequence[float],
    suggestion: float | None,
    path: str | os.PathLike[str],
) -> Path:
    """Write loss vs LR of an LR range test, with the suggested LR marked."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.plot(list(lrs), list(losses), ".", alpha=0.4, label="loss")
    ax.plot(list(lrs), list(smoothed), "-", label="smoothed loss")
    if suggestion:
        ax.axvline(suggestion, color="red", label=f"suggested LR {suggestion:.2g}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("train loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out = save_png(fig, Path(path))
    plt.close(fig)
    return out
