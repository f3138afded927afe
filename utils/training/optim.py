"""The optimizer of a training run: Coqui's AdamW, fused into one kernel per step, or 8-bit.

The stage's model builds its optimizer (``get_optimizer``, Coqui's parameter groups); the GPT
stage's override (:class:`utils.training.gpt.model.SpeedLevers`) passes it through
:func:`build_optimizer`.
"""

from __future__ import annotations

from typing import Any

import torch

from utils.errors import ConfigError
from utils.training import compat


def use_fused_adamw(config: Any, model_config: Any, opts: Any, cuda: bool) -> list[str]:
    """``optimizer_params["fused"] = True`` for AdamW on CUDA (not with the 8-bit optimizer).

    Args:
        config: the Trainer's config (changed in place).
        model_config: the model's own config, or None. GPTTrainer keeps a copy and builds its
            optimizer from it (``get_optimizer`` reads ``self.config.optimizer_params``), so the
            lever reaches that copy too.
        opts: the run's :class:`~utils.training.speed_options.SpeedOptions`.
        cuda: training runs on a CUDA GPU.

    Returns:
        ``["fused_adamw"]`` when applied, else ``[]``.
    """
    applied = []
    if opts.fused_adamw and cuda and not opts.optimizer_8bit and str(config.optimizer).lower() == "adamw":
        config.optimizer_params = {**(config.optimizer_params or {}), "fused": True}
        applied.append("fused_adamw")
    if model_config is not None and model_config is not config:
        model_config.optimizer_params = config.optimizer_params
    return applied


def build_optimizer(base: torch.optim.Optimizer, config: Any, opts: Any) -> torch.optim.Optimizer:
    """``base`` (the model's own optimizer, no state yet), or bitsandbytes' AdamW8bit over its groups.

    With ``opts.optimizer_8bit`` the 8-bit optimizer gets ``base``'s parameter groups and weight
    decays, and ``config``'s LR, betas, eps and weight decay.

    Raises:
        ConfigError: 8-bit asked and bitsandbytes missing.
    """
    if opts is None or not opts.optimizer_8bit:
        return base
    try:
        import bitsandbytes as bnb
    except ImportError as exc:
        raise ConfigError(
            "the 8-bit optimizer needs bitsandbytes: pip install 'bitsandbytes>=0.45', "
            "or turn it off (--no-optimizer-8bit)"
        ) from exc
    params = dict(config.optimizer_params or {})
    params.pop("fused", None)
    groups = [{k: v for k, v in g.items() if k in ("params", "weight_decay")} for g in base.param_groups]
    opt = bnb.optim.AdamW8bit(
        groups,
        lr=config.lr,
        betas=tuple(params.get("betas", (0.9, 0.999))),
        eps=params.get("eps", 1e-8),
        weight_decay=params.get("weight_decay", 1e-2),
    )
    compat.copy_group_names(base, opt)
    return opt
