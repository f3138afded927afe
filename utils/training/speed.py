"""Speed and memory levers for Coqui's XTTS GPT training step, applied to a model instance.

One entry: :func:`apply_speed_options` mutates a ``GPTTrainer`` (or subclass) and its
``GPTTrainerConfig`` in place, before ``Trainer(...)`` is built. Nothing is patched globally
except the process-wide float32 matmul precision (``tf32``) and, for ``expandable_segments``, the
CUDA allocator setting; every model change is on the instance's own submodules or bound methods.

What the trainer does (:class:`utils.training.model.ToolkitGPTTrainer` and
:class:`utils.training.trainer.ToolkitTrainer`):

1. Build the model, then ``apply_speed_options(model, config, opts, device)``; then build the
   ``Trainer``. bf16 reaches the Trainer through ``config.mixed_precision`` / ``config.precision``
   (Trainer 0.4 wraps ``train_step`` in ``torch.autocast`` with them and uses no GradScaler for
   bf16: ``use_amp_scaler`` is only true for fp16). Set ``config.batch_size`` (micro-batch; 96-128
   on an 80 GB card) and ``grad_accum_steps`` for the effective batch.
2. With ``cache_dvae_codes``: in ``get_data_loader`` call
   :func:`utils.training.fast_data.prepare_clip_cache` once (it borrows the DVAE back onto the
   GPU), then return :func:`utils.training.fast_data.build_fast_loader` over a
   ``CachedClipDataset`` (training: bucketing, pinned memory, ``opts.num_workers`` workers, a
   ``ContinuousLoader`` that prefetches across epochs; eval: ``shuffle=False``). The installed
   ``format_batch`` / ``format_batch_on_device`` take these batches and stock ``XTTSDataset``
   batches alike (stock batches need the DVAE on the GPU: ``offload_frozen=False``).
3. The installed ``on_init_end`` moves the frozen HiFiGAN (never used by a training step) and, with
   cached codes, the DVAE to the CPU after the Trainer's ``model.cuda()``. Anything that
   synthesises (``test_run``) must move ``model.xtts.hifigan_decoder`` back first.
4. With ``optimizer_8bit`` the installed ``get_optimizer`` returns bitsandbytes' ``AdamW8bit``
   with Coqui's parameter groups (needs ``bitsandbytes``).
5. With ``auto_batch``: before ``fit``, ``auto_micro_batch(lambda b: probe_training_step(model,
   config, optimizer, worst_batch(b), device), budget_bytes)`` on the longest clips, then
   ``optimizer.state.clear()``; set ``config.batch_size`` and scale ``grad_accum_steps``.
6. With ``oom_backoff``: on CUDA out of memory the trainer at least halves the micro-batch and raises
   the accumulation (:func:`utils.training.autobatch.halve_micro_batch`), one log line.

Measured figures are in BENCHMARKS.md (``scripts/bench_train.py``, ``scripts/bench_gpt_train.py``).
"""

from __future__ import annotations

import logging
import os
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.errors import ConfigError
from utils.training.speed_options import SpeedOptions  # re-exported; defined without torch

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Model-level levers (each on the instance; no global monkeypatch)
# --------------------------------------------------------------------------------------------


# packed rows are padded to a multiple of this many positions (the round_lengths lever)
PACK_MULTIPLE = 16


def swap_gelu(gpt2: nn.Module) -> int:
    """Replace each GPT2 MLP's ``gelu_new`` (a Python chain of ~7 kernels) by one fused kernel.

    ``transformers``' ``NewGELUActivation`` is ``0.5*x*(1+tanh(sqrt(2/pi)*(x+0.044715*x**3)))``,
    which is exactly ``F.gelu(x, approximate="tanh")``.

    Returns:
        Number of MLPs changed.
    """
    n = 0
    for module in gpt2.modules():
        act = getattr(module, "act", None)
        if act is not None and type(act).__name__ in ("NewGELUActivation", "GELUTanh", "PytorchGELUTanh"):
            module.act = nn.GELU(approximate="tanh")
            n += 1
    return n


