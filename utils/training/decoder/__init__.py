"""The HiFi-GAN decoder stage: fine-tune XTTS's HifiDecoder on the fine-tuned GPT's latents.

Order of the stages: DVAE -> GPT -> decoder (a new GPT changes the decoder's inputs).

- :mod:`~utils.training.decoder.config`: the stage's hyperparameters and their sources (no torch).
- :mod:`~utils.training.decoder.latents`: GPT latents, speaker embeddings and 24 kHz targets, cached once.
- :mod:`~utils.training.decoder.segments`: the frame-to-sample alignment, training segments, eval clips.
- :mod:`~utils.training.decoder.gan`: the Coqui model (Coqui's GAN with XTTS's decoder as generator).
- :mod:`~utils.training.decoder.metrics`: metrics.jsonl columns and decoder_curves.png.
- :mod:`~utils.training.decoder.export`: the new decoder written into an XTTS model.pth.
- :mod:`~utils.training.decoder.stage`: :func:`train_decoder`, the stage from start to end.

The names below are imported on first use, so reading the hyperparameters does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DecoderStageConfig": "config",
    "DecoderResult": "stage",
    "train_decoder": "stage",
    "StageHooks": "stage",
    "export_decoder": "export",
    "write_decoder_into_model": "export",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
