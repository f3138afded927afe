"""XTTS's DiscreteVAE as a Coqui ``TrainerModel`` (wrapped, not copied).

The DVAE is built with exactly the arguments ``GPTTrainer`` uses (coqui-tts 0.28,
``TTS/tts/layers/xtts/trainer/gpt_trainer.py``) and fed by the same mel front end
(``TorchMelSpectrogram`` at ``config.audio.dvae_sample_rate`` divided by the base's
``mel_stats.pth``), so the weights it writes drop into the GPT stage unchanged. Every model file
is read with the toolkit's safe loader (utils/safe_load.py); GPTTrainer reads dvae.pth with
``strict=False``, which would leave a DVAE silently random, so here a dvae.pth missing any weight
is refused.

The losses are ``DiscreteVAE.forward``'s own: the per-element mel reconstruction error (MSE)
averaged, plus the codebook commitment loss; ``loss`` is their sum, as in the public DVAE
fine-tuning script of anhnh2002/XTTSv2-Finetuning-for-New-Languages. In train mode the forward
also moves the codebook by its exponential moving average (no optimizer involved); with
``codebook_ema`` off the codebook is held in eval mode and keeps its vectors.

Upstream behaviour worked around: ``DiscreteVAE.forward`` in eval mode decodes from the codes,
which carries no gradient to the encoder and stops the codebook's EMA. Coqui's Trainer leaves the
model in eval mode after an evaluation until the next epoch's ``model.train()``, so
:meth:`ToolkitDVAE.train_step` sets train mode itself on every step.

For the toolkit's trainer (utils/training/stage.py) the model names its losses (``loss_keys``:
every evaluation record has the train and eval reconstruction and commitment losses), the option
that sets its LR (``lr_option``) and, through ``evaluation_fields``, adds the held-out numbers of
each evaluation (:mod:`utils.training.dvae.metrics`) to its record.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn
from trainer import TrainerModel
from TTS.tts.layers.tortoise.arch_utils import TorchMelSpectrogram
from TTS.tts.layers.xtts.dvae import DiscreteVAE

from utils.errors import BaseModelError
from utils.safe_load import load_torch_file
from utils.training.dvae.codebook import CodebookRestart
from utils.training.dvae.config import DOWNSAMPLING
from utils.training.dvae.data import build_loader
from utils.training.lr_schedule import LRBridge, ScheduleSpec

logger = logging.getLogger(__name__)

LOSS_KEYS = ("loss", "recon_loss", "commitment_loss")


def build_dvae(num_tokens: int = 1024) -> DiscreteVAE:
    """XTTS v2's DVAE with GPTTrainer's arguments (``num_tokens`` = ``gpt_num_audio_tokens - 2``)."""
    return DiscreteVAE(
        channels=80,
        normalization=None,
        positional_dims=1,
        num_tokens=int(num_tokens),
        codebook_dim=512,
        hidden_dim=512,
        num_resnet_blocks=3,
        kernel_size=3,
        num_layers=2,
        use_transposed_convs=False,
    )


def load_dvae_weights(dvae: nn.Module, path: str | Path) -> None:
    """Load a dvae.pth (a plain state dict) into ``dvae``, safely and completely.

    Raises:
        UnsafeModelFileError: the file pickles objects other than tensors.
        BaseModelError: the file is not a state dict or lacks some of the DVAE's weights.
    """
    state = load_torch_file(path)
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise BaseModelError(
            f"{path} is not a DVAE state dict (name -> tensor); pass the base's dvae.pth or one the DVAE stage wrote"
        )
    result = dvae.load_state_dict(state, strict=False)
    if result.missing_keys:
        total = len(dvae.state_dict())
        raise BaseModelError(
            f"{path} lacks {len(result.missing_keys)} of the DVAE's {total} weights (e.g. {result.missing_keys[0]}); "
            "training would start from random weights: pass XTTS v2's dvae.pth (scripts/download_xtts_v2.py)"
        )
    if result.unexpected_keys:
        logger.warning("%s: %d keys the DVAE does not use, ignored", path, len(result.unexpected_keys))


def build_mel_frontend(mel_norm_file: str | Path, sample_rate: int) -> TorchMelSpectrogram:
    """GPTTrainer's DVAE mel front end, with the mel statistics read by the safe loader.

    Raises:
        BaseModelError: mel_stats.pth is not a tensor of 80 per-channel values.
    """
    norms = load_torch_file(mel_norm_file)
    if not torch.is_tensor(norms) or tuple(norms.shape) != (80,):
        raise BaseModelError(
            f"{mel_norm_file} is not XTTS's mel statistics (a tensor of 80 values); pass the base's mel_stats.pth"
        )
    mel = TorchMelSpectrogram(mel_norm_file=None, sampling_rate=int(sample_rate))
    mel.mel_norms = norms.float()  # what TorchMelSpectrogram would have read from the file itself
    return mel


def _codebook_restart(dvae: nn.Module, config: Any) -> CodebookRestart | None:
    """The dead-code restart on the DVAE's quantizer when the config asks for it (None: the codebook as trained)."""
    from_data = bool(getattr(config, "codebook_from_data", False))
    if not (from_data or getattr(config, "restart_unused_codes", False)):
        return None
    return CodebookRestart(dvae.codebook, from_data=from_data, seed=int(getattr(config, "training_seed", 0) or 0))


