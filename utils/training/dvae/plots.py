"""The DVAE stage's curves as one PNG (``dvae_curves.png`` in the stage folder).

Four panels over optimizer steps, from the stage's metrics.jsonl: train and eval loss; the loss
parts (reconstruction, commitment; log scale); the held-out mel MSE against the base DVAE's; the
held-out codebook perplexity with the share of changed codes.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

CURVES_NAME = "dvae_curves.png"


def _series(rows: list[dict[str, Any]], key: str) -> list[float]:
    return [float(r[key]) if r.get(key) is not None else math.nan for r in rows]


def plot_dvae_curves(rows: list[dict[str, Any]], path: str | os.PathLike[str]) -> Path | None:
    """Write the curves of ``rows`` (metrics.jsonl rows) to ``path``; None when nothing was evaluated.

    The base DVAE's numbers are drawn at step 0; the exported weights' step is marked.
    """
    evals = [r for r in rows if r.get("phase") == "evaluation"]
    if not evals:
        return None
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    base = [{**r, "heldout_changed_share": 0.0} for r in rows if r.get("phase") == "base"][:1]
    steps = [r["optimizer_step"] for r in evals]
    with_base = base + evals
    steps0 = [r["optimizer_step"] for r in with_base]
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    ax = axes[0][0]
    ax.plot(steps, _series(evals, "train_loss"), "o-", ms=3, label="train loss")
    ax.plot(steps0, _series(with_base, "eval_loss"), "o-", ms=3, label="eval loss (held-out windows; step 0: base)")
    ax.set_title("loss = reconstruction + commitment")
    ax = axes[0][1]
    for part in ("recon_loss", "commitment_loss"):
        ax.plot(steps, _series(evals, f"train_{part}"), "-", label=f"train {part}")
        ax.plot(steps0, _series(with_base, f"eval_{part}"), "--", label=f"eval {part}")
    ax.set_yscale("log")
    ax.set_title("loss parts (log scale)")
    ax = axes[1][0]
    ax.plot(steps0, _series(with_base, "heldout_mel_mse"), "o-", ms=3, label="fine-tuned DVAE (step 0: base)")
    ax.set_title("held-out mel MSE (whole clips)")
    ax = axes[1][1]
    ax.plot(steps0, _series(with_base, "heldout_perplexity"), "o-", ms=3, color="C0", label="code perplexity")
    ax.set_ylabel("perplexity")
    twin = ax.twinx()
    twin.plot(steps0, _series(with_base, "heldout_changed_share"), "s-", ms=3, color="C3", label="changed codes")
    twin.set_ylabel("share of codes changed vs base")
    twin.set_ylim(0, 1)
    twin.legend(loc="upper right", fontsize=8)
    ax.set_title("held-out codebook use")
    exported = next((r for r in rows if r.get("phase") == "exported"), None)
    for a in axes.flat:
        if exported is not None:
            a.axvline(_optimizer_step(evals, exported["step"]), color="gray", ls=":", label="exported to dvae.pth")
        a.set_xlabel("optimizer step")
        a.grid(alpha=0.3)
        a.legend(loc="upper left" if a is axes[1][1] else "best", fontsize=8)
    fig.tight_layout()
    return _save(fig, plt, Path(path))


def _optimizer_step(evals: list[dict[str, Any]], step: int) -> float:
    """The optimizer step of the evaluation at trainer step ``step`` (the exported weights')."""
    return next((r["optimizer_step"] for r in evals if r.get("step") == step), evals[-1]["optimizer_step"])


def _save(fig: Any, plt: Any, path: Path) -> Path:
    tmp = path.with_name(f".{path.name}.partial")
    fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    os.replace(tmp, path)  # a viewer never sees half a PNG
    return path
