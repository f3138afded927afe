"""The decoder stage's Coqui model: XTTS's HifiDecoder against HiFi-GAN's discriminators.

A subclass of coqui-tts's ``TTS.vocoder.models.gan.GAN``, which already is HiFi-GAN's training
step for Coqui's multi-optimizer Trainer: ``train_step(batch, criterion, optimizer_idx)`` with
optimizer 0 the discriminator (it also runs the generator and keeps its output) and optimizer 1
the generator; ``on_train_step_start`` leaves the discriminator out for the first
``steps_to_start_discriminator`` steps (the warm start: reconstruction losses only);
``get_criterion`` gives Coqui's ``DiscriminatorLoss`` / ``GeneratorLoss``
(``TTS.vocoder.layers.losses``: mel L1, multi-resolution STFT, least-squares adversarial, feature
matching). What changes here:

- The generator is XTTS's ``HifiDecoder`` (its speaker encoder frozen and kept in eval mode), fed
  GPT latents plus a speaker embedding. ``GAN.train_step`` calls the generator with one tensor, so
  each input frame carries ``[latent | speaker embedding]`` and
  :class:`SpeakerConditionedGenerator` splits it. ``GAN.__init__`` is skipped: it builds its
  generator by name from the config, and the XTTS decoder is not one of those.
- The discriminator is Coqui's ``HifiganDiscriminator`` (multi-period + multi-scale), from random
  weights: XTTS's discriminators were never released.
- Only the generator's waveform decoder gets an optimizer (``GAN.get_optimizer`` hands AdamW the
  whole generator, frozen speaker encoder included).
- Schedulers are the toolkit's LR bridge (utils/training/lr_schedule.py), one per optimizer, in
  Coqui's GAN order ``[discriminator, generator]``.
- Data: cached latents (utils/training/decoder/latents.py), random aligned segments for training,
  whole held-out clips for evaluation (utils/training/decoder/segments.py).
- Losses: Coqui's ``DiscriminatorLoss`` / ``GeneratorLoss`` with their terms named for the run's
  records (:data:`LOSS_NAMES`: ``mel_l1``, ``stft_mag``, ``g_adv``, ...). For the toolkit's trainer
  (utils/training/stage.py) the deciding loss is the mel L1 (``loss_keys``), in training and on the
  held-out clips: the best model is the one that sounds closest to the held-out audio whatever
  phase it was written in, and the train loss does not jump when the adversarial terms join. The
  weighted totals are ``loss_1`` (generator) and ``loss_0`` (discriminator), Coqui's names. The
  run is scheduled by the generator's optimizer (``lr_optimizer`` 1).
- Evaluation: ``GAN.eval_step`` forces the discriminator on, even before it has trained; here the
  held-out clips get the discriminator terms only once it has joined.
"""

# No "from __future__ import annotations": Coqpit (load_json, used by --continue) rejects string type hints.

import logging
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from TTS.config.shared_configs import BaseAudioConfig
from TTS.tts.layers.xtts.hifigan_decoder import HifiDecoder
from TTS.vocoder.configs.hifigan_config import HifiganConfig
from TTS.vocoder.models.base_vocoder import BaseVocoder
from TTS.vocoder.models.gan import GAN
from TTS.vocoder.models.hifigan_discriminator import HifiganDiscriminator

from utils.training.decoder.config import DecoderStageConfig
from utils.training.decoder.segments import ClipDataset, FrameAlignment, SegmentDataset, build_loader
from utils.training.lr_schedule import LRBridge, ScheduleSpec

logger = logging.getLogger(__name__)

#: Key prefixes of the decoder's weights in an XTTS model.pth and in a GPT-stage Trainer checkpoint.
XTTS_DECODER_PREFIXES = ("hifigan_decoder.", "xtts.hifigan_decoder.")

#: Coqui's loss names (TTS/vocoder/layers/losses.py) -> the names the stage's records use.
LOSS_NAMES = {
    "G_l1_spec_loss": "mel_l1",
    "G_stft_loss_mg": "stft_mag",
    "G_stft_loss_sc": "stft_sc",
    "G_mse_fake_loss": "g_adv",
    "G_feat_match_loss": "g_feat_match",
    "D_mse_gan_real_loss": "d_real",
    "D_mse_gan_fake_loss": "d_fake",
}
#: The losses of every evaluation record: the mel L1 decides; ``loss_1``/``loss_0`` are the weighted totals.
LOSS_KEYS = ("mel_l1", "stft_mag", "stft_sc", "g_adv", "g_feat_match", "loss_1", "loss_0", "d_real", "d_fake")


