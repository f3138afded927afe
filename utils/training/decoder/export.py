"""The fine-tuned decoder into an XTTS model folder that stock coqui-tts loads.

XTTS keeps its decoder in model.pth under ``hifigan_decoder.*`` (``Xtts.hifigan_decoder``, a
``HifiDecoder``); ``Xtts.load_checkpoint`` loads whatever weights are there. So the stage's output
is the GPT stage's model.pth (or the base's) with exactly those keys replaced and every other
entry kept as it was, written atomically (a reader sees the old file or the whole new one).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from utils.errors import DataError

logger = logging.getLogger(__name__)

DECODER_PREFIX = "hifigan_decoder."
#: Files of an XTTS model folder that inference reads besides model.pth (copied when present).
FOLDER_FILES = ("config.json", "vocab.json", "speakers_xtts.pth", "export_info.json", "README.txt")
#: The prefix of the generator's decoder in a decoder-stage checkpoint (DecoderGAN.model_g.decoder).
STAGE_PREFIX = "model_g.decoder."


def stage_decoder_state(checkpoint: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The ``HifiDecoder`` weights in a decoder-stage checkpoint (``checkpoint_N.pth``, ``best_model.pth``)."""
    from utils.safe_load import load_torch_file

    data = load_torch_file(checkpoint)
    state = data.get("model") if isinstance(data, dict) else None
    found = {k[len(STAGE_PREFIX) :]: v for k, v in (state or {}).items() if k.startswith(STAGE_PREFIX)}
    if not found:
        raise DataError(f"{checkpoint} holds no decoder weights; pass a checkpoint of the decoder stage")
    return found


def write_decoder_into_model(
    source: str | os.PathLike[str], decoder: dict[str, torch.Tensor], out: str | os.PathLike[str]
) -> Path:
    """Write ``source`` (an XTTS model.pth) to ``out`` with its ``hifigan_decoder.*`` weights replaced.

    ``out`` may be ``source`` itself (replaced atomically). Every other entry, and every other key
    of the state dict, is written as it was read.

    Args:
        source: model.pth of the GPT stage's export or of the base.
        decoder: ``HifiDecoder`` weights without prefix (:func:`stage_decoder_state`).
        out: the model.pth to write.

    Raises:
        DataError: ``source`` has no decoder, or the new weights do not have its keys and shapes.
    """
    from utils.safe_load import load_torch_file
    from utils.training.checkpoints import atomic_torch_save

    data = load_torch_file(source)
    state = data.get("model") if isinstance(data, dict) and isinstance(data.get("model"), dict) else data
    old = {k[len(DECODER_PREFIX) :]: v for k, v in state.items() if k.startswith(DECODER_PREFIX)}
    if not old:
        raise DataError(f"{source} has no {DECODER_PREFIX}* weights; pass an XTTS model.pth")
    if set(old) != set(decoder):
        missing, extra = sorted(set(old) - set(decoder)), sorted(set(decoder) - set(old))
        raise DataError(
            f"the decoder weights do not match {source}: missing {missing[:3]}, unexpected {extra[:3]}; "
            "export a checkpoint of a decoder stage trained from this model"
        )
    wrong = [k for k in old if tuple(old[k].shape) != tuple(decoder[k].shape)]
    if wrong:
        raise DataError(f"the decoder weights' shapes differ from {source} (e.g. {wrong[0]}); export a matching stage")
    for key, value in decoder.items():
        state[DECODER_PREFIX + key] = value.detach().to(device="cpu", dtype=old[key].dtype).contiguous()
    return atomic_torch_save(data, out)


def export_decoder(
    gpt_model: str | os.PathLike[str],
    checkpoint: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    info: dict[str, Any] | None = None,
) -> Path:
    """An XTTS model folder: ``gpt_model``'s files with the decoder of a decoder-stage ``checkpoint``.

    Args:
        gpt_model: the folder the stage trained from (the GPT stage's export or the base).
        checkpoint: the decoder stage's checkpoint to take the decoder from.
        out_dir: a new or empty folder (or ``gpt_model`` itself: its model.pth is replaced).
        info: written to ``out_dir/decoder_info.json`` with the checkpoint's path.

    Returns:
        ``out_dir``.
    """
    src, out = Path(gpt_model), Path(out_dir)
    same = out.resolve() == src.resolve() if out.exists() else False
    if out.exists() and not same and any(out.iterdir()):
        raise DataError(f"{out} exists and is not empty; choose a new folder for the export")
    out.mkdir(parents=True, exist_ok=True)
    if not same:
        for name in FOLDER_FILES:
            if (src / name).is_file():
                shutil.copy2(src / name, out / name)
        if (src / "reference").is_dir():
            shutil.copytree(src / "reference", out / "reference")
    write_decoder_into_model(src / "model.pth", stage_decoder_state(checkpoint), out / "model.pth")
    record = {"decoder_checkpoint": str(Path(checkpoint).resolve()), "gpt_model": str(src.resolve()), **(info or {})}
    (out / "decoder_info.json").write_text(json.dumps(record, indent=2), encoding="utf-8")
    logger.info("decoder export: %s (decoder from %s)", out, checkpoint)
    return out
