"""The GPT stage's step methods under the speed options (SpeedLevers on ToolkitGPTTrainer): overrides of
the toolkit's own subclass that give Coqui's batches, not methods replaced on the instance."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import read_demo_samples
from utils.errors import ConfigError
from utils.gpt_train import build_config
from utils.hparams import resolve
from utils.training.speed_options import SpeedOptions, apply_speed_options


@pytest.fixture(scope="module")
def built(tiny_base: Path, demo_en: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any, dict]:
    """The tiny model with the default levers applied (on the CPU), and one stock XTTSDataset batch."""
    from utils.training.gpt.dataset import ToolkitXTTSDataset
    from utils.training.gpt.model import ToolkitGPTTrainer

    out = tmp_path_factory.mktemp("levers")
    config = build_config(resolve(dataset_hours=0.01), tiny_base, output_path=out, language="en")
    model = ToolkitGPTTrainer(config)
    rows = read_demo_samples(demo_en / "metadata_train.csv")[:3]
    dataset = ToolkitXTTSDataset(model.config, rows, model.xtts.tokenizer, 22050, is_eval=True)
    batch = dataset.collate_fn([dataset[i] for i in range(3)])
    return model, config, batch


def _clone(batch: dict) -> dict:
    return {k: (v.clone() if torch.is_tensor(v) else v) for k, v in batch.items()}


def test_the_levers_are_overrides_not_methods_replaced_on_the_instance(built) -> None:
    model, config, _ = built
    applied = apply_speed_options(model, config, SpeedOptions(num_workers=0), "cpu")
    # the CPU path: no bf16, TF32, fused AdamW or compile; the GPT's swaps and the step levers
    assert applied == [
        "fast_gelu",
        "sdpa_conditioning",
        "fast_heads",
        "packed_attention",
        "no_kv_cache",
        "host_lengths",
        "offload_frozen",
    ]
    assert model.speed == SpeedOptions(num_workers=0)
    assert not {"format_batch", "format_batch_on_device", "get_optimizer", "on_init_end"} & set(vars(model))


def test_formatting_with_host_lengths_gives_coquis_batch(built) -> None:
    """Same conditioning mels, codes and text as Coqui's format_batch_on_device; the lengths come back
    from the CPU copies format_batch made."""
    model, _, batch = built
    model.speed = None  # Coqui's own methods
    ref = model.format_batch_on_device(model.format_batch(_clone(batch)))
    assert "host" not in model.format_batch(_clone(batch))
    model.speed = SpeedOptions(num_workers=0)
    formatted = model.format_batch(_clone(batch))
    host = formatted["host"]
    assert (
        torch.equal(host["text_lengths"], batch["text_lengths"]) and host["text_lengths"] is not batch["text_lengths"]
    )
    out = model.format_batch_on_device(formatted)
    assert "host" not in out and "wav" not in out and "padded_text" not in out
    for key in ("text_inputs", "cond_mels", "audio_codes", "text_lengths", "wav_lengths", "cond_idxs"):
        assert torch.equal(out[key], ref[key]), key
    assert out["text_lengths"] is host["text_lengths"]


def test_cached_codes_skip_the_dvae_and_offloaded_dvae_needs_them(built, monkeypatch) -> None:
    model, _, batch = built
    model.speed = SpeedOptions(num_workers=0, host_lengths=False)  # cache_dvae_codes alone
    codes = torch.arange(12).reshape(3, 4)
    monkeypatch.setattr(model.dvae, "get_codebook_indices", lambda mel: pytest.fail("the DVAE ran"))
    out = model.format_batch_on_device({**_clone(batch), "audio_codes": codes.clone()})
    assert torch.equal(out["audio_codes"], codes)
    meta = torch.nn.Parameter(torch.zeros(1, device="meta"))
    monkeypatch.setattr(model.dvae, "parameters", lambda: iter([meta]))  # "moved off the GPU"
    with pytest.raises(ConfigError, match="turn off offload_frozen"):
        model.format_batch_on_device(_clone(batch))


def test_optimizer_and_start_up_follow_the_levers(built, caplog) -> None:
    model, _, _ = built
    from TTS.tts.layers.xtts.trainer.gpt_trainer import GPTTrainer

    model.speed = SpeedOptions(num_workers=0)
    ours, coqui = model.get_optimizer(), GPTTrainer.get_optimizer(model)
    assert type(ours) is type(coqui) and len(ours.param_groups) == len(coqui.param_groups) >= 1
    assert [len(g["params"]) for g in ours.param_groups] == [len(g["params"]) for g in coqui.param_groups]
    model.speed = dataclasses.replace(model.speed, optimizer_8bit=True)
    with pytest.raises(ConfigError, match="bitsandbytes"):  # not installed here: one line with the fix
        model.get_optimizer()
    model.speed = SpeedOptions(num_workers=0)
    with caplog.at_level(logging.INFO, logger="utils.training.gpt.model"):
        model.on_init_end(trainer=None)
    assert "moved frozen modules to the CPU: xtts.hifigan_decoder, dvae" in caplog.text
    caplog.clear()
    model.speed = dataclasses.replace(model.speed, offload_frozen=False)
    with caplog.at_level(logging.INFO, logger="utils.training.gpt.model"):
        model.on_init_end(trainer=None)
    assert "moved frozen modules" not in caplog.text
