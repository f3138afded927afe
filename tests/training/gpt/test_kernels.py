"""The GPT stage's kernel swaps (utils/training/gpt/kernels.py): the same functions as Coqui's, and the
recompute and compile levers wired to the GPT's blocks, on the CPU with tiny modules."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
import torch.nn as nn

from utils.training.compile import compile_blocks
from utils.training.gpt import kernels
from utils.training.speed_options import SpeedOptions


def _torch_config(request: pytest.FixtureRequest, config: Any, **values: Any) -> None:
    """Torch config values for this test only (monkeypatch's undo leaves a torch config entry unreadable)."""
    patch = config.patch(**values)
    patch.__enter__()
    request.addfinalizer(lambda: patch.__exit__(None, None, None))


def test_fast_gelu_is_gelu_new() -> None:
    from transformers.activations import NewGELUActivation

    mlp = nn.Module()
    mlp.act = NewGELUActivation()
    x = torch.randn(1000) * 4
    ref = mlp.act(x)
    assert kernels.swap_gelu(mlp) == 1
    assert isinstance(mlp.act, nn.GELU)
    torch.testing.assert_close(mlp.act(x), ref, rtol=1e-5, atol=1e-6)


def test_fast_attention_block_matches_legacy() -> None:
    from TTS.tts.layers.tortoise.autoregressive import ConditioningEncoder

    torch.manual_seed(0)
    enc = ConditioningEncoder(80, 64, attn_blocks=2, num_attn_heads=4)
    for block in enc.attn:
        nn.init.normal_(block.proj_out.weight, std=0.1)  # Coqui zero-initialises it
    x = torch.randn(3, 80, 37)
    ref = enc(x)
    gpt = nn.Module()
    gpt.conditioning_encoder = enc
    assert kernels.swap_conditioning_attention(gpt) == 2
    out = enc(x)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    assert kernels.swap_conditioning_attention(gpt) == 0  # idempotent


def test_a_deep_copy_of_the_fast_forwards_runs_on_its_own_weights() -> None:
    """The fast attention blocks and heads are bound methods: a deep copy's forward uses the copy."""
    from TTS.tts.layers.tortoise.autoregressive import ConditioningEncoder

    torch.manual_seed(0)
    gpt = nn.Module()
    gpt.conditioning_encoder = ConditioningEncoder(80, 64, attn_blocks=1, num_attn_heads=4)
    gpt.mel_head = nn.Linear(64, 1026)
    gpt.text_head = nn.Linear(64, 30)
    assert kernels.swap_conditioning_attention(gpt) == 1 and kernels.swap_heads(gpt) == 2
    twin = copy.deepcopy(gpt)
    with torch.no_grad():
        nn.init.normal_(twin.conditioning_encoder.attn[0].proj_out.weight, std=0.1)  # Coqui zero-initialises it
        twin.mel_head.weight.mul_(2)
    x, h = torch.randn(2, 80, 9), torch.randn(2, 5, 64)
    assert not torch.allclose(twin.conditioning_encoder(x), gpt.conditioning_encoder(x))
    torch.testing.assert_close(twin.mel_head(h), 2 * gpt.mel_head(h) - gpt.mel_head.bias)
    assert twin.mel_head(h).shape == (2, 5, 1026) and twin.text_head(h).shape == (2, 5, 30)


def test_fast_head_matches_on_sliced_input() -> None:
    torch.manual_seed(0)
    head = nn.Linear(32, 1026)
    x = torch.randn(4, 50, 32)[:, 7:]  # non-contiguous, as in GPT.get_logits
    ref = head(x)
    gpt = nn.Module()
    gpt.mel_head = head
    assert kernels.swap_heads(gpt) == 1
    out = head(x)
    assert out.shape == ref.shape == (4, 43, 1026)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert set(dict(head.named_parameters())) == {"weight", "bias"}


def test_recompute_leaves_compiled_blocks_to_their_compiled_checkpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    """Low-VRAM on a GPU: the GPT2 and conditioning blocks are compiled and checkpoint around the
    compiled call (no eager checkpoint); without a GPU (no compile) each gets an eager checkpoint."""
    import types

    from transformers import GPT2Config, GPT2Model

    monkeypatch.setattr(torch, "compile", lambda fn, dynamic=None: fn)

    def gpt() -> Any:
        gpt2 = GPT2Model(GPT2Config(n_embd=32, n_layer=2, n_head=2))
        enc = types.SimpleNamespace(attn=[torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)])
        return types.SimpleNamespace(gpt=gpt2, conditioning_encoder=enc)

    compiled, eager = gpt(), gpt()
    opts = SpeedOptions.low_vram()
    assert kernels.recompute_and_compile(compiled, opts, cuda=True) == ["grad_checkpointing", "compile"]
    assert kernels.recompute_and_compile(eager, opts, cuda=False) == ["grad_checkpointing"]
    assert len(kernels.training_blocks(compiled)) == 4
    assert all("forward" not in vars(b) and b._toolkit_compiled for b in kernels.training_blocks(compiled))
    assert all("forward" in vars(b) and not hasattr(b, "_toolkit_compiled") for b in kernels.training_blocks(eager))
    assert compiled.gpt.config.use_cache is False and eager.gpt.config.use_cache is False


