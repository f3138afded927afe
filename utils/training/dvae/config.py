"""The DVAE stage's settings: one frozen dataclass, each default with where it came from.

Pure Python (no torch, no TTS), so a dry run can show the stage's values instantly.

The one public full-size data point is the fork ``anhnh2002/XTTSv2-Finetuning-for-New-Languages``
(``train_dvae_xtts.py``): Adam, LR 5e-6, 5 epochs, batch 512 whole clips (up to 11.6 s each),
gradient clipping at 0.5, the best eval loss kept. The toolkit trains on random fixed-length crops
instead of whole padded clips (every item the same shape, no padding inside the losses), so its
batch counts crops:

- ``crop_frames`` 128 mel frames = 32 codes = 1.49 s at 22,050 Hz: long enough that the
  convolutions' zero padding at the crop edges touches a small share of the frames, short enough
  that clips of the usual 2-11 s give several crops each.
- ``crops_per_clip`` None: each clip yields one random crop per crop length of its audio, so one
  epoch sees about as much audio as the fork's epoch of whole clips and "5 epochs" keeps its meaning.
- ``batch_size`` 64 crops (about 95 s of audio per optimizer step, against roughly 50 min in the
  fork's batch of 512 clips). On small data the fork's batch leaves almost no steps (1 h of
  speech: 2 optimizer steps per epoch, 10 in all, so LR 5e-6 moves nothing); 64 crops give about
  38 steps per epoch on 1 h. The LR stays the fork's 5e-6: the DVAE defines the GPT's targets
  and should move little; the plateau rule halves it when the held-out loss stops improving.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from utils.errors import ConfigError

#: Mel frames per code: GPTTrainer's DiscreteVAE has ``num_layers=2`` convolutions of stride 2.
DOWNSAMPLING = 4
#: Samples per mel frame of the DVAE's mel front end (TorchMelSpectrogram, hop 256 at 22,050 Hz).
HOP_LENGTH = 256
#: The DVAE's audio rate (``config.audio.dvae_sample_rate`` of XTTS v2).
SAMPLE_RATE = 22050

#: Settings whose None is a value (not "use the default").
NULLABLE = ("crops_per_clip", "eval_every_steps", "save_every_steps", "save_every_minutes")

FORK = "anhnh2002/XTTSv2-Finetuning-for-New-Languages train_dvae_xtts.py"

#: Where each default comes from (shown by :meth:`DVAEStageConfig.describe`).
DEFAULT_SOURCES: dict[str, str] = {
    "lr": f"{FORK} (LEARNING_RATE)",
    "epochs": f"{FORK} (epochs)",
    "batch_size": "toolkit: 64 crops per step (the fork's 512 whole clips leave small data almost no steps)",
    "eval_batch_size": "toolkit: evaluation only, no gradients",
    "crop_frames": "toolkit: 1.49 s crops (32 codes), a multiple of the DVAE's downsampling of 4",
    "crops_per_clip": "toolkit: None = one crop per crop length of audio (an epoch covers about all of it)",
    "grad_clip": f"{FORK} (GRAD_CLIP_NORM)",
    "weight_decay": f"{FORK} (plain Adam: no weight decay)",
    "betas": "torch.optim.AdamW default (the fork's Adam default)",
    "eps": "torch.optim.AdamW default",
    "lr_scheduler": "toolkit: the eval-loss plateau rule (utils/training/lr_schedule.py)",
    "plateau_factor": "toolkit GPT default",
    "plateau_patience": "toolkit: with one evaluation per epoch over 5 epochs, the GPT's 5 would never fire",
    "plateau_threshold": "toolkit GPT default (torch's ReduceLROnPlateau)",
    "min_lr": "toolkit GPT default",
    "eval_every_steps": "toolkit: None = once per epoch",
    "codebook_ema": "DiscreteVAE in train mode (the fork): the codebook follows the data by its EMA",
    "restart_unused_codes": "off: a trained DVAE's codebook is in use; on moves codes no input picks onto "
    "encoder outputs (a DVAE trained from random weights collapses onto a few codes without it)",
    "codebook_from_data": "off: keeps the base's codes; on places the whole codebook on encoder outputs at the "
    "first step (a DVAE from random weights only: every code the GPT knew changes)",
    "heldout_clips": "toolkit: bounds the cost of the held-out metrics at every evaluation",
    "keep_checkpoints": "toolkit: the stage's product is dvae.pth; one full checkpoint to resume from",
    "save_every_steps": "toolkit: None = checkpoints by time (save_every_minutes), at the end and on Ctrl-C",
    "save_every_minutes": "the GPT stage's default (15): a killed stage loses at most that much",
    "num_loader_workers": "toolkit GPT default",
    "seed": "toolkit GPT default",
}


@dataclass(frozen=True)
class DVAEStageConfig:
    """What the DVAE stage trains with. Build with :meth:`build` to record which values the caller set.

    Units: ``batch_size`` and ``eval_batch_size`` in crops, ``crop_frames`` in mel frames (256
    samples each at 22,050 Hz), ``eval_every_steps`` in optimizer steps, ``plateau_patience`` in
    evaluations.
    """

    lr: float = 5e-6
    epochs: int = 5
    batch_size: int = 64
    eval_batch_size: int = 64
    crop_frames: int = 128
    crops_per_clip: int | None = None
    grad_clip: float = 0.5
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    lr_scheduler: str = "ReduceLROnPlateau"
    plateau_factor: float = 0.5
    plateau_patience: int = 1
    plateau_threshold: float = 1e-4
    min_lr: float = 1e-7
    eval_every_steps: int | None = None
    codebook_ema: bool = True
    restart_unused_codes: bool = False
    codebook_from_data: bool = False
    heldout_clips: int = 64
    keep_checkpoints: int = 1
    save_every_steps: int | None = None
    save_every_minutes: float | None = 15.0
    num_loader_workers: int = 2
    seed: int = 1
    set_by_caller: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        object.__setattr__(self, "set_by_caller", tuple(self.set_by_caller))
        if self.crop_frames <= 0 or self.crop_frames % DOWNSAMPLING:
            nearest = max(DOWNSAMPLING, self.crop_frames // DOWNSAMPLING * DOWNSAMPLING)
            raise ConfigError(
                f"DVAE crop_frames {self.crop_frames} must be a positive multiple of {DOWNSAMPLING} (one code per "
                f"{DOWNSAMPLING} mel frames); use e.g. {nearest}"
            )
        for name in ("epochs", "batch_size", "eval_batch_size", "heldout_clips", "keep_checkpoints"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"DVAE {name} must be at least 1, got {getattr(self, name)}")
        for name in NULLABLE:
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"DVAE {name} must be positive or None, got {value}")
        if not self.lr > 0 or not self.min_lr >= 0:
            raise ConfigError(f"DVAE lr must be > 0 and min_lr >= 0, got lr {self.lr}, min_lr {self.min_lr}")

    @classmethod
    def build(cls, **values: Any) -> DVAEStageConfig:
        """The defaults with ``values`` on top; the names given are recorded as set by the caller.

        Raises:
            ConfigError: an unknown name or an invalid value.
        """
        known = {f.name for f in fields(cls)} - {"set_by_caller"}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown DVAE stage setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        given = {k: v for k, v in values.items() if v is not None or k in NULLABLE}
        return cls(**given, set_by_caller=tuple(sorted(given)))

    @property
    def crop_samples(self) -> int:
        """Samples of audio in one crop (at 22,050 Hz)."""
        return self.crop_frames * HOP_LENGTH

    def as_dict(self) -> dict[str, Any]:
        """The values as plain data (for config.json and checkpoints)."""
        out = asdict(self)
        out["betas"] = list(self.betas)
        out["set_by_caller"] = list(self.set_by_caller)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DVAEStageConfig:
        """Inverse of :meth:`as_dict` (a resumed stage reads its settings back from its folder)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in values.items() if k in names})

    def describe(self) -> dict[str, dict[str, Any]]:
        """Every value with its source: the caller, or where the default comes from."""
        out = {}
        for f in fields(self):
            if f.name == "set_by_caller":
                continue
            value = getattr(self, f.name)
            source = "set by the caller" if f.name in self.set_by_caller else DEFAULT_SOURCES.get(f.name, "default")
            out[f.name] = {"value": list(value) if isinstance(value, tuple) else value, "source": source}
        return out
