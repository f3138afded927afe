"""How a training step's blocks are compiled: ``torch.compile`` of each block, the SDPA attention
kernels chosen inside it, and where torch keeps its compile caches.

Which blocks a stage compiles is the stage's choice (the GPT's: :func:`utils.training.gpt.kernels.
training_blocks`); :func:`utils.training.speed_options.apply_speed_options` wires it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from utils.training import compat

# torch's compile caches, beside the clip cache in the output folder (see keep_compile_cache)
COMPILE_CACHE = ".compile_cache"


def no_cudnn_backends() -> list[Any]:
    """SDPA's flash, memory-efficient and math backends (every backend but cuDNN attention)."""
    from torch.nn.attention import SDPBackend

    return [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def sdpa_backends(cudnn: bool) -> list[Any]:
    """The SDPA backends a run's compiled blocks may use (cuDNN first where allowed, as torch orders them)."""
    from torch.nn.attention import SDPBackend

    return ([SDPBackend.CUDNN_ATTENTION] if cudnn else []) + no_cudnn_backends()


def under_backends(fn: Callable[..., Any], backends: list[Any] | None) -> Callable[..., Any]:
    """``fn`` inside ``sdpa_kernel(backends)`` (nothing added without backends)."""
    if not backends:
        return fn
    from torch.nn.attention import sdpa_kernel

    def body(*args: Any, **kwargs: Any) -> Any:
        with sdpa_kernel(backends):
            return fn(*args, **kwargs)

    return body


def exclude_cudnn_attention(module: nn.Module) -> None:
    """Run ``module.forward`` with SDPA limited to flash / memory-efficient / math backends.

    cuDNN attention (which PyTorch prefers for bf16 on Hopper) plans each new shape; with Coqui's
    masked forward that planning cost more than the kernel saved (BENCHMARKS.md). On packed rows
    (causal, no mask) cuDNN is the faster kernel on an H200, so this is off by default; the
    low-VRAM preset keeps it, as measured. The backward kernel follows the forward's choice.
    """
    # Coqui builds the module (the XTTS GPT): its instance gets the wrapped forward, nothing else does
    compat.replace_forward(module, under_backends(module.forward, no_cudnn_backends()))


def compile_blocks(
    blocks: Iterable[nn.Module], *, recompute: bool = False, attention_backends: list[Any] | None = None
) -> int:
    """``torch.compile`` the training forward of each block (dynamic shapes); returns how many.

    Shapes are dynamic because each batch brings a new padded length.

    Only training steps (block in train mode, autograd on) take the compiled path; evaluation and
    synthesis (eval mode, KV cache, one token at a time) stay eager, so they never wait for a
    compile. A compile that fails (no C compiler, an unsupported op) falls back to eager with a
    warning from torch (``torch._dynamo.config.suppress_errors``) instead of stopping training.

    ``attention_backends`` (SDPA backends) are entered inside the compiled region, so torch bakes
    them into the graph: the SDPA backend a compiled block uses is then part of its cache key.
    Chosen only outside, it is not: torch's compile cache handed a run the graphs that an earlier
    run on the same machine had traced under another backend choice (BENCHMARKS.md, 2026-12-03).

    With ``recompute`` (gradient checkpointing) each training call is a non-reentrant checkpoint
    of the compiled block: only the block's inputs are kept, and backward runs the compiled forward
    again (the same graph, so the same attention kernel). The checkpoint sits outside the compiled
    call: inside it, inductor's partitioner failed on the full-size GPT (``Node add_... was
    invalid, but is output``) and the block then ran eager.
    """
    compat.suppress_compile_errors()
    compat.specialize_float_attributes()  # else each compiled frame is traced twice, every run
    if attention_backends:
        compat.cache_graphs_with_sdpa_kernel()  # else the sdpa_kernel blocks bypass AOTAutograd's cache
    n = 0
    for block in blocks:
        if getattr(block, "_toolkit_compiled", False):
            continue
        # as nn.Module.compile (torch.compile of _call_impl, used by Module.__call__), routed
        eager = compat.eager_call(block)
        compiled = torch.compile(under_backends(eager, attention_backends), dynamic=True)
        if recompute:
            compiled = _recomputed(compiled)
        compat.set_compiled_call(block, _training_steps_only(block, compiled, eager))
        block._toolkit_compiled = True
        n += 1
    return n


def _training_steps_only(block: nn.Module, compiled: Callable[..., Any], eager: Callable[..., Any]) -> Any:
    """The block's call: the compiled one in training steps (train mode, autograd on), else eager."""

    def call(*args: Any, **kwargs: Any) -> Any:
        if block.training and torch.is_grad_enabled():
            return compiled(*args, **kwargs)
        return eager(*args, **kwargs)

    return call


def _recomputed(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` under a non-reentrant activation checkpoint."""
    from torch.utils.checkpoint import checkpoint

    def call(*args: Any, **kwargs: Any) -> Any:
        return checkpoint(fn, *args, use_reentrant=False, **kwargs)

    return call


def keep_compile_cache(directory: Path) -> str:
    """Keep torch's compile caches (inductor's graphs and kernels, AOTAutograd, Triton) in ``directory``.

    Torch keeps them in the system's temporary folder by default, which a reboot or a new
    container empties, and the first run's compiling (most of its start-up) then comes back. In the
    output folder they last as long as the clip cache. A folder the user set in
    ``TORCHINDUCTOR_CACHE_DIR`` is kept (torch itself writes its default there on import).

    Returns:
        The folder in use.
    """
    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if current and current != compat.default_compile_cache_dir():
        return current
    directory.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(directory)
    return str(directory)
