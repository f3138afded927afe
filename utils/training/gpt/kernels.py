"""The GPT stage's kernel swaps: the same functions as Coqui's XTTS GPT, through faster kernels.

Coqui builds the GPT (``TTS.tts.layers.xtts.gpt.GPT``), its transformers GPT2 stack and the
conditioning encoder inside ``GPTTrainer``, so the toolkit cannot subclass them: each swap changes
one instance (a submodule, or that instance's ``forward`` through
:func:`utils.training.compat.replace_forward`). Each is idempotent and numerically the same
function (``tests/training/gpt/test_kernels.py``). :func:`swap_kernels` applies those a run's
:class:`~utils.training.speed_options.SpeedOptions` turn on; :func:`recompute_and_compile` wires
the shared recompute and compile levers to the GPT's blocks.
"""

from __future__ import annotations

import types
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.training import compat
from utils.training.compile import compile_blocks, exclude_cudnn_attention, sdpa_backends
from utils.training.memory import checkpoint_blocks

# packed rows are padded to a multiple of this many positions (the round_lengths lever)
PACK_MULTIPLE = 16
# output features of the fast heads' product are padded to a multiple of this (see _fast_head_forward)
HEAD_PAD_TO = 8


def swap_kernels(gpt: nn.Module, opts: Any, cuda: bool) -> list[str]:
    """The swaps ``opts`` turns on, on ``gpt`` (the XTTS GPT); returns the names of those applied."""
    from utils.training.gpt.packed import install_packed_forward

    applied: list[str] = []
    if opts.fast_gelu and swap_gelu(gpt.gpt):
        applied.append("fast_gelu")
    if opts.sdpa_conditioning and swap_conditioning_attention(gpt):
        applied.append("sdpa_conditioning")
    if opts.fast_heads and swap_heads(gpt):
        applied.append("fast_heads")
    if opts.packed_attention and install_packed_forward(gpt, multiple=PACK_MULTIPLE if opts.round_lengths else 1):
        applied.append("packed_attention")
    if cuda and not opts.cudnn_attention:
        exclude_cudnn_attention(gpt)  # wraps the forward installed above
        applied.append("no_cudnn_attention")
    if opts.no_kv_cache and not getattr(gpt.gpt, "_toolkit_no_cache", False):
        train_without_kv_cache(gpt.gpt)
        gpt.gpt._toolkit_no_cache = True
        applied.append("no_kv_cache")
    return applied


def training_blocks(gpt: nn.Module, *, conditioning: bool = True) -> list[nn.Module]:
    """The blocks a training step runs many times: the GPT2 blocks, then the conditioning encoder's.

    The conditioning encoder runs six attention blocks over the 517 frames of each clip's
    conditioning mel, unmasked: as much attention work as the 30 GPT2 blocks do on causal rows of
    about 300 positions. Eager, its float32 GroupNorm and transposed layouts add several full-size
    copies per block, forward and backward. ``conditioning=False`` leaves the conditioning
    encoder's out.
    """
    enc = getattr(gpt, "conditioning_encoder", None) if conditioning else None
    return list(gpt.gpt.h) + list(getattr(enc, "attn", None) or ())


def recompute_and_compile(gpt: nn.Module, opts: Any, cuda: bool) -> list[str]:
    """Gradient checkpointing and ``torch.compile`` of the GPT's :func:`training_blocks`, as ``opts`` asks.

    Compiled blocks (CUDA only) are checkpointed around the compiled call
    (:func:`utils.training.compile.compile_blocks`); the rest, e.g. the conditioning blocks without
    ``compile_conditioning``, get an eager checkpoint. Not through transformers'
    ``gradient_checkpointing_enable``: it asks for the input embeddings, and Coqui deletes
    ``gpt.wte`` (build_hf_gpt_transformer). ``use_cache`` goes off so no KV cache is built inside a
    checkpointed block.
    """
    applied: list[str] = []
    compiled = opts.compile and cuda
    exclude_cudnn = cuda and not opts.cudnn_attention
    blocks = training_blocks(gpt)
    to_compile = blocks if opts.compile_conditioning else blocks[: len(gpt.gpt.h)]
    if opts.grad_checkpointing:
        gpt.gpt.config.use_cache = False
        eager = blocks[len(to_compile) :] if compiled else blocks
        checkpoint_blocks(eager, exclude_cudnn=exclude_cudnn)
        applied.append("grad_checkpointing")
    if compiled:
        compile_blocks(
            to_compile, recompute=opts.grad_checkpointing, attention_backends=sdpa_backends(not exclude_cudnn)
        )
        applied.append("compile")
    return applied


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


def swap_conditioning_attention(gpt: nn.Module) -> int:
    """Give every conditioning-encoder attention block that allows it the fast forward (see below).

    Coqui's tortoise ``AttentionBlock``: GroupNorm, 1x1 Conv1d to q/k/v, ``QKVAttentionLegacy``
    (einsum, float32 softmax, (B*H, T, T) matrix), 1x1 Conv1d out, residual on the normalised
    input. At T = 517 conditioning frames the 1x1 convolutions and the attention matrix run through
    slow kernels (517 is not a multiple of 8). The fast forward is the same function with channels
    last: the 1x1 convolutions as one GEMM each over B*T rows (the same weights, viewed), attention
    through SDPA (flash). Only blocks without a mask or relative position bias qualify.

    Returns:
        Number of blocks changed.
    """
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
            # a bound method: a deep copy of the model runs on the copy's own weights
            compat.replace_forward(block, types.MethodType(_fast_attention_forward, block))
            block._toolkit_fast = True
            n += 1
    return n


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


def swap_heads(gpt: nn.Module) -> int:
    """Run the GPT's text and mel heads as one 2D GEMM on a contiguous input, output features padded.

    ``GPT.get_logits`` applies ``mel_head`` (1026 outputs) and ``text_head`` to a sliced, hence
    non-contiguous, 3D view: PyTorch then runs a batched GEMM, and 1026 is not a multiple of 8, so
    cuBLAS picks slow kernels. Zero rows pad the weight to a multiple of ``HEAD_PAD_TO`` for the
    product only; the parameters and the result are unchanged.

    Returns:
        Number of heads changed.
    """
    n = 0
    for name in ("text_head", "mel_head"):
        head = getattr(gpt, name, None)
        if isinstance(head, nn.Linear) and not getattr(head, "_toolkit_fast", False):
            # a bound method: a deep copy of the model runs on the copy's own weights
            compat.replace_forward(head, types.MethodType(_fast_head_forward, head))
            head._toolkit_fast = True
            n += 1
    return n


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

    compat.replace_forward(gpt2, forward)