@dataclass
class DecoderGANConfig(HifiganConfig):
    """Coqui's HifiganConfig plus the XTTS decoder's shape, the data and the toolkit's record.

    ``audio.sample_rate`` and ``l1_spec_loss_params`` are at the decoder's output rate (24 kHz);
    Coqui's ``GeneratorLoss`` checks that they agree.
    """

    model: str = "xtts_decoder_gan"
    latent_dim: int = 1024  # GPT channels (gpt_n_model_channels)
    speaker_dim: int = 512
    code_stride_len: int = 1024
    input_sample_rate: int = 22050
    output_sample_rate: int = 24000
    output_hop_length: int = 256
    cond_d_vector_in_each_upsampling_layer: bool = True
    decoder_init: str = ""  # model.pth whose hifigan_decoder.* weights the generator starts from
    segment_frames: int = 8
    segments_per_clip: int = 8
    eval_max_frames: int | None = None
    tensorboard_figures: bool = True  # False: audio only (Coqui's figures take seconds per evaluation on a CPU)
    gen_schedule: dict = field(default_factory=dict)  # ScheduleSpec fields of the generator's LR bridge
    disc_schedule: dict = field(default_factory=dict)
    toolkit: dict = field(default_factory=dict)  # the stage's values with their sources, the inputs


def mel_loss_params(sample_rate: int) -> dict[str, Any]:
    """HiFi-GAN's mel loss (80 bands, 1024-point FFT, hop 256, up to Nyquist) at the decoder's output rate."""
    return {
        "use_mel": True,
        "sample_rate": int(sample_rate),
        "n_fft": 1024,
        "hop_length": 256,
        "win_length": 1024,
        "n_mels": 80,
        "mel_fmin": 0.0,
        "mel_fmax": None,
    }


def _optimization(stage: DecoderStageConfig) -> dict[str, Any]:
    """Losses, optimizers, clipping and LR bridges of :func:`build_gan_config`."""
    schedule = {"name": stage.lr_scheduler, "min_lr": stage.min_lr, "factor": stage.plateau_factor}
    schedule["patience"] = stage.plateau_patience
    return {
        "use_stft_loss": True,
        "stft_loss_weight": stage.stft_loss_weight,
        "l1_spec_loss_weight": stage.mel_loss_weight,
        "feat_match_loss_weight": stage.feat_match_weight,
        "mse_G_loss_weight": stage.adv_weight,
        "steps_to_start_discriminator": stage.warm_start_steps,
        "lr_gen": stage.lr_gen,
        "lr_disc": stage.lr_disc,
        "optimizer": "AdamW",
        "optimizer_params": {"betas": list(stage.betas), "weight_decay": stage.weight_decay},
        "grad_clip": [stage.grad_clip_disc, stage.grad_clip_gen],  # Coqui's GAN order: [discriminator, generator]
        "gen_schedule": {**schedule, "base_lr": stage.lr_gen, "warmup_steps": stage.warmup_steps},
        "disc_schedule": {**schedule, "base_lr": stage.lr_disc},
        "scheduler_after_epoch": False,  # the bridges count optimizer steps (utils/training/lr_schedule.py)
        "target_loss": LOSS_KEYS[0],  # what Coqui ranks checkpoints by: the held-out mel L1
    }


