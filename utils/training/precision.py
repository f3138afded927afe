"""Numeric precision of a training step: bf16 autocast and TF32 matmuls.

bf16 reaches Coqui's Trainer through the config: Trainer 0.4 wraps ``train_step`` in
``torch.autocast`` with ``config.mixed_precision`` / ``config.precision`` and uses no GradScaler for
bf16 (``use_amp_scaler`` is only true for fp16). TF32 is the process-wide float32 matmul precision.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

logger = logging.getLogger(__name__)


def apply_precision(config: Any, opts: Any, cuda: bool) -> list[str]:
    """bf16 autocast (``config.mixed_precision``/``precision``) and TF32 where ``opts`` asks and CUDA allows.

    Args:
        config: the Trainer's config (changed in place).
        opts: the run's :class:`~utils.training.speed_options.SpeedOptions`.
        cuda: training runs on a CUDA GPU.

    Returns:
        The names of the levers applied.
    """
    applied: list[str] = []
    if opts.bf16:
        if cuda and torch.cuda.is_bf16_supported():
            config.mixed_precision = True
            config.precision = "bf16"
            applied.append("bf16")
        else:
            logger.info("bf16 autocast skipped: needs a CUDA GPU with bf16 support (training in fp32)")
    if opts.tf32 and cuda:
        torch.set_float32_matmul_precision("high")
        applied.append("tf32")
    return applied
