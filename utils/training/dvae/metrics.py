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

Every evaluation record of the stage (the toolkit trainer's metrics.jsonl, in the stage folder)
carries these as ``heldout_*`` columns (:class:`HeldOut`); the record at step 0 is the base DVAE's.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
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


@dataclass
class HeldOut:
    """The held-out clips and the base DVAE's pass over them, measured again at every evaluation.

    :meth:`fields` gives the evaluation record's ``heldout_*`` columns (through
    :meth:`ToolkitDVAE.evaluation_fields <utils.training.dvae.model.ToolkitDVAE.evaluation_fields>`).
    """

    clips: list[tuple[str, torch.Tensor]]
    base: HeldOutPass

    def fields(self, model: Any) -> dict[str, Any]:
        """``heldout_<name>`` of :func:`summary` for ``model``'s current weights, against the base."""
        heldout = summary(measure(model, self.clips), model.config.num_tokens, self.base)
        logger.info(
            "DVAE held-out: mel MSE %.5f, perplexity %.1f, %d unused codes, %.1f%% of codes changed",
            heldout["mel_mse"] if heldout["mel_mse"] is not None else math.nan,
            heldout["perplexity"] or math.nan,
            heldout["unused_codes"],
            100.0 * (heldout.get("changed_share") or 0.0),
        )
        return {f"heldout_{k}": v for k, v in heldout.items()}
