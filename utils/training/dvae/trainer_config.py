"""The Coqui Trainer config of the DVAE stage, built from a :class:`DVAEStageConfig` and the base files."""

# No "from __future__ import annotations": Coqpit (load_json, used on resume) rejects string type hints.

import logging
from dataclasses import dataclass, field
from pathlib import Path

from trainer import TrainerConfig
from TTS.tts.configs.xtts_config import XttsAudioConfig

from utils.base_model import BaseModelFiles, load_base_config
from utils.training.dvae.config import SAMPLE_RATE, DVAEStageConfig

logger = logging.getLogger(__name__)

#: The Trainer's run name (its folder is the stage folder itself: ToolkitTrainer's ``run_folder``).
TRAINER_RUN_NAME = "dvae"


@dataclass
class DVAETrainerConfig(TrainerConfig):
    """TrainerConfig plus what :class:`~utils.training.dvae.model.ToolkitDVAE` builds and loads.

    ``toolkit["stage"]`` holds the :class:`DVAEStageConfig` values (saved in config.json and every
    checkpoint, read back on resume).
    """

    dvae_checkpoint: str = ""
    mel_norm_file: str = ""
    num_tokens: int = 1024
    audio: XttsAudioConfig = field(default_factory=XttsAudioConfig)
    crop_frames: int = 128
    crops_per_clip: int | None = None
    codebook_ema: bool = True
    restart_unused_codes: bool = False
    codebook_from_data: bool = False
    heldout_clips: int = 64
    num_loader_workers: int = 0
    num_eval_loader_workers: int = 0
    toolkit: dict = field(default_factory=dict)


def build_trainer_config(stage: DVAEStageConfig, base: BaseModelFiles, stage_dir: str | Path) -> DVAETrainerConfig:
    """The Trainer config for fine-tuning ``base``'s dvae.pth with ``stage`` into ``stage_dir``.

    The number of codes is the base's ``gpt_num_audio_tokens - 2`` (the GPT's start and stop
    codes), exactly as GPTTrainer builds its DVAE.
    """
    arch = load_base_config(base)
    audio = XttsAudioConfig(sample_rate=SAMPLE_RATE, dvae_sample_rate=SAMPLE_RATE, output_sample_rate=24000)
    return DVAETrainerConfig(
        output_path=str(stage_dir),
        run_name=TRAINER_RUN_NAME,
        project_name="xtts_finetune",
        run_description="XTTS v2 DVAE fine-tune (xtts-finetune-toolkit)",
        dashboard_logger="tensorboard",
        epochs=int(stage.epochs),
        batch_size=int(stage.batch_size),
        eval_batch_size=int(stage.eval_batch_size),
        lr=float(stage.lr),
        optimizer="AdamW",
        optimizer_params={
            "betas": list(stage.betas),
            "eps": float(stage.eps),
            "weight_decay": float(stage.weight_decay),
        },
        lr_scheduler=stage.lr_scheduler,
        lr_scheduler_params={
            "factor": float(stage.plateau_factor),
            "patience": int(stage.plateau_patience),
            "threshold": float(stage.plateau_threshold),
            "min_lr": float(stage.min_lr),
        },
        scheduler_after_epoch=False,  # the LR bridge counts optimizer steps; see utils/training/lr_schedule.py
        grad_clip=float(stage.grad_clip),
        print_step=50,
        plot_step=100,
        log_model_step=None,
        print_eval=False,
        run_eval=True,
        save_step=int(stage.save_every_steps or 10**9),
        save_n_checkpoints=int(stage.keep_checkpoints),
        save_checkpoints=True,
        test_delay_epochs=0,
        training_seed=int(stage.seed),
        cudnn_benchmark=True,  # every batch has the same shape (fixed-length crops): cuDNN picks its kernels once
        dvae_checkpoint=str(base.dvae),
        mel_norm_file=str(base.mel_stats),
        num_tokens=int(arch.get("gpt_num_audio_tokens", 1026)) - 2,
        audio=audio,
        crop_frames=int(stage.crop_frames),
        crops_per_clip=stage.crops_per_clip,
        codebook_ema=bool(stage.codebook_ema),
        restart_unused_codes=bool(stage.restart_unused_codes),
        codebook_from_data=bool(stage.codebook_from_data),
        heldout_clips=int(stage.heldout_clips),
        num_loader_workers=int(stage.num_loader_workers),
        num_eval_loader_workers=min(1, int(stage.num_loader_workers)),
        toolkit={"stage": stage.as_dict(), "base_model": str(base.root)},
    )
