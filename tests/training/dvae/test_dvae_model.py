"""The DVAE TrainerModel: its steps, its codebook option, plain Coqui Trainer, and refused model files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from utils.base_model import check_base_model
from utils.errors import BaseModelError
from utils.safe_load import UnsafeModelFileError, load_torch_file
from utils.training.dvae.trainer_config import build_trainer_config


class _Payload:
    """Unpickling this runs ``touch MARKER`` (what an attacker's dvae.pth would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _model(tiny_base: Path, stage, out: Path):
    from utils.training.dvae.model import ToolkitDVAE

    return ToolkitDVAE(build_trainer_config(stage, check_base_model(tiny_base), out))


def _crop_batch(demo_en: Path, frames: int = 32) -> dict:
    from utils.training.dvae.data import clip_infos, read_segment

    (clip,) = clip_infos([{"audio_file": str(demo_en / "wavs" / "en_003.wav")}])
    return {"wav": torch.from_numpy(read_segment(clip, 11000, frames * 256)).view(1, 1, -1)}


def test_train_step_trains_after_an_evaluation_and_codebook_ema_can_be_held(tiny_base, demo_en, tiny_stage, tmp_path):
    from utils.training.dvae.metrics import measure

    model = _model(tiny_base, tiny_stage(), tmp_path)
    batch = model.format_batch_on_device(_crop_batch(demo_en))
    mel = batch["mel"]
    assert mel.shape == (1, 80, 32)  # 8,192 samples -> 33 mel frames, cut to a multiple of 4
    opt = model.get_optimizer()
    model.eval()  # as Coqui's evaluation leaves it
    embed = model.dvae.codebook.embed.clone()
    _, losses = model.train_step(batch)
    assert model.training and model.dvae.codebook.training
    assert set(losses) == {"loss", "recon_loss", "commitment_loss"}
    assert float(losses["loss"].detach()) == pytest.approx(
        float((losses["recon_loss"] + losses["commitment_loss"]).detach())
    )
    assert not torch.equal(model.dvae.codebook.embed, embed)  # the EMA moved the codebook
    losses["loss"].backward()
    assert model.dvae.encoder[0][0].weight.grad.abs().sum() > 0  # the encoder is reached in train mode
    opt.step()
    opt.zero_grad()
    model.config.codebook_ema = False
    embed = model.dvae.codebook.embed.clone()
    weight = model.dvae.encoder[0][0].weight.detach().clone()
    _, losses = model.train_step(batch)
    losses["loss"].backward()
    opt.step()
    assert model.training and not model.dvae.codebook.training
    assert torch.equal(model.dvae.codebook.embed, embed)  # held
    assert not torch.equal(model.dvae.encoder[0][0].weight, weight)  # the rest still trains
    # the held-out MSE (one encoder pass) is the reconstruction loss DiscreteVAE.forward reports in eval mode
    model.eval()
    with torch.no_grad():
        recon, _, _ = model.dvae(mel)
    wav = batch["wav"][0]
    assert measure(model, [("crop", wav)]).mse[0] == pytest.approx(float(recon.mean()), rel=1e-5)
    # the stage interface: losses recorded by name, the LR option named after a divergence, held-out columns
    assert model.loss_keys == ("loss", "recon_loss", "commitment_loss") and model.lr_option == "--dvae-lr"
    assert model.evaluation_fields(None) == {}  # no held-out clips set: no columns
    # the LR bridge with the stage's plateau rule: patience 1, so two evaluations without improvement halve it
    bridge = model.get_scheduler([opt])
    assert (bridge.spec.name, bridge.spec.patience, bridge.spec.factor) == ("ReduceLROnPlateau", 1, 0.5)
    assert [bridge.on_evaluation(loss)["lr"] for loss in (2.0, 2.0, 2.0)] == [1e-4, 1e-4, 5e-5]
    assert opt.param_groups[0]["lr"] == 5e-5


def test_runs_under_plain_coqui_trainer(tiny_base, demo_rows, tiny_stage, tmp_path):
    from trainer import Trainer, TrainerArgs

    from utils.training.dvae.metrics import heldout_clips, measure
    from utils.training.lr_schedule import LRBridge

    train, evals = demo_rows
    model = _model(tiny_base, tiny_stage(batch_size=1), tmp_path)
    clips = heldout_clips(evals, 1)
    before = measure(model, clips)
    trainer = Trainer(
        TrainerArgs(),
        model.config,
        output_path=tmp_path,
        model=model,
        train_samples=train[:2],
        eval_samples=evals,
        parse_command_line_args=False,
    )
    trainer.fit()
    assert trainer.total_steps_done == 2
    assert isinstance(trainer.scheduler[0], LRBridge) and trainer.scheduler[0].optimizer_steps == 2
    assert trainer.keep_avg_eval["avg_loss"] > 0
    after = measure(model, clips)
    assert after.mse[0] < 0.95 * before.mse[0], (before.mse, after.mse)
    (best,) = Path(trainer.output_path).glob("best_model_*.pth")  # Coqui's epoch-end best model
    state = load_torch_file(best)["model"]
    dvae = {k.removeprefix("dvae."): v for k, v in state.items() if k.startswith("dvae.")}
    from utils.training.dvae.model import build_dvae

    build_dvae(1024).load_state_dict(dvae, strict=True)


def test_untrusted_or_empty_dvae_pth_is_refused(tiny_base, tmp_path):
    from utils.training.dvae.model import build_dvae, load_dvae_weights

    base = tmp_path / "base"
    base.mkdir()
    for name in ("model.pth", "config.json", "vocab.json", "mel_stats.pth"):
        (base / name).symlink_to(tiny_base / name)
    marker = tmp_path / "PWNED"
    torch.save({"encoder.0.0.weight": _Payload(marker)}, base / "dvae.pth")
    # the stage's first step (train_dvae checks the base folder before it writes anything)
    with pytest.raises(UnsafeModelFileError, match=r"dvae\.pth: not a plain tensor checkpoint .*refusing to load code"):
        check_base_model(base)
    dvae = build_dvae(1024)
    with pytest.raises(UnsafeModelFileError):
        load_dvae_weights(dvae, base / "dvae.pth")
    assert not marker.exists(), "the payload ran"
    # GPTTrainer loads dvae.pth with strict=False and would train a random DVAE from {}: refused here
    torch.save({}, tmp_path / "empty.pth")
    with pytest.raises(BaseModelError, match="lacks 56 of the DVAE's 56 weights"):
        load_dvae_weights(dvae, tmp_path / "empty.pth")


def test_codebook_options_place_the_codebook_on_data_once_and_not_after_a_resume(
    tiny_base, demo_en, tiny_stage, tmp_path
):
    from types import SimpleNamespace

    assert _model(tiny_base, tiny_stage(), tmp_path).codebook_restart is None  # off by default: the base's codes
    model = _model(tiny_base, tiny_stage(codebook_from_data=True, restart_unused_codes=True), tmp_path)
    batch = model.format_batch_on_device(_crop_batch(demo_en, frames=64))
    model.on_train_epoch_start(SimpleNamespace(total_steps_done=0))
    model.train_step(batch)
    assert model.codebook_restart.restarted == model.dvae.codebook.n_embed == 1024  # every code placed on data
    resumed = _model(tiny_base, tiny_stage(codebook_from_data=True), tmp_path)
    resumed.on_train_epoch_start(SimpleNamespace(total_steps_done=7))  # a continued stage
    embed = resumed.dvae.codebook.embed.clone()
    resumed.config.codebook_ema = False
    resumed.train_step(batch)
    assert resumed.codebook_restart.restarted == 0 and torch.equal(resumed.dvae.codebook.embed, embed)
