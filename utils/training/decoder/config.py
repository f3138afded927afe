"""The decoder stage's settings: one frozen table of values, each with where it comes from.

Pure Python (no torch), so a dry run can list the values instantly. :func:`utils.training.decoder.gan.
build_gan_config` turns them into the Coqui config the Trainer reads.

Why these values (HiFi-GAN: Kong et al. 2020, https://arxiv.org/abs/2010.05646, and its code's
``config_v1.json``; Coqui's ``HifiganConfig`` in coqui-tts 0.28):

- Learning rates. HiFi-GAN trains from scratch at 2e-4 for both networks (AdamW, betas 0.8/0.99,
  weight decay 0.01, LR x 0.999 per epoch). Here the generator is XTTS's trained decoder: it only
  has to follow the shift in the latents that a fine-tuned GPT brings, on a user's data (minutes
  to hours, where 2e-4 overfits within a few hundred steps). So the generator gets 2e-5, a tenth
  of the from-scratch rate and a fifth of the one public XTTS decoder fine-tune
  (tuanh123789/Train_Hifigan_XTTS: 1e-4 on LJSpeech's 24 h). XTTS's discriminators were never
  released, so the discriminator starts from random weights and gets the published 2e-4 to catch
  up with a generator that is already good.
- Segments of 8 latent frames: 8 x 1024 samples at 22.05 kHz = 8,704 samples at 24 kHz, the
  size of HiFi-GAN's 8,192-sample training segment (32 generator frames of 256 samples either
  way). Batch 16 as published.
- Losses and weights as Coqui's HifiganConfig: mel L1 x 45, feature matching x 108 (Coqui's
  feature loss averages over layers where the paper sums, hence 108 instead of 2), least-squares
  adversarial x 1. The multi-resolution STFT loss (ParallelWaveGAN's resolutions, Coqui's
  defaults) is computed for the logs and the held-out metric; HiFi-GAN trains without it, so its
  weight is 0 unless set (its spectral-convergence term, ``|Y - Y'| / |Y|``, is unbounded on a
  near-silent segment: the training average can jump by orders of magnitude; the held-out value,
  on whole clips, is the one to read).
- Warm start: the first 500 generator steps use the reconstruction losses only, so the
  generator adapts to the new latents before a fresh discriminator's gradients reach it; the
  discriminator trains from then on.
- Gradient clipping 5 for each network (Coqui's GAN vocoder default; with the mel loss x 45 the
  generator's gradient norm is far above 5 on nearly every step, so clipping sets the step's scale;
  AdamW divides that scale out again, and it caps a spike when the discriminator joins).
- LR schedule: the toolkit's LR bridge with ReduceLROnPlateau on the held-out mel L1 (factor 0.5
  after 3 evaluations without improvement; the GPT stage's rule with a shorter patience, since a
  decoder fine-tune has few evaluations). The discriminator's LR follows the same cuts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from utils.errors import ConfigError

#: Where each default comes from (shown with the values; recorded in the stage's config.json).
SOURCES: dict[str, str] = {
    "lr_gen": "a tenth of HiFi-GAN's published 2e-4: the XTTS decoder is trained already",
    "lr_disc": "HiFi-GAN's published 2e-4: XTTS's discriminators were never released, so it starts from scratch",
    "betas": "HiFi-GAN (AdamW betas 0.8, 0.99)",
    "weight_decay": "HiFi-GAN (AdamW weight decay 0.01)",
    "epochs": "toolkit default: 20 passes of segments_per_clip random segments per clip",
    "batch_size": "HiFi-GAN (16)",
    "segment_frames": "8 latent frames = 8,704 samples at 24 kHz, about HiFi-GAN's 8,192-sample segment",
    "segments_per_clip": "toolkit default: an epoch draws 8 random segments from every clip",
    "warm_start_steps": "toolkit default: 500 reconstruction-only generator steps before the discriminator joins",
    "grad_clip_gen": "Coqui's GAN vocoder default (5)",
    "grad_clip_disc": "Coqui's GAN vocoder default (5)",
    "mel_loss_weight": "HiFi-GAN / Coqui HifiganConfig (45)",
    "feat_match_weight": "Coqui HifiganConfig (108; the paper's 2 with Coqui's averaged feature loss)",
    "adv_weight": "HiFi-GAN / Coqui HifiganConfig (1, least squares)",
    "stft_loss_weight": "0: HiFi-GAN trains without it; it is logged and evaluated",
    "lr_scheduler": "the toolkit's LR bridge on the held-out mel L1",
    "plateau_patience": "toolkit default: 3 evaluations without improvement",
    "plateau_factor": "the GPT stage's rule (0.5)",
    "min_lr": "the GPT stage's rule (1e-7)",
    "warmup_steps": "0: the generator is trained already",
    "eval_every_steps": "None: once per epoch",
    "eval_max_frames": "None: whole held-out clips",
    "save_every_steps": "None: checkpoints at the end, on Ctrl-C and every save_every_minutes",
    "save_every_minutes": "the GPT stage's default (15)",
    "keep_checkpoints": "toolkit default (1: a GAN checkpoint with both optimizers is about 1 GB)",
    "num_loader_workers": "0: segments are slices of memory-mapped arrays",
    "tensorboard_figures": "Coqui's GAN vocoder (spectrogram figures with the audio at each evaluation)",
    "seed": "toolkit default (1)",
}


@dataclass(frozen=True)
class DecoderStageConfig:
    """Hyperparameters of the HiFi-GAN decoder fine-tune (see the module docstring for the reasons).

    Step counts are trainer steps: one generator step (and, after the warm start, one
    discriminator step) per batch.
    """

    lr_gen: float = 2e-5
    lr_disc: float = 2e-4
    betas: tuple[float, float] = (0.8, 0.99)
    weight_decay: float = 0.01
    epochs: int = 20
    batch_size: int = 16
    segment_frames: int = 8
    segments_per_clip: int = 8
    warm_start_steps: int = 500
    grad_clip_gen: float = 5.0
    grad_clip_disc: float = 5.0
    mel_loss_weight: float = 45.0
    feat_match_weight: float = 108.0
    adv_weight: float = 1.0
    stft_loss_weight: float = 0.0
    lr_scheduler: str = "ReduceLROnPlateau"
    plateau_patience: int = 3
    plateau_factor: float = 0.5
    min_lr: float = 1e-7
    warmup_steps: int = 0
    eval_every_steps: int | None = None
    eval_max_frames: int | None = None
    save_every_steps: int | None = None
    save_every_minutes: float | None = 15.0
    keep_checkpoints: int = 1
    num_loader_workers: int = 0
    tensorboard_figures: bool = True
    seed: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        positive = ("lr_gen", "lr_disc", "epochs", "batch_size", "segment_frames", "segments_per_clip")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ConfigError(f"decoder stage: {name} must be positive (got {getattr(self, name)})")
        if self.warm_start_steps < 0:
            raise ConfigError(f"decoder stage: warm_start_steps must be 0 or more (got {self.warm_start_steps})")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"decoder stage: betas must be two values in [0, 1) (got {self.betas})")
        if self.eval_max_frames is not None and self.eval_max_frames < self.segment_frames:
            raise ConfigError(
                f"decoder stage: eval_max_frames ({self.eval_max_frames}) must be at least segment_frames "
                f"({self.segment_frames}); pass None to evaluate whole clips"
            )

    @classmethod
    def build(cls, **values: Any) -> DecoderStageConfig:
        """Defaults overridden by ``values``; an unknown name is a :class:`ConfigError` naming the known ones."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(
                f"decoder stage: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return cls(**values)

    def describe(self) -> dict[str, dict[str, Any]]:
        """Every value with its source: the default's reason, or "set" where it differs from the default."""
        default = DecoderStageConfig()
        out = {}
        for name, value in asdict(self).items():
            source = SOURCES.get(name, "toolkit default")
            out[name] = {"value": value, "source": source if value == getattr(default, name) else "set"}
        return out
