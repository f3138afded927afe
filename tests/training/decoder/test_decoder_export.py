"""The fine-tuned decoder goes into model.pth under hifigan_decoder.*; stock coqui-tts loads it strictly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from utils.errors import DataError
from utils.safe_load import load_torch_file
from utils.training.checkpoints import atomic_torch_save
from utils.training.decoder.export import export_decoder, write_decoder_into_model


def _stock_xtts(folder: Path):
    from TTS.tts.configs.xtts_config import XttsConfig
    from TTS.tts.models.xtts import Xtts

    config = XttsConfig()
    config.load_json(str(folder / "config.json"))
    model = Xtts(config)
    model.load_checkpoint(config, checkpoint_dir=str(folder), eval=True, strict=True)
    return model


def _base_decoder(tiny_base: Path) -> dict[str, torch.Tensor]:
    state = load_torch_file(tiny_base / "model.pth")["model"]
    return {k.removeprefix("hifigan_decoder."): v.clone() for k, v in state.items() if k.startswith("hifigan_decoder.")}


def test_export_replaces_only_the_decoder_and_loads_in_stock_xtts(tiny_base, tmp_path):
    decoder = _base_decoder(tiny_base)
    changed = [k for k in decoder if k.startswith("waveform_decoder.")]
    for key in changed:
        decoder[key] += 0.01  # what a fine-tune does to the generator; the speaker encoder stays
    stage = tmp_path / "checkpoint_7.pth"  # a decoder-stage checkpoint: DecoderGAN's keys
    atomic_torch_save({"model": {f"model_g.decoder.{k}": v for k, v in decoder.items()}, "step": 7}, stage)
    out = export_decoder(tiny_base, stage, tmp_path / "export", info={"mel_l1_before": 2.5})

    assert sorted(p.name for p in out.iterdir()) == ["config.json", "decoder_info.json", "model.pth", "vocab.json"]
    assert json.loads((out / "decoder_info.json").read_text())["mel_l1_before"] == 2.5
    base = load_torch_file(tiny_base / "model.pth")["model"]
    written = load_torch_file(out / "model.pth")["model"]
    assert written.keys() == base.keys()
    others = [k for k in base if not k.startswith("hifigan_decoder.")]
    assert len(others) > 80 and all(torch.equal(written[k], base[k]) for k in others)  # the GPT is untouched

    model = _stock_xtts(out)  # strict: every key present, none extra
    loaded = model.hifigan_decoder.state_dict()
    assert all(torch.equal(loaded[k], decoder[k]) for k in decoder)
    assert sum(not torch.equal(loaded[k], base[f"hifigan_decoder.{k}"]) for k in loaded) == len(changed) > 50
    gpt = model.gpt.state_dict()
    assert all(torch.equal(gpt[k], base[f"gpt.{k}"]) for k in gpt if f"gpt.{k}" in base)


def test_mismatched_decoder_weights_are_refused(tiny_base, tmp_path):
    decoder = _base_decoder(tiny_base)
    first = sorted(decoder)[0]
    with pytest.raises(DataError, match="do not match"):
        write_decoder_into_model(
            tiny_base / "model.pth", {k: v for k, v in decoder.items() if k != first}, tmp_path / "m.pth"
        )
    with pytest.raises(DataError, match="shapes differ"):
        write_decoder_into_model(tiny_base / "model.pth", {**decoder, first: torch.zeros(3)}, tmp_path / "m.pth")
    assert not (tmp_path / "m.pth").exists()

    inplace = tmp_path / "inplace.pth"  # the source itself can be the output (replaced whole)
    shutil.copy2(tiny_base / "model.pth", inplace)
    decoder[first] = decoder[first] + 1.0
    write_decoder_into_model(inplace, decoder, inplace)
    assert torch.equal(load_torch_file(inplace)["model"][f"hifigan_decoder.{first}"], decoder[first])
    assert [p.name for p in tmp_path.iterdir()] == ["inplace.pth"]  # no temporary file left
