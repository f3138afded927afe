"""FP8 matmuls for the GPT2 blocks' linear layers in training steps (the ``fp8`` lever, off by default).

Half of a default training step's GPU time on an H200 is the GPT2 blocks' four linear layers
(``c_attn``, ``c_proj``, ``c_fc``, ``c_proj``: transformers' ``Conv1D``, weight stored as
``(in, out)``), in bf16. Hopper and Ada cards multiply FP8 at twice the bf16 rate. Here each of
those layers, in a training step only, runs its three products (forward, input gradient, weight
gradient) through ``torch._scaled_mm`` with one scale per tensor, chosen from the tensor's largest
magnitude at that moment (dynamic scaling, no history):

- forward ``y = x w + b``: ``x`` and ``w`` in e4m3, ``y`` in bf16;
- input gradient ``g w^T``: ``g`` in e5m2 (gradients need the range more than the precision),
  ``w`` in e4m3, bf16 out;
- weight gradient ``x^T g``: e4m3 times e5m2, float32 out (the float32 master weight's gradient).

The bias is added outside the product in bf16, as autocast's ``addmm`` does. The weights stay
float32 parameters in Coqui's layout, so checkpoints, export and inference are unchanged. Only calls that
record gradients take the FP8 path: an evaluation, a synthesis or any call under ``no_grad`` runs
the layer's own forward. Rows per product must be a multiple of 16 (``_scaled_mm``'s rule for the
weight gradient; packed rows are rounded to 16 positions); other calls run the own forward too.

The numbers this changes are measured against the stock step, as every lever is
(``scripts/bench_train.py --fp8-rung``: loss difference and gradient cosine), and in
BENCHMARKS.md.
"""

from __future__ import annotations

import types
from typing import Any

import torch
import torch.nn as nn

E4M3 = torch.float8_e4m3fn
E5M2 = torch.float8_e5m2
# _scaled_mm needs every dimension of its operands to be a multiple of this
FP8_MULTIPLE = 16


def fp8_supported(device: torch.device | str) -> bool:
    """True on a CUDA card with FP8 tensor cores (compute capability 8.9 or later: Ada, Hopper, Blackwell)."""
    dev = torch.device(device)
    if dev.type != "cuda" or not torch.cuda.is_available():
        return False
    return torch.cuda.get_device_capability(dev) >= (8, 9)


def to_fp8(t: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``t`` scaled into ``dtype`` so that its largest magnitude maps to the format's largest value.

    Returns:
        The FP8 tensor and the float32 scalar that multiplies it back (1 / scale), as
        ``_scaled_mm`` takes it.
    """
    fmax = torch.finfo(dtype).max
    amax = t.detach().abs().amax().float()
    scale = fmax / torch.clamp(amax, min=1e-12)
    q = (t.float() * scale).clamp(-fmax, fmax).to(dtype)
    return q, scale.reciprocal()


def _column_major(t: torch.Tensor) -> torch.Tensor:
    """The same matrix stored column by column (``_scaled_mm``'s layout for its second operand)."""
    return t.t().contiguous().t()


class Fp8Matmul(torch.autograd.Function):
    """``x @ w`` with ``x`` of shape (M, K) and ``w`` of shape (K, N), the three products in FP8."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:  # noqa: D102 - see the class
        xq, x_inv = to_fp8(x, E4M3)
        wq, w_inv = to_fp8(w, E4M3)
        out = torch._scaled_mm(xq, _column_major(wq), scale_a=x_inv, scale_b=w_inv, out_dtype=torch.bfloat16)
        ctx.save_for_backward(xq, x_inv, wq, w_inv)
        ctx.dtypes = (x.dtype, w.dtype)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: D102
        xq, x_inv, wq, w_inv = ctx.saved_tensors
        x_dtype, w_dtype = ctx.dtypes
        gq, g_inv = to_fp8(grad, E5M2)
        # (M, N) @ (N, K): wq is (K, N) row by row, so its transpose is (N, K) column by column
        grad_x = torch._scaled_mm(gq, wq.t(), scale_a=g_inv, scale_b=w_inv, out_dtype=torch.bfloat16)
        # (K, M) @ (M, N), float32 out for the float32 master weight
        grad_w = torch._scaled_mm(xq.t().contiguous(), _column_major(gq), scale_a=x_inv, scale_b=g_inv,
                                  out_dtype=torch.float32)  # fmt: skip
        return grad_x.to(x_dtype), grad_w.to(w_dtype)


def fp8_matmul(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``x @ w`` (bf16 out) through :class:`Fp8Matmul`."""
    return Fp8Matmul.apply(x, w)


def _fp8_conv1d_forward(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """transformers' ``Conv1D.forward`` (``addmm(bias, x, weight)``) with the product in FP8 when gradients are recorded."""
    k = x.shape[-1]
    x2 = x.reshape(-1, k)
    if not torch.is_grad_enabled() or x2.shape[0] % FP8_MULTIPLE:
        return type(layer).forward(layer, x)
    y = fp8_matmul(x2, layer.weight)
    if layer.bias is not None:
        y = y + layer.bias.to(y.dtype)
    return y.view(*x.shape[:-1], layer.nf)


def _is_conv1d(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and getattr(module, "weight", None) is not None


def swap_fp8_linears(gpt2: nn.Module) -> int:
    """Install the FP8 training forward on each GPT2 block's ``Conv1D`` layers whose sizes allow it.

    Bound as methods on the instances (a deep copy runs on its own weights); the layers keep their
    parameters and their state dict. Returns the number of layers changed.
    """
    n = 0
    for block in getattr(gpt2, "h", ()):
        for module in block.modules():
            if not _is_conv1d(module) or getattr(module, "_toolkit_fp8", False):
                continue
            k, nf = module.weight.shape
            if k % FP8_MULTIPLE or nf % FP8_MULTIPLE:
                continue
            module.forward = types.MethodType(_fp8_conv1d_forward, module)
            module._toolkit_fp8 = True
            n += 1
    return n


def restore_linears(gpt2: nn.Module) -> int:
    """Undo :func:`swap_fp8_linears`: the layers run their own forward again. Returns how many changed."""
    n = 0
    for module in gpt2.modules():
        if getattr(module, "_toolkit_fp8", False):
            del module.forward
            module._toolkit_fp8 = False
            n += 1
    return n