def _conditioning_gpt(blocks: int = 2) -> Any:
    """A GPT-like namespace: two GPT2 blocks and a conditioning encoder with the fast attention blocks."""
    import types

    from transformers import GPT2Config, GPT2Model
    from TTS.tts.layers.tortoise.autoregressive import ConditioningEncoder

    torch.manual_seed(0)
    enc = ConditioningEncoder(80, 64, attn_blocks=blocks, num_attn_heads=4)
    for block in enc.attn:
        nn.init.normal_(block.proj_out.weight, std=0.1)  # Coqui zero-initialises it
    holder = nn.Module()
    holder.conditioning_encoder = enc
    kernels.swap_conditioning_attention(holder)
    gpt2 = GPT2Model(GPT2Config(n_embd=32, n_layer=2, n_head=2, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
    return types.SimpleNamespace(gpt=gpt2, conditioning_encoder=enc)


@pytest.mark.parametrize("recompute", [False, True])
def test_compiled_conditioning_blocks_give_eager_outputs_and_gradients(
    recompute: bool, request: pytest.FixtureRequest
) -> None:
    """The conditioning encoder's attention blocks compile with the GPT2 blocks (real inductor on
    the CPU): the same outputs and gradients as eager; with recompute a training forward keeps only
    each block's input."""
    import torch._dynamo

    torch._dynamo.reset()
    eager_gpt, ours_gpt = _conditioning_gpt(), _conditioning_gpt()  # the fast forwards close over their own blocks
    assert compile_blocks(kernels.training_blocks(ours_gpt), recompute=recompute) == 2 + 2
    _torch_config(request, torch._dynamo.config, suppress_errors=False)  # a failed compile raises here
    x = torch.randn(3, 80, 37)

    def run(gpt: Any) -> tuple[int, torch.Tensor, list[torch.Tensor]]:
        enc = gpt.conditioning_encoder.train()
        h = enc.init(x).detach().requires_grad_(True)
        saved = [0]

        def pack(t: torch.Tensor) -> torch.Tensor:
            saved[0] += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = enc.attn(h)
        out.square().sum().backward()
        return saved[0], h.grad, [p.grad for p in enc.attn.parameters()]

    before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    eager_saved, eager_dh, eager_grads = run(eager_gpt)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == before
    ours_saved, ours_dh, ours_grads = run(ours_gpt)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > before  # the compiled path ran
    torch.testing.assert_close(ours_dh, eager_dh, rtol=1e-4, atol=1e-4)  # gradients of order 10
    for a, b in zip(ours_grads, eager_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    block_input = 3 * 64 * 37 * 4
    if recompute:
        assert ours_saved <= 2 * block_input < eager_saved / 4  # one input per block, not its activations
    else:
        assert ours_saved > 2 * block_input


@pytest.mark.parametrize("conditioning", [True, False])
def test_low_vram_levers_on_a_gpu_checkpoint_around_each_compiled_block(
    conditioning: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The low-VRAM preset's wiring (as on a CUDA machine): the GPT2 and conditioning-encoder blocks
    are compiled with the checkpoint outside the compiled call, under the flash-only backends.
    Without compile_conditioning the conditioning blocks keep an eager checkpoint instead."""
    import torch.utils.checkpoint as ckpt_module

    from tests.training.gpt.test_packed_forward import _gpt

    compiled: list[Any] = []

    def fake_compile(fn, dynamic=None):
        compiled.append(fn)
        return fn

    checkpointed: list[Any] = []
    real_checkpoint = ckpt_module.checkpoint

    def spy_checkpoint(fn, *args, **kwargs):
        checkpointed.append(fn)
        return real_checkpoint(fn, *args, **kwargs)

    monkeypatch.setattr(torch, "compile", fake_compile)
    monkeypatch.setattr(ckpt_module, "checkpoint", spy_checkpoint)
    gpt = _gpt().train()
    opts = SpeedOptions.low_vram(compile_conditioning=conditioning)
    applied = kernels.swap_kernels(gpt, opts, cuda=True) + kernels.recompute_and_compile(gpt, opts, cuda=True)
    assert {"grad_checkpointing", "compile", "no_cudnn_attention"} <= set(applied)
    enc = gpt.conditioning_encoder
    assert len(compiled) == len(gpt.gpt.h) + (len(enc.attn) if conditioning else 0) == 2 + (6 if conditioning else 0)
    assert all("forward" not in vars(block) for block in gpt.gpt.h)  # no eager checkpoint inside
    wrapped = {
        vars(block)["forward"].__qualname__ for block in enc.attn
    }  # the fast forward, or the eager checkpoint around it
    assert wrapped == ({"_fast_attention_forward"} if conditioning else {"checkpoint_module.<locals>.forward"})
    out = gpt.gpt.h[0](torch.randn(2, 5, gpt.gpt.config.n_embd))
    assert torch.is_tensor(out[0] if isinstance(out, tuple) else out)
    enc.attn[0](torch.randn(2, enc.dim, 9))
    assert checkpointed[0] is compiled[0] and len(checkpointed) == 2  # the checkpoint ran the compiled GPT2 call itself
    assert (checkpointed[1] in compiled) == conditioning  # and the compiled conditioning call, or the eager block
