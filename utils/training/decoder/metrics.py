"""The decoder stage's numbers: its columns in metrics.jsonl and a PNG of its curves.

The toolkit's trainer writes one row per evaluation with ``train_loss`` / ``eval_loss`` (here the
mel L1, see utils/training/decoder/trainer.py); these functions add the GAN's own terms to that row
(``train_*`` averaged over the steps since the previous evaluation, ``eval_*`` over the held-out
clips) and draw them.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

CURVES_NAME = "decoder_curves.png"

#: Coqui's loss names (TTS/vocoder/layers/losses.py, after the Trainer's per-optimizer renaming)
#: -> the columns of metrics.jsonl (``train_`` / ``eval_`` prefixed).
COLUMNS: dict[str, str] = {
    "G_l1_spec_loss": "mel_l1",
    "G_stft_loss_mg": "stft_mag",
    "G_stft_loss_sc": "stft_sc",
    "G_mse_fake_loss": "g_adv",
    "G_feat_match_loss": "g_feat_match",
    "loss_0": "d_loss",
    "D_mse_gan_real_loss": "d_real",
    "D_mse_gan_fake_loss": "d_fake",
    "grad_norm_0": "grad_norm_disc",
    "grad_norm_1": "grad_norm_gen",
}


class PeriodSums:
    """Running sums of each loss term since the last evaluation (each term its own count)."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, values: Mapping[str, Any]) -> None:
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self.sums[key] = self.sums.get(key, 0.0) + float(value)
                self.counts[key] = self.counts.get(key, 0) + 1

    def take(self) -> dict[str, float]:
        """The means so far; the sums start again."""
        means = {k: self.sums[k] / self.counts[k] for k in self.sums}
        self.sums, self.counts = {}, {}
        return means

    def state_dict(self) -> dict[str, Any]:
        return {"sums": dict(self.sums), "counts": dict(self.counts)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.sums = {k: float(v) for k, v in (state.get("sums") or {}).items()}
        self.counts = {k: int(v) for k, v in (state.get("counts") or {}).items()}


def decoder_columns(train_means: Mapping[str, float], eval_avg: Mapping[str, Any]) -> dict[str, float | None]:
    """The row's GAN columns from the period's train means and Coqui's eval averages (``avg_*`` keys).

    In evaluation the generator's ``loss_1`` is the mel L1 and its weighted total is ``G_total_loss``.
    """
    row: dict[str, float | None] = {}
    for key, column in COLUMNS.items():
        row[f"train_{column}"] = train_means.get(key)
        if not key.startswith("grad_norm"):
            row[f"eval_{column}"] = _float(eval_avg.get(f"avg_{key}"))
    row["train_g_total"] = train_means.get("loss_1")
    row["eval_g_total"] = _float(eval_avg.get("avg_G_total_loss"))
    return row


def _float(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def merge_row(path: Path, step: int, row: Mapping[str, Any]) -> None:
    """Merge ``row`` into the last line of ``path`` whose ``step`` is ``step`` (atomic rewrite; appended if none)."""
    from utils.fs import replace_atomically

    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].strip() and int(json.loads(lines[i]).get("step", -1)) == step:
            lines[i] = json.dumps({**json.loads(lines[i]), **row})
            break
    else:
        lines.append(json.dumps({"step": step, **row}))
    text = "".join(f"{line}\n" for line in lines)
    replace_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


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
        (axes[0][0], "mel L1 (log-mel)", ("train_mel_l1", "eval_mel_l1")),
        (axes[0][1], "held-out multi-resolution STFT", ("eval_stft_mag", "eval_stft_sc")),
        (axes[1][0], "GAN terms (train)", ("train_d_loss", "train_g_adv", "train_g_feat_match")),
        (axes[1][1], "learning rate", ("lr", "lr_disc")),
    )
    names = {"lr": "generator", "lr_disc": "discriminator"}
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
