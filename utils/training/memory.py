"""Where a training step's GPU memory goes: recomputed activations, frozen modules off the GPU, the
CUDA allocator's segments.

Which blocks are recomputed and which modules are frozen is the stage's choice (the GPT's:
:mod:`utils.training.gpt.kernels` and :class:`utils.training.gpt.model.SpeedLevers`); the
largest micro-batch that fits is :mod:`utils.training.batch_size`'s.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn as nn

from utils.training import compat
from utils.training.compile import no_cudnn_backends, under_backends

logger = logging.getLogger(__name__)


def expandable_segments(cuda: bool) -> list[str]:
    """CUDA allocator segments that grow instead of new ones (less fragmentation); ``["expandable_segments"]``
    when set, ``[]`` without CUDA or on allocators without the setting."""
    if not cuda:
        return []
    try:
        compat.set_allocator_settings("expandable_segments:True")
    except RuntimeError as exc:  # older allocators
        logger.info("expandable_segments not available: %s", exc)
        return []
    return ["expandable_segments"]


def checkpoint_blocks(blocks: Iterable[nn.Module], *, exclude_cudnn: bool = False) -> int:
    """Recompute each block in backward instead of storing its activations (eager blocks); returns how many.

    With ``exclude_cudnn`` the forward and its recomputation run under the same SDPA backends
    (flash / memory-efficient / math), else the saved tensors could differ. Compiled blocks are
    checkpointed by :func:`utils.training.compile.compile_blocks` (``recompute=True``) instead.
    """
    n = 0
    for block in blocks:
        checkpoint_module(block, exclude_cudnn)
        n += 1
    return n


def checkpoint_module(module: nn.Module, exclude_cudnn: bool = False) -> None:
    """``module``'s training forwards (train mode, autograd on) under a non-reentrant activation checkpoint."""
    from torch.utils.checkpoint import checkpoint

    inner = module.forward
    run = under_backends(inner, no_cudnn_backends() if exclude_cudnn else None)

    def forward(*args: Any, **kwargs: Any) -> Any:
        if module.training and torch.is_grad_enabled():
            return checkpoint(run, *args, use_reentrant=False, **kwargs)
        return inner(*args, **kwargs)

    # Coqui builds these blocks (GPT2 blocks, conditioning-encoder blocks): not ours to subclass
    compat.replace_forward(module, forward)


def offload_to_cpu(modules: dict[str, nn.Module]) -> list[str]:
    """Move modules a training step never uses to the CPU and release their GPU memory; returns their names."""
    moved = []
    for name, module in modules.items():
        module.to("cpu")
        moved.append(name)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return moved