def _fast_attention_block(block: nn.Module) -> None:
    """Give one tortoise ``AttentionBlock`` (no mask, no relative bias) a faster forward.

    Coqui's block: GroupNorm, 1x1 Conv1d to q/k/v, ``QKVAttentionLegacy`` (einsum, float32
    softmax, (B*H, T, T) matrix), 1x1 Conv1d out, residual on the normalised input. At T = 517
    conditioning frames the 1x1 convolutions and the attention matrix run through slow kernels
    (517 is not a multiple of 8). Same function here with channels last: the 1x1 convolutions as
    one GEMM each over B*T rows (the same weights, viewed), attention through SDPA (flash).
    Bound as a method, so a deep copy of the model runs on the copy's own weights.
    """
    block.forward = types.MethodType(_fast_attention_forward, block)


def _fast_attention_forward(block: nn.Module, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    if mask is not None:
        raise NotImplementedError("the fast attention block takes no mask")
    heads = block.attention.n_heads
    b, c, *spatial = x.shape
    x = x.reshape(b, c, -1)
    x_norm = block.norm(x)
    t = x_norm.shape[-1]
    qkv = F.linear(x_norm.transpose(1, 2), block.qkv.weight.squeeze(-1), block.qkv.bias)  # (b, t, 3c)
    ch = qkv.shape[-1] // (3 * heads)
    # Legacy layout: heads split first, then q/k/v inside each head's 3*ch channels.
    q, k, v = qkv.reshape(b, t, heads, 3 * ch).permute(0, 2, 1, 3).split(ch, dim=-1)
    a = F.scaled_dot_product_attention(q, k, v)  # (b, heads, t, ch)
    a = a.transpose(1, 2).reshape(b, t, heads * ch)
    h = F.linear(a, block.proj_out.weight.squeeze(-1), block.proj_out.bias).transpose(1, 2)  # (b, c, t)
    out = x + h if block.tortoise_norm else x_norm + h
    return out.reshape(b, c, *spatial)


def swap_conditioning_attention(gpt: nn.Module) -> int:
    """Install the fast forward on every conditioning-encoder attention block that allows it."""
    n = 0
    enc = getattr(gpt, "conditioning_encoder", None)
    if enc is None:
        return 0
    for block in enc.modules():
        att = getattr(block, "attention", None)
        if (
            type(att).__name__ == "QKVAttentionLegacy"
            and getattr(block, "relative_pos_embeddings", None) is None
            and not getattr(block, "_toolkit_fast", False)
            and block.qkv.kernel_size == (1,)
            and block.proj_out.kernel_size == (1,)
        ):
            _fast_attention_block(block)
            block._toolkit_fast = True
            n += 1
    return n


# output features of the fast heads' product are padded to a multiple of this (see _fast_head)
HEAD_PAD_TO = 8


def _fast_head(head: nn.Linear) -> None:
    """Output head as one 2D GEMM on a contiguous input, output features padded to ``HEAD_PAD_TO``.

    ``GPT.get_logits`` applies ``mel_head`` (1026 outputs) and ``text_head`` to a sliced, hence
    non-contiguous, 3D view: PyTorch then runs a batched GEMM, and 1026 is not a multiple of 8, so
    cuBLAS picks slow kernels. Zero rows pad the weight for the product only; the parameters and
    the result are unchanged. Bound as a method, so a deep copy of the model runs on the copy's
    own weights.
    """
    head.forward = types.MethodType(_fast_head_forward, head)


def _fast_head_forward(head: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    pad = (-head.out_features) % HEAD_PAD_TO
    shape = x.shape
    x2 = x.reshape(-1, shape[-1])
    w, b = head.weight, head.bias
    if pad:
        w = F.pad(w, (0, 0, 0, pad))
        b = F.pad(b, (0, pad)) if b is not None else None
    y = F.linear(x2, w, b)
    if pad:
        y = y[:, : head.out_features]
    return y.reshape(*shape[:-1], head.out_features)


def swap_heads(gpt: nn.Module) -> int:
    """Install :func:`_fast_head` on the GPT's text and mel heads."""
    n = 0
    for name in ("text_head", "mel_head"):
        head = getattr(gpt, name, None)
        if isinstance(head, nn.Linear) and not getattr(head, "_toolkit_fast", False):
            _fast_head(head)
            head._toolkit_fast = True
            n += 1
    return n


def exclude_cudnn_attention(module: nn.Module) -> None:
    """Run ``module.forward`` with SDPA limited to flash / memory-efficient / math backends.

    cuDNN attention (which PyTorch prefers for bf16 on Hopper) plans each new shape; with Coqui's
    masked forward that planning cost more than the kernel saved (BENCHMARKS.md). On packed rows
    (causal, no mask) cuDNN is the faster kernel on an H200, so this is off by default; the
    low-VRAM preset keeps it, as measured. The backward kernel follows the forward's choice.
    """
    module.forward = _under_backends(module.forward, _NO_CUDNN_BACKENDS())  # this module only


def enable_grad_checkpointing(
    model: Any, *, exclude_cudnn: bool = False, blocks: bool = True, conditioning: bool = True
) -> None:
    """Recompute each GPT2 block and conditioning-encoder block in backward instead of storing it.

    Not through ``GPT2Model.gradient_checkpointing_enable``: transformers then asks for the input
    embeddings, and Coqui deletes ``gpt.wte`` (build_hf_gpt_transformer). ``use_cache`` goes off
    so no KV cache is built inside a checkpointed block. With ``exclude_cudnn`` the recomputation
    runs under the same SDPA backend choice as the forward (else the saved tensors differ).
    ``blocks=False`` leaves the GPT2 blocks (and with ``conditioning`` the conditioning encoder's)
    to :func:`compile_blocks` (``recompute=True``), which checkpoints around each compiled block:
    a checkpoint inside the compiled region fails in inductor's partitioner on the full-size GPT
    (``Node add_... was invalid, but is output``) and the block then ran eager.
    """
    gpt2 = model.xtts.gpt.gpt
    gpt2.config.use_cache = False
    every = training_blocks(model)
    eager = every if blocks else ([] if conditioning else every[len(gpt2.h) :])  # the rest is compile_blocks'
    for block in eager:
        _checkpoint_module(block, exclude_cudnn)


def training_blocks(model: Any, *, conditioning: bool = True) -> list[nn.Module]:
    """The blocks a training step runs many times: the GPT2 blocks, then the conditioning encoder's.

    The conditioning encoder runs six attention blocks over the 517 frames of each clip's
    conditioning mel, unmasked: as much attention work as the 30 GPT2 blocks do on causal rows of
    about 300 positions. Eager, its float32 GroupNorm and transposed layouts add several full-size
    copies per block, forward and backward. These are what :func:`compile_blocks` compiles and
    :func:`enable_grad_checkpointing` checkpoints; ``conditioning=False`` leaves the conditioning
    encoder's out.
    """
    gpt = model.xtts.gpt
    enc = getattr(gpt, "conditioning_encoder", None) if conditioning else None
    return list(gpt.gpt.h) + list(getattr(enc, "attn", None) or ())


def _checkpoint_module(module: nn.Module, exclude_cudnn: bool = False) -> None:
    from torch.utils.checkpoint import checkpoint

    inner = module.forward
    run = _under_backends(inner, _NO_CUDNN_BACKENDS() if exclude_cudnn else None)

    def forward(*args: Any, **kwargs: Any) -> Any:
        if module.training and torch.is_grad_enabled():
            return checkpoint(run, *args, use_reentrant=False, **kwargs)
        return inner(*args, **kwargs)

    module.forward = forward


def _NO_CUDNN_BACKENDS() -> list[Any]:  # a constant that needs an import
    from torch.nn.attention import SDPBackend

    return [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def train_without_kv_cache(gpt2: nn.Module) -> None:
    """Call the GPT2 stack with ``use_cache=False`` while training.

    Coqui builds it with ``use_cache=True`` (build_hf_gpt_transformer), so every training forward
    fills a transformers ``DynamicCache``: a concatenated copy of each layer's keys and values that
    nothing reads. Inference (eval mode, ``GPT2InferenceModel``) is untouched.
    """
    inner = gpt2.forward

    def forward(*args: Any, **kwargs: Any) -> Any:
        if gpt2.training:
            kwargs["use_cache"] = False
        return inner(*args, **kwargs)

    gpt2.forward = forward


def compile_blocks(
    model: Any, *, recompute: bool = False, attention_backends: list[Any] | None = None, conditioning: bool = True
) -> int:
    """``torch.compile`` the training forward of each of :func:`training_blocks` (dynamic shapes).

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
    again (the same graph, so the same attention kernel).
    """
    from torch.utils.checkpoint import checkpoint

    from utils.training import compat

    compat.suppress_compile_errors()
    compat.specialize_float_attributes()  # else each compiled frame is traced twice, every run
    if attention_backends:
        compat.cache_graphs_with_sdpa_kernel()  # else the sdpa_kernel blocks bypass AOTAutograd's cache
    n = 0
    for block in training_blocks(model, conditioning=conditioning):
        if getattr(block, "_toolkit_compiled", False):
            continue
        # as nn.Module.compile (torch.compile of _call_impl, used by Module.__call__), routed
        eager = compat.eager_call(block)
        compiled = torch.compile(_under_backends(eager, attention_backends), dynamic=True)
        if recompute:
            compiled = _recomputed(compiled, checkpoint)

        def call(
            *args: Any, _block: nn.Module = block, _compiled: Any = compiled, _eager: Any = eager, **kwargs: Any
        ) -> Any:
            if _block.training and torch.is_grad_enabled():
                return _compiled(*args, **kwargs)
            return _eager(*args, **kwargs)

        compat.set_compiled_call(block, call)
        block._toolkit_compiled = True
        n += 1
    return n


def sdpa_backends(cudnn: bool) -> list[Any]:
    """The SDPA backends a run's compiled blocks may use (cuDNN first where allowed, as torch orders them)."""
    from torch.nn.attention import SDPBackend

    return ([SDPBackend.CUDNN_ATTENTION] if cudnn else []) + _NO_CUDNN_BACKENDS()


def _under_backends(fn: Any, backends: list[Any] | None) -> Any:
    """``fn`` inside ``sdpa_kernel(backends)`` (nothing added without backends)."""
    if not backends:
        return fn
    from torch.nn.attention import sdpa_kernel

    def body(*args: Any, **kwargs: Any) -> Any:
        with sdpa_kernel(backends):
            return fn(*args, **kwargs)

    return body


def _recomputed(fn: Any, checkpoint: Any) -> Any:
    """``fn`` under a non-reentrant activation checkpoint."""

    def call(*args: Any, **kwargs: Any) -> Any:
        return checkpoint(fn, *args, use_reentrant=False, **kwargs)

    return call


def offload_frozen_modules(model: Any, *, dvae: bool) -> list[str]:
    """Move modules a training step never uses to the CPU and release their GPU memory.

    Args:
        model: the GPTTrainer.
        dvae: also move the DVAE (only when codes come from a cache).

    Returns:
        Names of the modules moved.
    """
    moved = []
    if getattr(model.xtts, "hifigan_decoder", None) is not None:
        model.xtts.hifigan_decoder.to("cpu")
        moved.append("xtts.hifigan_decoder")
    if dvae:
        model.dvae.to("cpu")
        moved.append("dvae")
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return moved


def build_optimizer(model: Any, config: Any, opts: SpeedOptions) -> torch.optim.Optimizer:
    """Coqui's optimizer (same parameter groups and hyper-parameters), 8-bit when asked.

    Raises:
        ConfigError: 8-bit asked and bitsandbytes missing.
    """
    base = type(model).get_optimizer(model)  # Coqui's groups; no state is allocated yet
    if not opts.optimizer_8bit:
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
    if hasattr(base, "_group_names"):
        opt._group_names = base._group_names
    return opt


# --------------------------------------------------------------------------------------------
# Batch formatting (installed on the instance)
# --------------------------------------------------------------------------------------------


def fast_format_batch(self: Any, batch: dict[str, Any]) -> dict[str, Any]:
    """Before the Trainer moves tensors to the GPU: keep CPU copies of the lengths.

    Coqui's ``GPT.forward`` loops over the batch indexing with the length tensors; on the GPU each
    index is a device sync. A plain dict is not moved by Trainer's ``to_cuda``.
    """
    host = {"text_lengths": batch["text_lengths"].clone(), "wav_lengths": batch["wav_lengths"].clone()}
    if batch.get("cond_idxs") is not None:
        host["cond_idxs"] = batch["cond_idxs"].clone()
    batch["host"] = host
    return batch


@torch.no_grad()
def fast_format_batch_on_device(self: Any, batch: dict[str, Any]) -> dict[str, Any]:
    """Coqui's ``format_batch_on_device`` with cached codes and CPU lengths.

    Same conditioning mel as Coqui's; DVAE codes taken from ``batch["audio_codes"]`` when present
    (cached), else computed exactly as Coqui does.
    """
    host = batch.pop("host", None)
    batch["text_inputs"] = batch.pop("padded_text")
    cond = batch.pop("conditioning")
    b, n, c, t = cond.size()
    mel = self.torch_mel_spectrogram_style_encoder(cond.view(b * n, c, t))
    batch["cond_mels"] = mel.view(b, n, self.torch_mel_spectrogram_style_encoder.n_mel_channels, mel.size(2))
    wav = batch.pop("wav", None)
    if batch.get("audio_codes") is None:
        if wav is None:
            raise ValueError("batch has neither cached audio_codes nor wav")
        dvae_dev = next(self.dvae.parameters()).device
        if dvae_dev != wav.device:
            raise ConfigError(
                "the DVAE was moved off the GPU but this batch has no cached codes: "
                "use the cached-code loader or turn off offload_frozen"
            )
        if self.config.audio.sample_rate != self.config.audio.dvae_sample_rate:
            import torchaudio

            from utils.training.compat import DVAE_RESAMPLE

            wav = torchaudio.functional.resample(
                wav,
                orig_freq=self.config.audio.sample_rate,
                new_freq=self.config.audio.dvae_sample_rate,
                **DVAE_RESAMPLE,
            )
        batch["audio_codes"] = self.dvae.get_codebook_indices(self.torch_mel_spectrogram_dvae(wav))
    if host is not None:
        batch["text_lengths"] = host["text_lengths"]
        batch["wav_lengths"] = host["wav_lengths"]
        if batch.get("cond_idxs") is not None and "cond_idxs" in host:
            batch["cond_idxs"] = host["cond_idxs"]
    return batch


# --------------------------------------------------------------------------------------------
# The one entry
# --------------------------------------------------------------------------------------------


def apply_speed_options(model: Any, config: Any, opts: SpeedOptions, device: torch.device | str) -> list[str]:
    """Apply every lever ``opts`` turns on to ``model`` and ``config`` (in place).

    Call after the GPTTrainer is built and before ``Trainer(...)``; the model may be on the CPU
    or already on ``device``. Several levers wrap this instance's forwards (the KV-cache switch,
    checkpoints, compiled calls); for a second model, build one and load this one's state dict,
    since a deep copy would still call into this instance. Levers needing CUDA (bf16, fused AdamW,
    TF32, cuDNN exclusion, compile) are skipped with a log line on other devices.

    Args:
        model: a ``GPTTrainer`` (or subclass).
        config: its ``GPTTrainerConfig`` (the Trainer reads ``mixed_precision``, ``precision``,
            ``optimizer_params``, ``num_loader_workers``).
        opts: the switches.
        device: where training runs.

    Returns:
        Names of the levers applied, for the run log.
    """
    dev = torch.device(device)
    cuda = dev.type == "cuda" and torch.cuda.is_available()
    applied = _precision_levers(config, opts, cuda) + _model_levers(model, opts, cuda)
    own = getattr(model, "config", None)
    if own is not None and own is not config:
        # GPTTrainer keeps its own copy of the config and builds the optimizer from it
        # (get_optimizer -> self.config.optimizer_params): fused AdamW must reach that copy too
        own.optimizer_params = config.optimizer_params
    if opts.host_lengths or opts.cache_dvae_codes:
        model.format_batch = types.MethodType(
            fast_format_batch if opts.host_lengths else type(model).format_batch, model
        )
        model.format_batch_on_device = types.MethodType(fast_format_batch_on_device, model)
        applied.append("host_lengths" if opts.host_lengths else "fast_format_batch")
    if opts.optimizer_8bit:
        model.get_optimizer = lambda: build_optimizer(model, config, opts)
        applied.append("optimizer_8bit")
    if opts.offload_frozen:
        _offload_after_init(model, opts)
        applied.append("offload_frozen")
    if opts.num_workers:
        config.num_loader_workers = opts.num_workers
    if "compile" in applied and getattr(config, "output_path", None):
        where = keep_compile_cache(Path(config.output_path) / COMPILE_CACHE)
        logger.info("compile cache: %s (a later run with the same model, GPU and torch compiles little)", where)
    logger.info("speed levers: %s", ", ".join(applied) or "none")
    return applied


# torch's compile caches, beside the clip cache in the output folder (see keep_compile_cache)
COMPILE_CACHE = ".compile_cache"


def keep_compile_cache(directory: Path) -> str:
    """Keep torch's compile caches (inductor's graphs and kernels, AOTAutograd, Triton) in ``directory``.

    Torch keeps them in the system's temporary folder by default, which a reboot or a new
    container empties, and the first run's compiling (most of its start-up) then comes back. In the
    output folder they last as long as the clip cache. A folder the user set in
    ``TORCHINDUCTOR_CACHE_DIR`` is kept (torch itself writes its default there on import).

    Returns:
        The folder in use.
    """
    from utils.training.compat import default_compile_cache_dir

    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if current and current != default_compile_cache_dir():
        return current
    directory.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(directory)
    return str(directory)


def _precision_levers(config: Any, opts: SpeedOptions, cuda: bool) -> list[str]:
    """bf16 autocast, TF32, the allocator setting and fused AdamW (config and process settings)."""
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
    if opts.expandable_segments and cuda:
        from utils.training.compat import set_allocator_settings

        try:
            set_allocator_settings("expandable_segments:True")
            applied.append("expandable_segments")
        except RuntimeError as exc:  # older allocators
            logger.info("expandable_segments not available: %s", exc)
    if opts.fused_adamw and cuda and not opts.optimizer_8bit and str(config.optimizer).lower() == "adamw":
        config.optimizer_params = {**(config.optimizer_params or {}), "fused": True}
        applied.append("fused_adamw")
    return applied


def _model_levers(model: Any, opts: SpeedOptions, cuda: bool) -> list[str]:
    """The levers that change the GPT's modules (activation, attention, heads, cache, checkpointing, compile)."""
    applied: list[str] = []
    gpt = model.xtts.gpt
    if opts.fast_gelu and swap_gelu(gpt.gpt):
        applied.append("fast_gelu")
    if opts.sdpa_conditioning and swap_conditioning_attention(gpt):
        applied.append("sdpa_conditioning")
    if opts.fast_heads and swap_heads(gpt):
        applied.append("fast_heads")
    if opts.packed_attention:
        from utils.training.packed import install_packed_forward

        if install_packed_forward(gpt, multiple=PACK_MULTIPLE if opts.round_lengths else 1):
            applied.append("packed_attention")
    if cuda and not opts.cudnn_attention:
        exclude_cudnn_attention(gpt)
        applied.append("no_cudnn_attention")
    if opts.no_kv_cache and not getattr(gpt.gpt, "_toolkit_no_cache", False):
        train_without_kv_cache(gpt.gpt)
        gpt.gpt._toolkit_no_cache = True
        applied.append("no_kv_cache")
    compiled = opts.compile and cuda
    exclude_cudnn = cuda and not opts.cudnn_attention
    if opts.grad_checkpointing:
        enable_grad_checkpointing(
            model, exclude_cudnn=exclude_cudnn, blocks=not compiled, conditioning=opts.compile_conditioning
        )
        applied.append("grad_checkpointing")
    if compiled:
        compile_blocks(
            model,
            recompute=opts.grad_checkpointing,
            attention_backends=sdpa_backends(not exclude_cudnn),
            conditioning=opts.compile_conditioning,
        )
        applied.append("compile")
    return applied


def _offload_after_init(model: Any, opts: SpeedOptions) -> None:
    """Frozen modules (HiFiGAN, the DVAE with cached codes) to the CPU once the Trainer has moved the model."""
    stock_on_init_end = model.on_init_end

    def on_init_end(trainer: Any) -> None:
        stock_on_init_end(trainer)
        moved = offload_frozen_modules(model, dvae=opts.cache_dvae_codes)
        logger.info("moved frozen modules to the CPU: %s", ", ".join(moved))

    model.on_init_end = on_init_end
    if next(model.parameters()).is_cuda:
        offload_frozen_modules(model, dvae=opts.cache_dvae_codes)


# --------------------------------------------------------------------------------------------
# Micro-batch sizing and OOM fallback
# --------------------------------------------------------------------------------------------


def is_oom(exc: BaseException) -> bool:
    """True for CUDA out-of-memory errors (including the older RuntimeError form)."""
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc)


# the micro-batch of the first probe (the compiling one), where the plan allows one this large
WARM_PROBE_CLIPS = 12


def auto_micro_batch(
    probe: Callable[[int], None],
    budget_bytes: int,
    *,
    max_batch: int = 256,
    margin: float = 0.9,
    candidates: list[int] | None = None,
) -> int:
    """Pick the largest micro-batch whose step fits ``margin * budget_bytes`` of reserved memory.

    ``probe(b)`` must run one full training step (forward, backward, optimizer step) on a
    worst-case batch of ``b`` clips (the longest clips) and leave the optimizer state and the
    gradient buffers allocated (``zero_grad(set_to_none=False)``), as they are during training
    with gradient accumulation. A first probe allocates that state (and compiles): at the smallest
    candidate of ``WARM_PROBE_CLIPS`` to 4 x ``WARM_PROBE_CLIPS`` clips (without candidates: at
    ``WARM_PROBE_CLIPS``), else, or where that does not fit, at 2 clips. A CUDA OOM counts as not
    fitting.

    With ``candidates`` (the sizes a plan can use, e.g. the divisors of the effective batch), a
    bisection over them finds the largest that fits: 5 probes for the 18 divisors of 252. Only
    where that one is below half of the next candidate does a bisection between the two find the
    largest size of all (so a poor split can name what would fit). Without ``candidates``, ``b``
    doubles while it fits, then a bisection between the last fitting and the first failing size.

    Returns:
        The micro-batch size (>= 1).
    """
    limit = int(budget_bytes * margin)

    def fits(b: int) -> bool:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        try:
            probe(b)
            torch.cuda.synchronize()
        except RuntimeError as exc:
            if not is_oom(exc):
                raise
            torch.cuda.empty_cache()
            return False
        peak = torch.cuda.max_memory_reserved()
        logger.info("auto micro-batch: %d clips peak at %.2f GiB reserved", b, peak / 2**30)
        return peak <= limit

    # The first call allocates the optimizer state (and compiles), the second measures with it. Not
    # at 1 clip: torch.compile specialises a dimension of size 1, so that probe compiles graphs
    # training never runs. Not at 2 either where a larger size can be tried: inductor's fusion
    # choices add guards on tensor sizes (a block input of 1,024 channels under 5,120 rows: about 10
    # clips of 517 conditioning frames), so the probe at 2 compiled graphs for small batches and the
    # next probe compiled again (8 s on an H200: BENCHMARKS.md).
    sizes = sorted({c for c in (candidates or []) if 1 < c <= max_batch})
    if sizes:  # a split of the plan near WARM_PROBE_CLIPS, else 2 (a prime effective batch: 1 and itself)
        warm = next((c for c in sizes if WARM_PROBE_CLIPS <= c <= 4 * WARM_PROBE_CLIPS), 2)
    else:
        warm = max(min(WARM_PROBE_CLIPS, max_batch), min(2, max_batch))
    good, bad = warm, None
    if not fits(warm) or not fits(warm):
        if warm <= 2 or not fits(2) or not fits(2):
            return 1
        good, bad = 2, warm
    if sizes:
        # sizes[lo] fits (-1: size 1), sizes[hi] does not (len: beyond the list); those up to good fit
        lo = sum(1 for c in sizes if c <= good) - 1
        hi = sum(1 for c in sizes if c < bad) if bad is not None else len(sizes)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if fits(sizes[mid]):
                lo = mid
            else:
                hi = mid
        good = sizes[lo] if lo >= 0 else 1
        bad = sizes[hi] if hi < len(sizes) else None
        if bad is None or good >= bad // 2:
            logger.info(
                "auto micro-batch: %d (budget %.2f GiB, limit %.0f%%)", good, budget_bytes / 2**30, 100 * margin
            )
            return good
        good = max(good, 2)  # searching on for the largest size of all (for the split's warning)
    while bad is None and good < max_batch:
        b = min(good * 2, max_batch)
        if fits(b):
            good = b
        else:
            bad = b
    while bad is not None and bad - good > max(1, good // 8):
        mid = (good + bad) // 2
        if fits(mid):
            good = mid
        else:
            bad = mid
    logger.info("auto micro-batch: %d (budget %.2f GiB, limit %.0f%%)", good, budget_bytes / 2**30, 100 * margin)
    return good


def probe_training_step(model: Any, config: Any, optimizer: Any, batch: dict[str, Any], device: torch.device) -> None:
    """One training step for :func:`auto_micro_batch` that leaves the weights unchanged.

    Forward and backward as Trainer 0.4 runs them, then an optimizer step at learning rate 0 (so
    the optimizer state is allocated at its real size), then ``zero_grad(set_to_none=False)`` (the
    gradient buffers stay, as during accumulation). After choosing the size, call
    ``optimizer.state.clear()`` and ``optimizer.zero_grad(set_to_none=True)``.
    """
    batch = model.format_batch(dict(batch))
    for k, v in batch.items():
        if torch.is_tensor(v):
            batch[k] = v.contiguous().to(device, non_blocking=True)
    batch = model.format_batch_on_device(batch)
    dtype = torch.bfloat16 if config.precision == "bf16" else torch.float16
    try:
        with torch.autocast(device_type=torch.device(device).type, dtype=dtype, enabled=bool(config.mixed_precision)):
            _, loss_dict = model.train_step(batch, None)
        loss_dict["loss"].backward()
        lrs = [g["lr"] for g in optimizer.param_groups]
        for g in optimizer.param_groups:
            g["lr"] = 0.0
        optimizer.step()
        for g, lr in zip(optimizer.param_groups, lrs):
            g["lr"] = lr
    finally:
        optimizer.zero_grad(set_to_none=False)
