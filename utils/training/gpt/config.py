"""Build the Coqui ``GPTTrainerConfig`` for a fine-tune from resolved hyperparameters."""

# No "from __future__ import annotations": Coqpit (load_json, used by --continue) rejects string type hints.

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from TTS.tts.configs.xtts_config import XttsAudioConfig
from TTS.tts.layers.xtts.trainer.gpt_trainer import GPTArgs, GPTTrainerConfig

from utils.base_model import BaseModelFiles, load_base_config
from utils.hparams import Resolved

logger = logging.getLogger(__name__)


@dataclass
class ToolkitGPTConfig(GPTTrainerConfig):
    """GPTTrainerConfig plus the toolkit's own record (saved in config.json and every checkpoint).

    ``toolkit`` holds the resolved hyperparameters with their sources, the dataset hours and where
    they came from, gradient accumulation, the evaluation interval and the language set-up.
    """

    toolkit: dict = field(default_factory=dict)


def _model_args(base: BaseModelFiles, arch: dict, vocab_path: str | Path | None) -> GPTArgs:
    """The GPT's arguments: the base's architecture, the toolkit's data limits, local files only."""
    return GPTArgs(
        max_conditioning_length=132300,  # 6 s at 22.05 kHz, as Coqui's XTTS v2 recipe
        min_conditioning_length=66150,  # 3 s
        debug_loading_failures=False,
        max_wav_length=255995,  # ~11.6 s
        max_text_length=200,
        mel_norm_file=str(base.mel_stats),  # never the default URL: it fails offline
        dvae_checkpoint=str(base.dvae),
        xtts_checkpoint=str(base.model),
        tokenizer_file=str(vocab_path or base.vocab),
        gpt_num_audio_tokens=arch.pop("gpt_num_audio_tokens", 1026),
        gpt_start_audio_token=arch.pop("gpt_start_audio_token", 1024),
        gpt_stop_audio_token=arch.pop("gpt_stop_audio_token", 1025),
        gpt_use_masking_gt_prompt_approach=arch.pop("gpt_use_masking_gt_prompt_approach", True),
        gpt_use_perceiver_resampler=arch.pop("gpt_use_perceiver_resampler", True),
        **arch,
    )


def build_config(
    hparams: Resolved,
    base: BaseModelFiles,
    *,
    output_path: str | Path,
    language: str = "en",
    run_name: str = "xtts_ft",
    vocab_path: str | Path | None = None,
    extra_languages: list[str] | None = None,
    eval_batch_size: int | None = None,
) -> ToolkitGPTConfig:
    """Return the GPTTrainerConfig for fine-tuning ``base`` with ``hparams``.

    Args:
        hparams: resolved hyperparameters (see :func:`utils.hparams.resolve`).
        base: checked base-model files; the architecture comes from its config.json.
        output_path: folder under which the run folder is created.
        language: training language code.
        vocab_path: vocab.json to train with (an extended one for a new language); default the base's.
        extra_languages: language codes to add to ``config.languages`` (new languages).
    """
    v = hparams.values
    arch = load_base_config(base)
    languages = arch.pop("languages")
    for code in [language, *(extra_languages or [])]:
        if code not in languages:
            languages.append(code)
    return ToolkitGPTConfig(
        epochs=int(v["epochs"]),
        output_path=os.path.abspath(output_path),  # run folder and the paths in it: the same from any folder
        model_args=_model_args(base, arch, vocab_path),
        run_name=run_name,
        project_name="xtts_finetune",
        run_description="XTTS v2 GPT fine-tune (xtts-finetune-toolkit)",
        dashboard_logger="tensorboard",
        audio=XttsAudioConfig(sample_rate=22050, dvae_sample_rate=22050, output_sample_rate=24000),
        languages=languages,
        **_loop_settings(v, eval_batch_size),
        **_optimizer_settings(hparams),
        toolkit={
            "hparams": hparams.as_dict(),
            "language": language,
            "grad_accum": int(v["grad_accum"]),
            "eval_every_steps": v["eval_every_steps"],
            "base_model": str(base.root),
        },
    )


def _loop_settings(v: dict, eval_batch_size: int | None) -> dict:
    """The Trainer loop's batches, loaders, logging, evaluation and saves from the resolved values."""
    return {
        "batch_size": int(v["batch_size"]),
        "eval_batch_size": int(eval_batch_size or v["batch_size"]),
        "num_loader_workers": int(v["num_loader_workers"]),
        "num_eval_loader_workers": min(1, int(v["num_loader_workers"])),
        "eval_split_max_size": 256,
        "print_step": 50,
        "plot_step": 100,
        "log_model_step": None,
        "print_eval": False,
        "run_eval": True,
        "save_step": int(v["save_every_steps"] or 10**9),  # None: time-based saves (ToolkitTrainer) only
        "save_n_checkpoints": int(v["keep_checkpoints"]),
        "save_checkpoints": True,
        "test_delay_epochs": 0,
        "training_seed": int(v["seed"]),
        "test_sentences": [],
    }


def _optimizer_settings(hparams: Resolved) -> dict:
    """The optimizer, LR schedule and gradient clipping from the resolved values."""
    v = hparams.values
    return {
        "optimizer": v["optimizer"],
        "optimizer_wd_only_on_weights": bool(v["weight_decay_only_on_weights"]),
        "optimizer_params": {
            "betas": list(v["betas"]),
            "eps": float(v["eps"]),
            "weight_decay": float(v["weight_decay"]),
        },
        "lr": float(v["lr"]),
        "lr_scheduler": v["lr_scheduler"],
        "lr_scheduler_params": hparams.scheduler_params(),
        "scheduler_after_epoch": False,  # the LR bridge counts optimizer steps; see utils/training/lr_schedule.py
        "grad_clip": float(v["grad_clip"]),
    }
