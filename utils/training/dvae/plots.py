"""The DVAE stage's curves as one PNG (``dvae_curves.png`` in the stage folder).

Four panels over optimizer steps, from the stage's metrics.jsonl (one record per evaluation; the
one at step 0 is the base DVAE's): train and eval loss; the loss parts (reconstruction,
commitment; log scale); the held-out mel MSE; the held-out codebook perplexity with the share of
codes changed against the base.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

CURVES_NAME = "dvae_curves.png"


def _series(rows: list[dict[str, Any]], key: str) -> list[float]:
    return [float(r[key]) if r.get(key) is not None else math.nan for r in rows]


def plot_dvae_curves(
    rows: list[dict[str, Any]], path: str | os.PathLike[str], *, exported_step: int | None = None
) -> Path | None:
    """Write the curves of ``rows`` (metrics.jsonl records) to ``path``; None when nothing was evaluated.

    ``exported_step``: the trainer step whose weights went to dvae.pth (marked).
    """
    from utils.plots import pyplot, save_png

    rows = [r for r in rows if r.get("optimizer_step") is not None]
    if not rows:
        return None
    plt = pyplot()
    steps = [r["optimizer_step"] for r in rows]
    trained = [r for r in rows if r.get("step")]  # the base's record (step 0) has no train loss
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    ax = axes[0][0]
    ax.plot([r["optimizer_step"] for r in trained], _series(trained, "train_loss"), "o-", ms=3, label="train loss")
    ax.plot(steps, _series(rows, "eval_loss"), "o-", ms=3, label="eval loss (held-out windows; step 0: base)")
    ax.set_title("loss = reconstruction + commitment")
    ax = axes[0][1]
    for part in ("recon_loss", "commitment_loss"):
        ax.plot([r["optimizer_step"] for r in trained], _series(trained, f"train_{part}"), "-", label=f"train {part}")
        ax.plot(steps, _series(rows, f"eval_{part}"), "--", label=f"eval {part}")
    ax.set_yscale("log")
    ax.set_title("loss parts (log scale)")
    ax = axes[1][0]
    ax.plot(steps, _series(rows, "heldout_mel_mse"), "o-", ms=3, label="DVAE (step 0: base)")
    ax.set_title("held-out mel MSE (whole clips)")
    ax = axes[1][1]
    ax.plot(steps, _series(rows, "heldout_perplexity"), "o-", ms=3, color="C0", label="code perplexity")
    ax.set_ylabel("perplexity")
    twin = ax.twinx()
    changed = [0.0 if not r.get("step") else r.get("heldout_changed_share") for r in rows]
    twin.plot(steps, [math.nan if v is None else v for v in changed], "s-", ms=3, color="C3", label="changed codes")
    twin.set_ylabel("share of codes changed vs base")
    twin.set_ylim(0, 1)
    twin.legend(loc="upper right", fontsize=8)
    ax.set_title("held-out codebook use")
    marked = next((r["optimizer_step"] for r in rows if r.get("step") == exported_step), None)
    for a in axes.flat:
        if marked is not None:
            a.axvline(marked, color="gray", ls=":", label="exported to dvae.pth")
        a.set_xlabel("optimizer step")
        a.grid(alpha=0.3)
        a.legend(loc="upper left" if a is axes[1][1] else "best", fontsize=8)
    fig.tight_layout()
    try:
        return save_png(fig, Path(path))
    finally:
        plt.close(fig)
