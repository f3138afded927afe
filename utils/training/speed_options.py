"""The speed and memory switches of a run (no torch import: ``gpt_train.py --dry-run`` shows them).

The levers themselves are in :mod:`utils.training.speed`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any


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
    cache_dvae_codes: bool = True  # frozen DVAE run once per clip (fast_data), not per batch
    bucket_lengths: bool = True  # length-bucketed batches (fast_data.LengthBucketBatchSampler)
    pin_memory: bool = True  # pinned host batches, asynchronous copies
    num_workers: int = 8  # loader worker processes
    compile: bool = True  # torch.compile each GPT2 block for training steps (dynamic shapes; eager on failure)
    compile_conditioning: bool = True  # with compile: the conditioning encoder's attention blocks too
    grad_checkpointing: bool = False  # recompute GPT2 blocks in backward (low VRAM)
    optimizer_8bit: bool = False  # bitsandbytes AdamW8bit states (low VRAM)
    offload_frozen: bool = True  # HiFiGAN (and DVAE when codes are cached) off the GPU
    expandable_segments: bool = True  # CUDA allocator segments that grow (less fragmentation)
    auto_batch: bool = True  # pick the micro-batch from free GPU memory (utils.training.autobatch)
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
