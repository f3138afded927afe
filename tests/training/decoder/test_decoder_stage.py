"""The decoder stage under the toolkit's trainer: Ctrl-C inside it, --continue, a lower held-out mel L1, the export.

One run (module fixture) on three demo clips, one segment of 4 latent frames per clip and step:
3 steps per epoch, 2 epochs, evaluations before training and after each epoch on one held-out clip.
The reconstruction-only warm start lasts 5 steps, so the discriminator trains in step 6. Ctrl-C
(a KeyboardInterrupt from a step hook) stops it after step 4; the stage then goes on from its
folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from utils.safe_load import load_torch_file
from utils.training.decoder import DecoderStageConfig, StageHooks, train_decoder

STAGE = {
    "lr_gen": 1e-3,  # a random tiny-base decoder: a high LR shows learning within a few steps
    "epochs": 2,
    "batch_size": 1,
    "segment_frames": 4,
    "segments_per_clip": 1,
    "warm_start_steps": 5,
    "eval_max_frames": 8,
    "save_every_minutes": None,
    "tensorboard_figures": False,
}


@pytest.fixture(scope="module")
def stage_run(tmp_path_factory, tiny_base, decoder_rows, decoder_cache):
    run_dir = tmp_path_factory.mktemp("decoder_stage") / "run"
    run_dir.mkdir()
    stage = DecoderStageConfig.build(**STAGE)
    steps: list[list[int]] = [[], []]

    def interrupt_after_4(_trainer, info):
        steps[0].append(info["step"])
        if info["step"] == 4:
            raise KeyboardInterrupt

    common = {"cache_dir": decoder_cache[0], "plots": True}
    with pytest.raises(KeyboardInterrupt):
        train_decoder(stage, *decoder_rows, run_dir, tiny_base, hooks=StageHooks(on_step=[interrupt_after_4]), **common)
    stage_dir = run_dir / "decoder"  # a plain folder: Coqui's Trainer writes into it (no dated folder, no link)
    assert stage_dir.is_dir() and not stage_dir.is_symlink() and [p.name for p in run_dir.iterdir()] == ["decoder"]
    saved = sorted(p.name for p in stage_dir.glob("checkpoint_*.pth"))
    result = train_decoder(
        stage,
        *decoder_rows,
        run_dir,
        tiny_base,
        resume=True,
        hooks=StageHooks(on_step=[lambda _t, info: steps[1].append(info["step"])]),
        **common,
    )
    return result, steps, saved


def test_ctrl_c_then_continue_goes_on_at_the_next_step(stage_run):
    result, steps, saved = stage_run
    assert saved == ["checkpoint_4.pth"]  # written on Ctrl-C, with the exact step
    assert steps == [[1, 2, 3, 4], [5, 6]]  # the continued run did steps 5 and 6 only
    assert result.steps == 6
    assert [(r["step"], r["epoch"]) for r in result.records] == [(0, 0), (3, 0), (6, 1)]  # one row per evaluation
    assert sorted(p.name for p in result.stage_dir.glob("checkpoint_*.pth")) == ["checkpoint_6.pth"]


def test_the_held_out_mel_l1_drops_and_the_gan_joins_after_the_warm_start(stage_run):
    result, _steps, _saved = stage_run
    first, mid, last = result.records
    assert result.mel_l1_before == first["eval_loss"]  # the mel L1 decides (the stage's first loss key)
    assert result.mel_l1_after == last["eval_loss"]
    assert 1.0 < result.mel_l1_before < 4.0
    assert result.mel_l1_after < 0.85 * result.mel_l1_before  # log-mel L1 of the held-out clip
    assert result.best_mel_l1 == min(r["eval_loss"] for r in result.records)
    assert mid["train_steps_averaged"] == 3
    # the weighted generator total: mel L1 x 45 (+ the adversarial terms once they join)
    assert mid["train_loss_1"] == pytest.approx(45 * mid["train_loss"], rel=1e-4)
    # warm start: no discriminator terms in steps 1-5; it trains in step 6, and is evaluated after it
    assert mid["discriminator_on"] is False and mid["train_loss_0"] is None and mid["eval_loss_0"] is None
    assert last["discriminator_on"] is True
    assert last["train_loss_0"] > 0 and last["train_g_adv"] > 0 and last["train_g_feat_match"] > 0
    assert last["eval_loss_0"] > 0 and last["eval_g_adv"] > 0
    assert last["train_loss"] > 0 and last["eval_stft_mag"] > 0 and last["eval_stft_sc"] > 0
    # the terms the discriminator brings are averaged over the one step that had them, not all three
    assert last["train_loss_0"] == pytest.approx(last["train_d_real"] + last["train_d_fake"], rel=1e-4)
    # the generator's LR bridge is the one the trainer reports; the discriminator's beside it
    assert [r["lr"] for r in result.records] == [1e-3] * 3 and last["lr_disc"] == 2e-4
    assert last["grad_norm"] == last["grad_norm_1"] and last["grad_norm_0"] > 0


def test_metrics_and_curves_are_written(stage_run):
    result, _steps, _saved = stage_run
    lines = (result.stage_dir / "metrics.jsonl").read_text().splitlines()
    assert result.stage_dir == result.stage_dir.parent / "decoder"
    assert (result.stage_dir / "exclusions.jsonl").read_text() == ""  # every clip long enough for a segment
    assert [json.loads(line)["step"] for line in lines] == [0, 3, 6]
    assert result.curves == result.stage_dir / "decoder_curves.png"
    assert result.curves.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and result.curves.stat().st_size > 20_000
    config = json.loads((result.stage_dir / "config.json").read_text())
    assert config["toolkit"]["stage"]["lr_gen"] == {"value": 1e-3, "source": "set"}
    assert config["toolkit"]["stage"]["batch_size"]["source"] == "set"
    assert config["toolkit"]["stage"]["lr_disc"]["source"].startswith("HiFi-GAN's published 2e-4")


def test_the_export_holds_the_trained_decoder_and_loads_in_stock_xtts(stage_run, tiny_base):
    from TTS.tts.configs.xtts_config import XttsConfig
    from TTS.tts.models.xtts import Xtts

    result, _steps, _saved = stage_run
    config = XttsConfig()
    config.load_json(str(result.export_dir / "config.json"))
    model = Xtts(config)
    model.load_checkpoint(config, checkpoint_dir=str(result.export_dir), eval=True, strict=True)
    base = load_torch_file(tiny_base / "model.pth")["model"]
    decoder = model.hifigan_decoder.state_dict()
    generator = [k for k in decoder if k.startswith("waveform_decoder.")]
    changed = [k for k in generator if not torch.equal(decoder[k], base[f"hifigan_decoder.{k}"])]
    assert len(changed) > 0.9 * len(generator)  # the generator trained
    speaker = [k for k in decoder if k.startswith("speaker_encoder.")]
    assert speaker and all(torch.equal(decoder[k], base[f"hifigan_decoder.{k}"]) for k in speaker)  # frozen
    gpt = model.gpt.state_dict()
    assert all(torch.equal(gpt[k], base[f"gpt.{k}"]) for k in gpt if f"gpt.{k}" in base)
    best = load_torch_file(result.stage_dir / "best_model.pth")
    info = json.loads((result.export_dir / "decoder_info.json").read_text())
    assert info["decoder_checkpoint"] == str((result.stage_dir / "best_model.pth").resolve())
    assert best["model_loss"]["eval_loss"] == pytest.approx(result.best_mel_l1)
    assert Path(info["gpt_model"]) == tiny_base.resolve()
    assert info["held_out_mel_l1_before"] == result.mel_l1_before
    assert info["held_out_mel_l1_exported"] == result.best_mel_l1 < result.mel_l1_before


def test_continuing_on_another_gpt_is_refused(stage_run, tiny_base, decoder_rows, decoder_cache, tmp_path):
    from utils.errors import ConfigError
    from utils.training.checkpoints import atomic_torch_save

    result, _steps, _saved = stage_run
    tuned = tmp_path / "tuned"  # a GPT changed after the decoder stage began: its latents are others
    tuned.mkdir()
    for name in ("config.json", "vocab.json"):
        (tuned / name).write_bytes((tiny_base / name).read_bytes())
    state = load_torch_file(tiny_base / "model.pth")
    state["model"]["gpt.final_norm.bias"] += 0.01
    atomic_torch_save(state, tuned / "model.pth")
    stage = DecoderStageConfig.build(**STAGE)
    with pytest.raises(ConfigError, match="continue with the same GPT model"):
        train_decoder(
            stage,
            *decoder_rows,
            result.stage_dir.parent,
            tuned,
            base_model=tiny_base,
            cache_dir=decoder_cache[0],
            resume=True,
        )
    assert sorted(p.name for p in result.stage_dir.glob("checkpoint_*.pth")) == ["checkpoint_6.pth"]  # untouched
