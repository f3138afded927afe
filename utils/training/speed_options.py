"""The speed and memory switches of a run, and :func:`apply_speed_options`, the one entry that applies them.

Importing this module does not import torch (``gpt_train.py --dry-run`` shows the switches). The
levers live by concern: :mod:`~utils.training.precision` (bf16, TF32), :mod:`~utils.training.optim`
(fused and 8-bit AdamW), :mod:`~utils.training.memory` (recompute, frozen modules off the GPU, the
allocator), :mod:`~utils.training.compile` (torch.compile, SDPA backends, compile caches), the GPT
stage's :mod:`~utils.training.gpt.kernels` (GELU, attention and head swaps, packed rows) and
:class:`~utils.training.gpt.model.SpeedLevers` (batch formatting with cached codes and CPU lengths,
the 8-bit optimizer, frozen modules moved off the GPU after the Trainer's ``model.cuda()``); the
micro-batch is :mod:`~utils.training.batch_size`'s (``auto_batch``, ``oom_backoff``).

How a run uses them (``utils.finetune.training``): build the model, ``apply_speed_options(model,
config, opts, device)``, then the ``Trainer``. With ``cache_dvae_codes`` the model's
``get_data_loader`` returns the cached-code loader (:mod:`utils.training.gpt.clip_cache`); with
``auto_batch`` the micro-batch is sized from GPU memory before ``fit``. Measured figures are in
BENCHMARKS.md (``scripts/bench_train.py``, ``scripts/bench_gpt_train.py``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SpeedOptions:
    """Switches for each lever; the defaults are the fast, safe path for one modern GPU."""

    bf16: bool = True  # bf16 autocast in the real Trainer loop (config.mixed_precision/precision)
    tf32: bool = True  # TF32 for the float32 matmuls left outside autocast
    fused_adamw: bool = True  # optimizer_params["fused"] = True for AdamW (one kernel per step)
    fast_gelu: bool = True  # GPT2 MLP gelu_new (7 elementwise ops) -> nn.GELU("tanh"), same function
    sdpa_conditioning: bool = True  # conditioning encoder: 1x1 convs as GEMMs, attention via SDPA
    fast_heads: bool = True  # text/mel heads as one aligned 2D GEMM (1026 outputs padded to 1032)
    packed_attention: bool = (
        True  # loss forward on packed rows: causal attention without a mask (flash), no per-row loops
    )
    round_lengths: bool = True  # packed rows padded to a multiple of 16 positions: few shapes, cuDNN plans reused
    cudnn_attention: bool = True  # let SDPA pick cuDNN attention (on an H200: 456 vs 434 samples/s, packed rows)
    host_lengths: bool = True  # keep length tensors on the CPU: no GPU syncs in GPT.forward loops
    no_kv_cache: bool = True  # GPT2 fills no (unused) KV cache during training forwards
    cache_dvae_codes: bool = True  # frozen DVAE run once per clip (gpt.clip_cache), not per batch
    bucket_lengths: bool = True  # length-bucketed batches (gpt.clip_cache.LengthBucketBatchSampler)
    pin_memory: bool = True  # pinned host batches, asynchronous copies
    num_workers: int = 8  # loader worker processes
    compile: bool = True  # torch.compile each GPT2 block for training steps (dynamic shapes; eager on failure)
    compile_conditioning: bool = True  # with compile: the conditioning encoder's attention blocks too
    grad_checkpointing: bool = False  # recompute GPT2 blocks in backward (low VRAM)
    optimizer_8bit: bool = False  # bitsandbytes AdamW8bit states (low VRAM)
    offload_frozen: bool = True  # HiFiGAN (and DVAE when codes are cached) off the GPU
    expandable_segments: bool = True  # CUDA allocator segments that grow (less fragmentation)
    auto_batch: bool = True  # pick the micro-batch from free GPU memory (utils.training.batch_size)
    oom_backoff: bool = True  # on CUDA OOM: at most half the micro-batch, same effective batch, log it

    @classmethod
    def low_vram(cls, **overrides: Any) -> SpeedOptions:
        """The 8 GB-card preset: checkpointing, 8-bit AdamW, frozen modules off the GPU."""
        base = dict(
            grad_checkpointing=True,
            optimizer_8bit=True,
            offload_frozen=True,
            fused_adamw=False,
            auto_batch=True,
            # checkpointed around the compiled block: 114.3 vs 71.8 samples/s eager under 7 GiB (BENCHMARKS.md)
            compile=True,
            cudnn_attention=False,  # the measured low-VRAM path: flash / memory-efficient kernels in the recompute
        )
        base.update(overrides)
        return cls(**base)

    @classmethod
    def stock(cls) -> SpeedOptions:
        """Every lever off: Coqui's own step (fp32, stock loader settings)."""
        off = {f.name: False for f in fields(cls) if f.type in ("bool", bool)}
        return cls(**{**off, "cudnn_attention": True})  # PyTorch's own SDPA backend choice

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def apply_speed_options(model: Any, config: Any, opts: SpeedOptions, device: Any) -> list[str]:
    """Apply every lever ``opts`` turns on to ``model`` and ``config`` (in place).

    Call after the model is built and before ``Trainer(...)``; the model may be on the CPU or
    already on ``device``. Several levers wrap this instance's forwards (the KV-cache switch,
    checkpoints, compiled calls); for a second model, build one and load this one's state dict,
    since a deep copy would still call into this instance. Levers needing CUDA (bf16, fused AdamW,
    TF32, cuDNN exclusion, compile) are skipped with a log line on other devices. Nothing is set
    process-wide except the float32 matmul precision (``tf32``), the CUDA allocator setting
    (``expandable_segments``) and, with compile, torch's compile-cache folder.

    Args:
        model: a ``GPTTrainer`` with :class:`utils.training.gpt.model.SpeedLevers` (``ToolkitGPTTrainer``);
            ``model.speed`` is set to ``opts``.
        config: its Trainer config (the Trainer reads ``mixed_precision``, ``precision``,
            ``optimizer_params``, ``num_loader_workers``).
        opts: the switches.
        device: where training runs.

    Returns:
        Names of the levers applied, for the run log.
    """
    import torch

    from utils.training import memory, optim, precision
    from utils.training.gpt import kernels

    cuda = torch.device(device).type == "cuda" and torch.cuda.is_available()
    model.speed = opts  # the model's batch formatting, optimizer and start-up follow it (SpeedLevers)
    applied = precision.apply_precision(config, opts, cuda)
    if opts.expandable_segments:
        applied += memory.expandable_segments(cuda)
    applied += optim.use_fused_adamw(config, getattr(model, "config", None), opts, cuda)
    applied += kernels.swap_kernels(model.xtts.gpt, opts, cuda)
    applied += kernels.recompute_and_compile(model.xtts.gpt, opts, cuda)
    applied += _step_levers(model, opts)
    if opts.num_workers:
        config.num_loader_workers = opts.num_workers
    if "compile" in applied and getattr(config, "output_path", None):
        from utils.training.compile import COMPILE_CACHE, keep_compile_cache

        where = keep_compile_cache(Path(config.output_path) / COMPILE_CACHE)
        logger.info("compile cache: %s (a later run with the same model, GPU and torch compiles little)", where)
    logger.info("speed levers: %s", ", ".join(applied) or "none")
    return applied


def _step_levers(model: Any, opts: SpeedOptions) -> list[str]:
    """The names of the levers the model's own step methods apply (SpeedLevers); frozen modules off the
    GPU now when the model is already there (else after the Trainer's ``model.cuda()``)."""
    applied = []
    if opts.host_lengths or opts.cache_dvae_codes:
        applied.append("host_lengths" if opts.host_lengths else "fast_format_batch")
    if opts.optimizer_8bit:
        applied.append("optimizer_8bit")
    if opts.offload_frozen:
        if next(model.parameters()).is_cuda:
            model.offload_frozen_modules()
        applied.append("offload_frozen")
    return applied