class ToolkitDVAE(TrainerModel):
    """The DVAE stage's model for Coqui's Trainer and the toolkit's ToolkitTrainer.

    Batches are ``{"wav": (batch, 1, samples)}`` of 22,050 Hz crops (utils/training/dvae/data.py);
    :meth:`format_batch_on_device` adds their mel frames. ``train_step``/``eval_step`` return
    ``{"loss", "recon_loss", "commitment_loss"}``.
    """

    loss_keys = LOSS_KEYS
    lr_option = "--dvae-lr"

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = config
        self.dvae = build_dvae(config.num_tokens)
        load_dvae_weights(self.dvae, config.dvae_checkpoint)
        self.codebook_restart = _codebook_restart(self.dvae, config)
        self.mel = build_mel_frontend(config.mel_norm_file, config.audio.dvae_sample_rate)
        self.heldout: Any = None  # utils.training.dvae.metrics.HeldOut: measured at every evaluation

    # --- data ---------------------------------------------------------------------------------

    @torch.no_grad()
    def mel_frames(self, wav: torch.Tensor) -> torch.Tensor:
        """(batch, 80, frames) DVAE mels of (batch[, 1], samples) audio, frames cut to a multiple of 4.

        The DVAE's output has as many frames as its input only for a multiple of its downsampling.
        """
        mel = self.mel(wav)
        return mel[..., : mel.shape[-1] // DOWNSAMPLING * DOWNSAMPLING]

    def format_batch_on_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        batch["mel"] = self.mel_frames(batch["wav"])
        return batch

    def get_data_loader(
        self, config: Any, *, is_eval: bool = False, samples: list[Any] | None = None, verbose: bool = True
    ) -> torch.utils.data.DataLoader:
        return build_loader(
            samples or [],
            crop_frames=int(config.crop_frames),
            batch_size=int(config.eval_batch_size if is_eval else config.batch_size),
            is_eval=is_eval,
            crops_per_clip=config.crops_per_clip,
            num_workers=int(config.num_eval_loader_workers if is_eval else config.num_loader_workers),
            seed=int(config.training_seed),
        )

    # --- steps --------------------------------------------------------------------------------

    def forward(self, mel: torch.Tensor) -> dict[str, torch.Tensor]:  # type: ignore[override]
        """DiscreteVAE.forward's losses (reconstruction averaged) and its reconstruction."""
        recon, commitment, out = self.dvae(mel)
        return {"recon_loss": recon.mean(), "commitment_loss": commitment, "model_outputs": out}

    def _losses(self, mel: torch.Tensor) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        out = self(mel)
        recon, commitment = out["recon_loss"], out["commitment_loss"]
        return {"model_outputs": out["model_outputs"].detach()}, {
            "loss": recon + commitment,
            "recon_loss": recon,
            "commitment_loss": commitment,
        }

    def set_train_mode(self) -> None:
        """Train mode; the codebook stays in eval mode (its EMA off) when ``codebook_ema`` is off."""
        self.train()
        if not getattr(self.config, "codebook_ema", True):
            self.dvae.codebook.eval()  # Quantize moves its codebook only while training

    def train_step(
        self, batch: dict[str, Any], criterion: Any = None, optimizer_idx: int | None = None
    ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        self.set_train_mode()  # see the module docstring: an evaluation may have left eval mode on
        return self._losses(batch["mel"])

    def eval_step(
        self, batch: dict[str, Any], criterion: Any = None, optimizer_idx: int | None = None
    ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        return self._losses(batch["mel"])

    def on_train_epoch_start(self, trainer: Any) -> None:
        self.set_train_mode()
        if self.codebook_restart is not None and trainer.total_steps_done > 0:
            self.codebook_restart.from_data = False  # a continued stage: its codebook is placed already

    def evaluation_fields(self, trainer: Any) -> dict[str, Any]:
        """The held-out numbers of the current weights (``heldout_*`` columns), when the stage set clips."""
        return self.heldout.fields(self) if self.heldout is not None else {}

    # --- optimizer and schedule ---------------------------------------------------------------

    def get_optimizer(self) -> torch.optim.Optimizer:
        """AdamW over the DVAE's weights (the codebook is a buffer: it moves by its EMA, not here)."""
        params = [p for p in self.dvae.parameters() if p.requires_grad]
        opt = dict(self.config.optimizer_params or {})
        return torch.optim.AdamW(
            params,
            lr=float(self.config.lr),
            betas=tuple(opt.get("betas", (0.9, 0.999))),
            eps=float(opt.get("eps", 1e-8)),
            weight_decay=float(opt.get("weight_decay", 0.0)),
            fused=True if params and params[0].is_cuda else None,
        )

    def get_scheduler(self, optimizer: list[torch.optim.Optimizer] | torch.optim.Optimizer) -> LRBridge:
        opt = optimizer[0] if isinstance(optimizer, (list, tuple)) else optimizer
        return LRBridge(opt, ScheduleSpec.from_config(self.config))

    def get_lr(self) -> float:
        return float(self.config.lr)

    def get_criterion(self) -> None:
        return None  # the losses are DiscreteVAE.forward's own

    # --- output -------------------------------------------------------------------------------

    def dvae_state_dict(self) -> dict[str, torch.Tensor]:
        """The DVAE's weights on the CPU in the base dvae.pth's key layout (what GPTTrainer loads)."""
        return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in self.dvae.state_dict().items()}