def build_gan_config(
    stage: DecoderStageConfig, decoder_args: dict[str, Any], *, output_path: str | os.PathLike[str], decoder_init: str
) -> DecoderGANConfig:
    """The Coqui config of one decoder fine-tune.

    Args:
        stage: the stage's hyperparameters.
        decoder_args: the decoder's shape: ``latent_dim``, ``speaker_dim``, ``code_stride_len``,
            ``input_sample_rate``, ``output_sample_rate``, ``output_hop_length``,
            ``cond_d_vector_in_each_upsampling_layer`` (see :func:`decoder_args_of`).
        output_path: the folder the Trainer makes the stage's folder in.
        decoder_init: the model.pth the generator starts from.
    """
    sr = int(decoder_args["output_sample_rate"])
    return DecoderGANConfig(
        **decoder_args,
        **_optimization(stage),
        decoder_init=str(decoder_init),
        output_path=str(output_path),
        run_name="decoder",
        project_name="xtts_finetune",
        run_description="XTTS v2 HiFi-GAN decoder fine-tune (xtts-finetune-toolkit)",
        dashboard_logger="tensorboard",
        audio=BaseAudioConfig(sample_rate=sr, num_mels=80, fft_size=1024, win_length=1024, hop_length=256),
        l1_spec_loss_params=mel_loss_params(sr),
        epochs=stage.epochs,
        batch_size=stage.batch_size,
        eval_batch_size=1,
        segment_frames=stage.segment_frames,
        segments_per_clip=stage.segments_per_clip,
        eval_max_frames=stage.eval_max_frames,
        tensorboard_figures=stage.tensorboard_figures,
        num_loader_workers=stage.num_loader_workers,
        num_eval_loader_workers=0,
        run_eval=True,
        print_eval=False,
        print_step=25,
        plot_step=25,
        save_step=int(stage.save_every_steps or 10**9),
        save_n_checkpoints=stage.keep_checkpoints,
        training_seed=stage.seed,
        seq_len=stage.segment_frames * int(decoder_args["code_stride_len"]),  # Coqui's field; not used here
        toolkit={"stage": stage.describe()},
    )


def decoder_args_of(decoder: HifiDecoder, latent_dim: int) -> dict[str, Any]:
    """The :func:`build_gan_config` shape of a ``HifiDecoder`` fed ``latent_dim``-channel latents."""
    return {
        "latent_dim": int(latent_dim),
        "speaker_dim": int(decoder.waveform_decoder.cond_layer.in_channels),
        "code_stride_len": int(decoder.ar_mel_length_compression),
        "input_sample_rate": int(decoder.input_sample_rate),
        "output_sample_rate": int(decoder.output_sample_rate),
        "output_hop_length": int(decoder.output_hop_length),
        "cond_d_vector_in_each_upsampling_layer": bool(decoder.waveform_decoder.cond_in_each_up_layer),
    }


def decoder_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ``HifiDecoder`` weights in an XTTS model.pth or GPT-stage checkpoint state dict, unprefixed."""
    for prefix in XTTS_DECODER_PREFIXES:
        found = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if found:
            return found
    return {}


class SpeakerConditionedGenerator(nn.Module):
    """``HifiDecoder`` as a one-input generator: ``x`` is (B, frames, latent_dim + speaker_dim)."""

    def __init__(self, decoder: HifiDecoder, latent_dim: int) -> None:
        super().__init__()
        self.decoder = decoder
        self.latent_dim = int(latent_dim)
        decoder.speaker_encoder.requires_grad_(False)
        decoder.speaker_encoder.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        latents = x[..., : self.latent_dim]
        speaker = x[:, 0, self.latent_dim :].unsqueeze(-1)  # (B, speaker_dim, 1), as Xtts passes it
        return self.decoder(latents, g=speaker)

    def train(self, mode: bool = True) -> "SpeakerConditionedGenerator":
        super().train(mode)
        self.decoder.speaker_encoder.eval()  # frozen: its batch-norm statistics stay XTTS's
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.decoder.waveform_decoder.parameters() if p.requires_grad]


class RenamedLoss(nn.Module):
    """A Coqui loss module whose returned terms carry the stage's names (:data:`LOSS_NAMES`)."""

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return {LOSS_NAMES.get(k, k): v for k, v in self.loss(*args, **kwargs).items()}


