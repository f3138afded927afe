"""Held-out numbers of the DVAE stage: reconstruction, codebook use, and how many codes changed.

Measured on whole held-out clips (not crops), one clip at a time, with the DVAE in eval mode:

- ``mel_mse``: the reconstruction error DiscreteVAE.forward reports in eval mode (its ``loss_fn``,
  MSE, between the mel and the mel decoded from the clip's codes), averaged over every mel value of
  every clip.
- codebook use over all held-out codes: ``perplexity`` (exp of the entropy of the code histogram;
  1 = one code for everything, 1024 = every code equally often) and ``unused_codes`` (codes that
  never occur in the held-out clips).
- ``changed_share``: per clip, the share of code positions whose code differs between the base
  DVAE and the current one. The GPT was trained on the base codes; a high share means the GPT
  stage must learn more of its targets anew.

:class:`StageRows` writes these as rows of the stage folder's ``metrics.jsonl``: ``phase`` "base"
(before training), "evaluation" (every evaluation, with the trainer's losses and their parts) and
"exported" (the weights written to dvae.pth).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from utils.training.dvae.data import load_clip

logger = logging.getLogger(__name__)


@dataclass
class HeldOutPass:
    """One pass of a DVAE over the held-out clips."""

    names: list[str] = field(default_factory=list)
    mse: list[float] = field(default_factory=list)  # per clip: mean over its mel values
    frames: list[int] = field(default_factory=list)
    codes: list[torch.Tensor] = field(default_factory=list)  # per clip, on the CPU


def heldout_clips(rows: Sequence[dict[str, Any]], limit: int) -> list[tuple[str, torch.Tensor]]:
    """The first ``limit`` held-out clips, decoded once at 22,050 Hz: ``(audio_file, (1, samples))``."""
    return [(str(row["audio_file"]), load_clip(row["audio_file"])) for row in list(rows)[: max(0, int(limit))]]


@torch.no_grad()
def measure(model: Any, clips: Sequence[tuple[str, torch.Tensor]]) -> HeldOutPass:
    """Reconstruction error and codes of each clip under ``model`` (a ToolkitDVAE) in eval mode."""
    was_training = model.training
    model.eval()
    device = next(model.dvae.parameters()).device
    out = HeldOutPass()
    try:
        for name, wav in clips:
            mel = model.mel_frames(wav.to(device))
            if mel.shape[-1] == 0:
                continue  # under 4 mel frames (about 35 ms): nothing to encode
            # forward in eval mode decodes the codes too, but encodes again to get them: one pass here
            codes = model.dvae.get_codebook_indices(mel)
            decoded, _ = model.dvae.decode(codes)
            out.names.append(name)
            out.mse.append(float(model.dvae.loss_fn(decoded, mel)))
            out.frames.append(int(mel.shape[-1]))
            out.codes.append(codes.flatten().cpu())
    finally:
        model.train(was_training)
    return out


@torch.no_grad()
def eval_losses(model: Any, loader: Any) -> dict[str, float]:
    """The eval loss and its parts under the current weights (eval mode): the mean over the batches.

    The same numbers as the "evaluation" rows (both from the model's own sums), so the base DVAE
    and the exported one compare with every evaluation of training.
    """
    was_training = model.training
    model.eval()
    device = next(model.dvae.parameters()).device
    model.take_means("eval")  # start from an empty sum
    try:
        for batch in loader:
            model.eval_step(model.format_batch_on_device({"wav": batch["wav"].to(device)}))
    finally:
        model.train(was_training)
    return _prefixed("eval", model.take_means("eval"))


def _prefixed(split: str, means: dict[str, float]) -> dict[str, float]:
    """``{"loss": x, "recon_loss": y}`` -> ``{"eval_loss": x, "eval_recon_loss": y}``."""
    return {(f"{split}_loss" if k == "loss" else f"{split}_{k}"): v for k, v in means.items()}


def codebook_use(codes: Sequence[torch.Tensor], num_tokens: int) -> dict[str, Any]:
    """Perplexity of the code histogram and the number of codes used and unused."""
    if not codes:
        return {"perplexity": None, "used_codes": 0, "unused_codes": int(num_tokens), "codes_counted": 0}
    hist = torch.bincount(torch.cat([c.flatten().long() for c in codes]), minlength=int(num_tokens)).double()
    p = hist[hist > 0] / hist.sum()
    used = int((hist > 0).sum())
    return {
        "perplexity": float(torch.exp(-(p * p.log()).sum())),
        "used_codes": used,
        "unused_codes": int(num_tokens) - used,
        "codes_counted": int(hist.sum()),
    }


def changed_share(before: HeldOutPass, after: HeldOutPass) -> dict[str, Any]:
    """Per clip, the share of code positions that differ between two passes over the same clips."""
    per_clip = {
        name: float((a != b).double().mean())
        for name, a, b in zip(before.names, before.codes, after.codes)
        if a.numel() and a.shape == b.shape
    }
    values = list(per_clip.values())
    return {
        "mean": sum(values) / len(values) if values else None,
        "min": min(values) if values else None,
        "max": max(values) if values else None,
        "per_clip": per_clip,
    }


def summary(current: HeldOutPass, num_tokens: int, base: HeldOutPass | None = None) -> dict[str, Any]:
    """The held-out numbers of one pass (and, against ``base``, the changed share)."""
    weights = sum(current.frames)
    mse = sum(m * f for m, f in zip(current.mse, current.frames)) / weights if weights else None
    out: dict[str, Any] = {"clips": len(current.names), "mel_frames": weights, "mel_mse": mse}
    out.update(codebook_use(current.codes, num_tokens))
    if base is not None:
        out["changed_share"] = changed_share(base, current)["mean"]
    return out


class StageRows:
    """The stage folder's ``metrics.jsonl``: one JSON object per line, appended."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def append(self, row: dict[str, Any]) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(clean) + "\n")

    def keep(self, evaluated_steps: set[int]) -> None:
        """After a resume: keep the base row and the evaluations the resumed trainer still counts.

        The trainer redoes the work after its checkpoint; rows of that work would appear twice.
        """
        rows = self.read()
        kept = [r for r in rows if r.get("phase") == "base" or int(r.get("step", -1)) in evaluated_steps]
        kept = [r for r in kept if r.get("phase") != "exported"]
        if len(kept) != len(rows):
            tmp = self.path.with_name(f".{self.path.name}.partial")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
            tmp.replace(self.path)
            logger.info(
                "%s: %d row(s) after the checkpoint removed (the resumed stage redoes them)",
                self.path,
                len(rows) - len(kept),
            )


class EvaluationRows:
    """A ToolkitTrainer ``on_evaluation`` hook: one "evaluation" row per evaluation.

    The row joins the trainer's record (steps, LR, train loss), the losses and their parts from the
    model's own sums (every batch counted the same), the trainer's eval loss as
    ``trainer_eval_loss`` (Coqui's average, which leaves out the evaluation's first batch; the LR
    plateau rule and the best model go by it), and the held-out numbers of the current weights
    against the base pass.
    """

    def __init__(
        self, model: Any, clips: Sequence[tuple[str, torch.Tensor]], base: HeldOutPass, rows: StageRows
    ) -> None:
        self.model, self.clips, self.base, self.rows = model, clips, base, rows

    def __call__(self, trainer: Any, record: dict[str, Any]) -> None:
        row: dict[str, Any] = {"phase": "evaluation"}
        row.update({k: record.get(k) for k in ("step", "optimizer_step", "epoch", "lr", "train_loss")})
        train = _prefixed("train", self.model.take_means("train"))
        row.update({k: v for k, v in train.items() if k != "train_loss"})  # the trainer's train loss stays
        row.update(_prefixed("eval", self.model.take_means("eval")))
        row["trainer_eval_loss"] = record.get("eval_loss")  # what the LR plateau rule and the best model saw
        heldout = summary(measure(self.model, self.clips), self.model.config.num_tokens, self.base)
        row.update({f"heldout_{k}": v for k, v in heldout.items()})
        self.rows.append(row)
        logger.info(
            "DVAE held-out: mel MSE %.5f, perplexity %.1f, %d unused codes, %.1f%% of codes changed",
            heldout["mel_mse"] or math.nan,
            heldout["perplexity"] or math.nan,
            heldout["unused_codes"],
            100.0 * (heldout.get("changed_share") or 0.0),
        )
