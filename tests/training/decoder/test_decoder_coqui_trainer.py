"""The decoder GAN under Coqui's own Trainer: warm start, then both optimizers, evaluation and best model."""

from __future__ import annotations

from pathlib import Path

import torch

from utils.training.decoder.config import DecoderStageConfig
from utils.training.decoder.gan import DecoderGAN, build_gan_config


def _checksum(module: torch.nn.Module) -> float:
    return float(sum(p.detach().double().abs().sum() for p in module.parameters()))


def test_coqui_trainer_runs_the_warm_start_then_the_gan(tmp_path, tiny_base, decoder_cache):
    from trainer import Trainer, TrainerArgs

    _cache, train, held_out = decoder_cache
    stage = DecoderStageConfig.build(
        epochs=1, batch_size=1, segment_frames=4, segments_per_clip=1, warm_start_steps=1, eval_max_frames=4
    )
    args = {
        "latent_dim": 128,
        "speaker_dim": 512,
        "code_stride_len": 1024,
        "input_sample_rate": 22050,
        "output_sample_rate": 24000,
        "output_hop_length": 256,
        "cond_d_vector_in_each_upsampling_layer": True,
    }
    config = build_gan_config(stage, args, output_path=tmp_path, decoder_init=str(tiny_base / "model.pth"))
    config.tensorboard_figures = False
    model = DecoderGAN(config)
    seen = []  # (steps done, discriminator checksum, generator checksum) after each step

    def after_step(trainer):
        m = trainer.model
        seen.append((trainer.total_steps_done, _checksum(m.model_d), _checksum(m.model_g.decoder.waveform_decoder)))

    start = (0, _checksum(model.model_d), _checksum(model.model_g.decoder.waveform_decoder))
    speaker = _checksum(model.model_g.decoder.speaker_encoder)
    trainer = Trainer(
        TrainerArgs(),
        config,
        output_path=str(tmp_path),
        model=model,
        train_samples=train.items[:2],
        eval_samples=held_out.items,
        callbacks={"on_train_step_end": after_step},
        parse_command_line_args=False,
    )
    trainer.fit()
    assert [s[0] for s in seen] == [1, 2]
    (_, d1, g1), (_, d2, g2) = seen
    assert d1 == start[1] and d2 != d1  # the discriminator sat out the warm-start step, then trained
    assert g1 != start[2] and g2 != g1  # the generator trained in both
    assert _checksum(model.model_g.decoder.speaker_encoder) == speaker  # frozen
    avg = trainer.keep_avg_eval.avg_values
    # the stage's names for Coqui's terms; loss_0 / loss_1 are the weighted totals (Coqui's per-optimizer names)
    assert 0 < avg["avg_mel_l1"] < 10 and avg["avg_loss_1"] > 45 * avg["avg_mel_l1"] * 0.99  # mel x 45 + the rest
    assert avg["avg_loss_0"] > 0 and avg["avg_d_real"] >= 0 and avg["avg_g_adv"] > 0
    assert trainer.scheduler[1].optimizer_steps == 2 and trainer.scheduler[0].optimizer_steps == 1  # the LR bridges
    (stage_dir,) = Path(tmp_path).glob("decoder-*")
    assert [p.name for p in stage_dir.glob("best_model*.pth")]  # Coqui's best model by the held-out mel L1
