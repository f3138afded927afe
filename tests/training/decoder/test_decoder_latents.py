"""The decoder's inputs are computed once, keyed by the GPT's weights, and are what stock XTTS computes."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from utils.safe_load import load_torch_file
from utils.training.decoder.latents import (
    Conditioning,
    GPTModelFiles,
    build_latent_model,
    latent_key,
    prepare_latent_cache,
)


def test_inputs_are_cached_once_with_their_shapes(decoder_cache, latent_model, decoder_rows):
    cache, train, held_out = decoder_cache
    files, model = latent_model
    assert train.computed == {"targets": 3, "latents": 3, "speakers": 3}
    assert held_out.computed == {"targets": 1, "latents": 1, "speakers": 1}
    again = prepare_latent_cache(model, decoder_rows[0], cache, files)
    assert again.computed == {"targets": 0, "latents": 0, "speakers": 0}  # a second run computes nothing
    assert again.items == train.items and again.latent_key == train.latent_key
    for clip in train.items:
        n22 = np.load(Path(clip.latents_npy).with_name(Path(clip.latents_npy).name.split(".")[0] + ".npy")).shape[-1]
        assert clip.frames == math.ceil(n22 / 1024)  # one latent per DVAE code
        assert np.load(clip.latents_npy).shape == (clip.frames, 128) and np.load(clip.latents_npy).dtype == np.float32
        speaker = np.load(clip.speaker_npy)
        assert speaker.shape == (512,) and float(np.linalg.norm(speaker)) == pytest.approx(1.0, abs=1e-4)
        assert abs(clip.target_samples - n22 * 24000 / 22050) <= 2  # the same audio at 24 kHz


def _codes_key(clip) -> str:
    (path,) = Path(clip.latents_npy).parent.glob(Path(clip.latents_npy).name.split(".")[0] + ".codes-*.npy")
    return path.name.split(".codes-")[1].removesuffix(".npy")


def test_latents_equal_stock_xtts_teacher_forced(decoder_cache, decoder_rows, tiny_base):
    """Stock Xtts, loaded from the folder, fed the clip's tokens, codes and own conditioning."""
    from TTS.tts.configs.xtts_config import XttsConfig
    from TTS.tts.models.xtts import Xtts

    _cache, train, _held = decoder_cache
    config = XttsConfig()
    config.load_json(str(tiny_base / "config.json"))
    xtts = Xtts(config)
    xtts.load_checkpoint(config, checkpoint_dir=str(tiny_base), eval=True)
    clip = train.items[0]
    stem = Path(clip.latents_npy).name.split(".")[0]
    wav = torch.from_numpy(np.load(Path(clip.latents_npy).with_name(f"{stem}.npy"))).unsqueeze(0)
    codes = torch.from_numpy(np.load(Path(clip.latents_npy).with_name(f"{stem}.codes-{_codes_key(clip)}.npy"))).long()
    tokens = torch.IntTensor(xtts.tokenizer.encode(decoder_rows[0][0]["text"], lang="en"))
    with torch.no_grad():
        cond = xtts.get_gpt_cond_latents(wav, 22050, length=config.gpt_cond_len, chunk_length=config.gpt_cond_chunk_len)
        stock = xtts.gpt(
            tokens.unsqueeze(0),
            torch.tensor([tokens.shape[-1]]),
            codes.unsqueeze(0),
            torch.tensor([codes.shape[-1] * 1024]),
            cond_latents=cond,
            return_latent=True,
        )[0].numpy()
        speaker = xtts.get_speaker_embedding(wav, 22050).reshape(-1).numpy()
    assert np.abs(np.load(clip.latents_npy) - stock).max() < 1e-4
    assert np.abs(np.load(clip.speaker_npy) - speaker).max() < 1e-5


def test_a_new_gpt_checkpoint_gives_a_new_key(decoder_cache, latent_model, decoder_rows, tiny_base, tmp_path):
    cache, train, _held = decoder_cache
    files, model = latent_model
    same = tmp_path / "copy"  # the same weights in another file: the same key
    same.mkdir()
    for name in ("model.pth", "config.json", "vocab.json"):
        shutil.copy2(tiny_base / name, same / name)
    assert (
        latent_key(build_latent_model(GPTModelFiles.locate(same, tiny_base)), Conditioning.of(files))
        == train.latent_key
    )

    tuned = tmp_path / "tuned"  # one GPT weight changed, as by fine-tuning
    shutil.copytree(same, tuned)
    state = load_torch_file(tuned / "model.pth")
    state["model"]["gpt.final_norm.weight"] += 0.01
    torch.save(state, tuned / "model.pth")
    tuned_files = GPTModelFiles.locate(tuned, tiny_base)
    report = prepare_latent_cache(build_latent_model(tuned_files), decoder_rows[0][:1], cache, tuned_files)
    assert report.latent_key != train.latent_key and report.speaker_key == train.speaker_key
    assert report.computed == {"targets": 0, "latents": 1, "speakers": 0}  # only the latents depend on the GPT
    assert np.abs(np.load(report.items[0].latents_npy) - np.load(train.items[0].latents_npy)).max() > 1e-4
