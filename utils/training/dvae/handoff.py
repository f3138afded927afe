"""Hand the DVAE stage's dvae.pth to the GPT stage (the step between them in ``--stages dvae,gpt,...``).

The GPT stage reads its DVAE from ``config.model_args.dvae_checkpoint`` (GPTTrainer loads it with
``strict=False``; the stage's file has exactly the base's keys, so every weight arrives). Its clip
cache keys the codes by that file's path, size and modification time, so after the hand-off the
GPT trains on the new DVAE's codes, never on codes cached from the base DVAE.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from utils.training.dvae.stage import DVAE_FILE, REPORT_FILE, STAGE_FOLDER

logger = logging.getLogger(__name__)


def stage_dvae_path(run_dir: str | Path) -> Path | None:
    """The dvae.pth of a finished DVAE stage in ``run_dir`` (None: no stage, or it did not finish).

    A stage is finished once its report exists: the report is written after dvae.pth is complete.
    """
    stage_dir = Path(run_dir) / STAGE_FOLDER
    path = stage_dir / DVAE_FILE
    return path if path.is_file() and (stage_dir / REPORT_FILE).is_file() else None


def use_stage_dvae(gpt_config: Any, run_dir: str | Path) -> Path | None:
    """Point ``gpt_config`` (a GPTTrainerConfig) at the DVAE stage's dvae.pth, if ``run_dir`` has one.

    The base DVAE it replaces is kept in ``gpt_config.toolkit["dvae"]`` when the config has a
    toolkit record (the toolkit's GPT config does), so the run says which DVAE made its targets.

    Returns:
        The dvae.pth now in use, or None (the config is unchanged).
    """
    path = stage_dvae_path(run_dir)
    if path is None:
        return None
    previous = gpt_config.model_args.dvae_checkpoint
    gpt_config.model_args.dvae_checkpoint = str(path)
    toolkit = getattr(gpt_config, "toolkit", None)
    if isinstance(toolkit, dict):
        toolkit["dvae"] = {"dvae_checkpoint": str(path), "replaced": str(previous)}
    logger.info("GPT stage: DVAE codes from the fine-tuned %s (instead of %s)", path, previous)
    return path