class DecoderGAN(GAN):
    """Coqui's GAN with XTTS's decoder as the generator (see the module docstring)."""

    loss_keys = LOSS_KEYS
    lr_optimizer = 1  # Coqui's GAN order: [discriminator, generator]; the run follows the generator
    lr_option = "--decoder-lr"

    def __init__(self, config: DecoderGANConfig) -> None:
        BaseVocoder.__init__(self, config)  # not GAN.__init__: it builds a generator by name
        decoder = HifiDecoder(
            input_sample_rate=config.input_sample_rate,
            output_sample_rate=config.output_sample_rate,
            output_hop_length=config.output_hop_length,
            ar_mel_length_compression=config.code_stride_len,
            decoder_input_dim=config.latent_dim,
            d_vector_dim=config.speaker_dim,
            cond_d_vector_in_each_upsampling_layer=config.cond_d_vector_in_each_upsampling_layer,
        )
        if config.decoder_init:
            _load_decoder_weights(decoder, config.decoder_init)
        self.model_g = SpeakerConditionedGenerator(decoder, config.latent_dim)
        self.model_d = HifiganDiscriminator()
        self.train_disc = False  # GAN's state: the discriminator has joined
        self.y_hat_g = None
        self.y_hat_sub = self.y_sub_g = None
        self.align = FrameAlignment.of(decoder)

    def get_criterion(self) -> list[nn.Module]:
        return [RenamedLoss(loss) for loss in super().get_criterion()]

    def evaluation_fields(self, trainer: Any) -> dict[str, Any]:
        """The discriminator's LR (it takes the generator's plateau cuts) and whether it has joined."""
        disc = trainer.scheduler[0] if trainer.scheduler else None
        return {
            "lr_disc": disc.current_lr() if isinstance(disc, LRBridge) else None,
            "discriminator_on": bool(self.train_disc),
        }

    def get_optimizer(self) -> list[torch.optim.Optimizer]:
        from trainer.trainer_utils import get_optimizer

        c = self.config
        disc = get_optimizer(c.optimizer, c.optimizer_params, c.lr_disc, parameters=self.model_d.parameters())
        gen = get_optimizer(c.optimizer, c.optimizer_params, c.lr_gen, parameters=self.model_g.trainable_parameters())
        return [disc, gen]

    def get_scheduler(self, optimizer: list[torch.optim.Optimizer]) -> list[LRBridge]:
        return [
            LRBridge(optimizer[0], ScheduleSpec(**self.config.disc_schedule)),
            LRBridge(optimizer[1], ScheduleSpec(**self.config.gen_schedule)),
        ]

    def get_data_loader(self, config: Any, *, is_eval: bool = False, samples: list[Any] | None = None, **_: Any) -> Any:
        clips = list(samples or [])
        if is_eval:
            dataset = ClipDataset(clips, self.align, config.eval_max_frames)
            return build_loader(dataset, batch_size=1, shuffle=False)
        dataset = SegmentDataset(clips, self.align, config.segment_frames, config.segments_per_clip)
        if dataset.too_short:
            logger.info(
                "%d training clips are shorter than a segment (%d frames) and are left out",
                len(dataset.too_short),
                config.segment_frames,
            )
        return build_loader(
            dataset,
            batch_size=config.batch_size,
            shuffle=True,
            num_workers=config.num_loader_workers,
            seed=config.training_seed,
        )

    def train_log(self, batch: dict[str, Any], outputs: dict[str, Any], logger: Any, steps: int) -> None:
        if self.config.tensorboard_figures:
            super().train_log(batch, outputs, logger, steps)
        else:
            logger.train_audios(steps, {"train/audio": self._sample(outputs)}, self.ap.sample_rate)

    def eval_log(self, batch: dict[str, Any], outputs: dict[str, Any], logger: Any, steps: int) -> None:
        if self.config.tensorboard_figures:
            super().eval_log(batch, outputs, logger, steps)
        else:
            logger.eval_audios(steps, {"eval/audio": self._sample(outputs)}, self.ap.sample_rate)

    def _sample(self, outputs: dict[str, Any]) -> Any:
        """The first output waveform of the step (GAN's choice of optimizer output)."""
        y_hat = outputs["model_outputs_0"] if self.train_disc else outputs["model_outputs_1"]
        return y_hat[0].squeeze(0).detach().cpu().numpy()

    @torch.inference_mode()
    def eval_step(
        self, batch: dict[str, Any], criterion: nn.Module, optimizer_idx: int | None = None
    ) -> tuple[dict, dict]:
        return self.train_step(batch, criterion, optimizer_idx)  # not GAN's: the discriminator joins when it trains


def _load_decoder_weights(decoder: HifiDecoder, path: str) -> None:
    from utils.errors import DataError
    from utils.safe_load import load_torch_file

    data = load_torch_file(path)
    state = decoder_state(data.get("model", data) if isinstance(data, dict) else {})
    if not state:
        raise DataError(f"{path} holds no hifigan_decoder weights; pass an XTTS model.pth")
    decoder.load_state_dict(state, strict=True)
    logger.info("decoder weights from %s", path)
