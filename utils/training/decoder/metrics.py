"""The decoder stage's numbers: its metrics.jsonl rows and a PNG of its curves.

The toolkit's trainer writes one row per evaluation: ``train_loss`` / ``eval_loss`` are the mel L1
(the stage's deciding loss, see utils/training/decoder/gan.py), then each GAN term as
``train_<name>`` (averaged over the steps that had it since the previous evaluation) and
``eval_<name>`` (over the held-out clips), ``lr`` (generator), ``lr_disc`` and ``discriminator_on``.
The row at step 0 is the starting decoder's.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

CURVES_NAME = "decoder_curves.png"


def read_rows(stage_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The stage's metrics.jsonl rows (empty when there are none yet)."""
    from utils.plots import read_jsonl

    return read_jsonl(Path(stage_dir) / "metrics.jsonl")


def plot_decoder_curves(stage_dir: str | os.PathLike[str], *, warm_start_steps: int | None = None) -> Path | None:
    """Write ``decoder_curves.png``: mel L1 (train, held-out), held-out STFT, the GAN terms, both LRs.

    A dashed line marks where the discriminator joined. Returns None when there are no rows yet.
    """
    from utils.plots import pyplot, save_png

    rows = read_rows(stage_dir)
    if not rows:
        return None
    steps = [r["step"] for r in rows]
    joined = warm_start_steps if warm_start_steps and warm_start_steps <= max(steps) else None
    plt = pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), sharex=True)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.08, top=0.94, wspace=0.22, hspace=0.35)
    panels = (
        (axes[0][0], "mel L1 (log-mel)", ("train_loss", "eval_loss")),
        (axes[0][1], "held-out multi-resolution STFT", ("eval_stft_mag", "eval_stft_sc")),
        (axes[1][0], "GAN terms (train)", ("train_loss_0", "train_g_adv", "train_g_feat_match")),
        (axes[1][1], "learning rate", ("lr", "lr_disc")),
    )
    names = {
        "lr": "generator",
        "lr_disc": "discriminator",
        "train_loss": "train mel L1",
        "eval_loss": "held-out mel L1",
        "train_loss_0": "discriminator loss",
    }
    for ax, title, keys in panels:
        for key in keys:
            values = [r.get(key) if r.get(key) is not None else math.nan for r in rows]
            if any(not math.isnan(v) for v in values):
                ax.plot(steps, values, marker="o", markersize=3, label=names.get(key, key))
        if joined is not None:
            ax.axvline(joined, color="grey", linestyle="--", linewidth=1, label="discriminator joins")
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "the discriminator has not trained yet", ha="center", va="center", transform=ax.transAxes)
    if axes[1][1].lines:
        axes[1][1].set_yscale("log")
    try:
        return save_png(fig, Path(stage_dir) / CURVES_NAME)
    finally:
        plt.close(fig)
