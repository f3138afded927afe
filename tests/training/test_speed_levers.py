"""The speed levers shared by every stage (compile.py, memory.py, precision.py, optim.py, speed_options.py),
on the CPU: real inductor compiles of tiny GPT2 blocks, SDPA backend choices, compile caches."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn as nn

from utils.training.compile import (
    COMPILE_CACHE,
    compile_blocks,
    exclude_cudnn_attention,
    keep_compile_cache,
    sdpa_backends,
    under_backends,
)
from utils.training.memory import checkpoint_module
from utils.training.speed_options import SpeedOptions, apply_speed_options


def _torch_config(request: pytest.FixtureRequest, config: Any, **values: Any) -> None:
    """Torch config values for this test only (monkeypatch's undo leaves a torch config entry unreadable)."""
    patch = config.patch(**values)
    patch.__enter__()
    request.addfinalizer(lambda: patch.__exit__(None, None, None))


def test_presets() -> None:
    low = SpeedOptions.low_vram()
    assert low.grad_checkpointing and low.optimizer_8bit and low.offload_frozen and not low.fused_adamw
    assert low.compile and not low.cudnn_attention  # the measured low-VRAM path (BENCHMARKS.md)
    stock = SpeedOptions.stock()
    # every lever off; SDPA keeps PyTorch's own backend choice (cuDNN allowed), as in Coqui's step
    assert [k for k, v in stock.to_dict().items() if isinstance(v, bool) and v] == ["cudnn_attention"]
    assert SpeedOptions().bf16 and SpeedOptions().cache_dvae_codes and SpeedOptions().cudnn_attention


def test_compiled_blocks_serve_training_steps_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Evaluation and synthesis (eval mode or no autograd) stay eager; training forwards compile."""

    from transformers import GPT2Config, GPT2Model

    calls = {"compiled": 0}

    def fake_compile(fn, dynamic=None):
        assert dynamic is True

        def run(*args, **kwargs):
            calls["compiled"] += 1
            return fn(*args, **kwargs)

        return run

    monkeypatch.setattr(torch, "compile", fake_compile)
    torch.manual_seed(0)
    gpt2 = GPT2Model(GPT2Config(n_embd=32, n_layer=2, n_head=2, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
    x = torch.randn(2, 5, 32)
    block = gpt2.h[0]
    block.train()
    ref = block(x)
    assert compile_blocks(gpt2.h) == 2 and compile_blocks(gpt2.h) == 0  # once per block
    out = block(x)
    assert calls["compiled"] == 1
    with torch.no_grad():
        block(x)
    block.eval()
    block(x)
    assert calls["compiled"] == 1  # the no-grad and eval-mode calls took the eager forward
    first = lambda o: o[0] if isinstance(o, tuple) else o  # noqa: E731
    torch.testing.assert_close(first(out), first(ref))


def test_checkpointed_compiled_blocks_keep_inputs_only_and_eager_gradients(request: pytest.FixtureRequest) -> None:
    """Low-VRAM with compile: the checkpoint wraps the compiled block (real inductor), so a training
    forward keeps only each block's input, backward recomputes through the compiled graph, and the
    gradients are the eager ones."""

    import torch._dynamo
    from transformers import GPT2Config, GPT2Model

    torch._dynamo.reset()
    torch.manual_seed(0)
    config = GPT2Config(n_embd=32, n_layer=2, n_head=2, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    gpt2 = GPT2Model(config).train()
    twin = copy.deepcopy(gpt2)
    assert compile_blocks(twin.h, recompute=True) == 2
    _torch_config(request, torch._dynamo.config, suppress_errors=False)  # a failed compile raises here
    x = torch.randn(3, 11, 32)

    def run(stack: torch.nn.Module) -> tuple[int, torch.Tensor, list[torch.Tensor]]:
        saved = [0]

        def pack(t: torch.Tensor) -> torch.Tensor:
            saved[0] += t.numel() * t.element_size()
            return t

        inp = x.clone().requires_grad_(True)
        h = inp
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            for block in stack.h:
                out = block(h)
                h = out[0] if isinstance(out, tuple) else out
        h.square().sum().backward()
        return saved[0], inp.grad, [p.grad for p in stack.parameters()]

    eager_saved, eager_dx, eager_grads = run(gpt2)
    ours_saved, ours_dx, ours_grads = run(twin)
    frames = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert frames >= 1  # the compiled path ran (not an eager fallback)
    block_input = x.numel() * x.element_size()
    assert ours_saved <= 2 * block_input < eager_saved / 10  # one input per block, not its activations
    torch.testing.assert_close(ours_dx, eager_dx, rtol=1e-4, atol=1e-5)
    for a, b in zip(ours_grads, eager_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_the_attention_backend_choice_is_baked_into_each_compiled_graph(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDPA backends are entered inside the compiled region: dynamo records them in the graph,
    so graphs traced for cuDNN and for flash-only runs differ (and so do their cache keys)."""

    import torch._dynamo
    from transformers import GPT2Config, GPT2Model

    graphs: list[str] = []
    real_compile = torch.compile

    def capture(gm: torch.fx.GraphModule, example_inputs: Any) -> Any:
        graphs.append(gm.code)
        return gm.forward

    monkeypatch.setattr(torch, "compile", lambda fn, dynamic=None: real_compile(fn, dynamic=dynamic, backend=capture))
    codes = {}
    for cudnn in (True, False):
        torch._dynamo.reset()
        graphs.clear()
        gpt2 = GPT2Model(GPT2Config(n_embd=32, n_layer=1, n_head=2)).train()
        compile_blocks(gpt2.h, attention_backends=sdpa_backends(cudnn))
        out = gpt2.h[0](torch.randn(2, 7, 32))
        assert torch.is_tensor(out[0] if isinstance(out, tuple) else out)
        assert len(graphs) == 1  # one graph: no break at the context manager
        codes[cudnn] = graphs[0]
    import re

    def entered(code: str) -> list[str]:  # the backends named before the graph's first _sdpa_kernel call
        head = code[: code.index("torch.nn.attention._sdpa_kernel(")]
        return re.findall(r"_backend_from_string\('(\w+)'\)", head)

    assert entered(codes[True]) == ["CUDNN_ATTENTION", "FLASH_ATTENTION", "EFFICIENT_ATTENTION", "MATH"]
    assert entered(codes[False]) == ["FLASH_ATTENTION", "EFFICIENT_ATTENTION", "MATH"]


def test_eager_paths_keep_cudnn_out_of_the_forward_and_of_its_recompute() -> None:
    """exclude_cudnn_attention and the eager checkpoint (exclude_cudnn=True) run their module, and the
    checkpoint's recomputation in backward, with SDPA's cuDNN backend switched off."""
    from torch.nn.attention import SDPBackend, _cur_sdpa_kernel_backends

    class Probe(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 4)
            self.seen: list[bool] = []

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.seen.append(SDPBackend.CUDNN_ATTENTION in _cur_sdpa_kernel_backends())
            return self.lin(x).relu()

    outside = Probe()
    exclude_cudnn_attention(outside)
    outside(torch.randn(2, 4))
    checkpointed = Probe().train()
    checkpoint_module(checkpointed, exclude_cudnn=True)
    checkpointed(torch.randn(2, 4, requires_grad=True)).sum().backward()  # forward, then the recompute
    plain = Probe()
    plain(torch.randn(2, 4))
    assert outside.seen == [False] and checkpointed.seen == [False, False] and plain.seen == [True]
    assert SDPBackend.CUDNN_ATTENTION in _cur_sdpa_kernel_backends()  # restored afterwards


def test_compiled_runs_keep_torchs_compile_cache_in_the_output_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With compile on, torch's inductor cache goes to OUTPUT/.compile_cache (a real CPU compile
    writes its kernels there), also when torch has put its default into TORCHINDUCTOR_CACHE_DIR;
    a folder the user set there is kept."""
    import types

    import torch._dynamo

    from tests.training.gpt.test_packed_forward import _gpt
    from utils.training.compat import default_compile_cache_dir

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_compile_cache_dir())  # what importing torch._dynamo leaves
    off = {name: False for name, value in SpeedOptions().to_dict().items() if isinstance(value, bool)}
    model = types.SimpleNamespace(xtts=types.SimpleNamespace(gpt=_gpt().train()))
    config = types.SimpleNamespace(output_path=str(tmp_path / "runs"), optimizer_params={}, optimizer="AdamW")
    with monkeypatch.context() as gpu:  # the levers as on a CUDA machine
        gpu.setattr(torch.cuda, "is_available", lambda: True)
        gpu.setattr(torch, "compile", lambda fn, dynamic=None: fn)
        applied = apply_speed_options(model, config, SpeedOptions(**{**off, "compile": True}), "cuda")
    cache = tmp_path / "runs" / COMPILE_CACHE
    assert "compile" in applied
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(cache) and cache.is_dir()

    torch._dynamo.reset()
    torch.compile(lambda x: (x * 3).sin() + 1)(torch.randn(16))
    assert list(cache.rglob("*.py")) or list(cache.rglob("*.so"))  # the compiled kernel landed there

    other = tmp_path / "mine"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(other))
    assert keep_compile_cache(tmp_path / "elsewhere") == str(other)
    assert not (tmp_path / "elsewhere").exists()


def test_graphs_under_sdpa_kernel_are_cacheable_and_keyed_by_their_backends(request: pytest.FixtureRequest) -> None:
    """A compiled block enters sdpa_kernel inside its graph; AOTAutograd's cache bypassed such graphs
    (each run traced again) until the two calls it leaves are marked cacheable. The backends are
    string constants of the graph, so two backend choices give two graphs (two cache keys)."""
    import torch._dynamo
    import torch._inductor.config as inductor_config
    from torch._functorch._aot_autograd.autograd_cache import BypassAOTAutogradCache, check_cacheable
    from transformers import GPT2Config, GPT2Model

    from utils.training import compat

    _torch_config(request, inductor_config, unsafe_marked_cacheable_functions={})
    block = GPT2Model(GPT2Config(n_embd=32, n_layer=1, n_head=4, attn_implementation="sdpa")).train().h[0]
    graphs = {}
    for cudnn in (True, False):

        def capture(gm, example_inputs, _cudnn=cudnn):
            graphs[_cudnn] = gm
            return gm

        torch._dynamo.reset()
        fn = under_backends(compat.eager_call(block), sdpa_backends(cudnn))
        torch.compile(fn, backend=capture, dynamic=True)(torch.randn(2, 8, 32))
    with pytest.raises(BypassAOTAutogradCache, match="_backend_from_string|_sdpa_kernel"):
        check_cacheable(graphs[True])
    compat.cache_graphs_with_sdpa_kernel()
    for gm in graphs.values():
        check_cacheable(gm)  # no bypass now
    # entering lists cuDNN only where allowed (leaving restores the outer list, cuDNN included in both)
    assert graphs[True].code.count("'CUDNN_ATTENTION'") == graphs[False].code.count("'CUDNN_ATTENTION'") + 1
    assert set(inductor_config.unsafe_marked_cacheable_functions) == set(compat.SDPA_KERNEL_GRAPH_CALLS)
    torch._dynamo.reset()


def test_a_compiled_block_is_traced_once_not_restarted_for_its_float_attributes() -> None:
    """With dynamic shapes Dynamo made the block's floats (eps, dropout p, scale) symbols and then
    restarted the frame once they could not be turned into tensors: AOTAutograd traced twice and the
    first trace's cache key was never saved (a miss in every run). Fixed floats: one trace."""
    import torch._dynamo
    import torch._dynamo.config as dynamo_config
    from torch._dynamo.utils import counters
    from transformers import GPT2Config, GPT2Model

    from utils.training import compat

    block = GPT2Model(GPT2Config(n_embd=32, n_layer=1, n_head=4, attn_implementation="sdpa")).train().h[0]
    traces = {}
    for fixed in (False, True):
        with dynamo_config.patch(specialize_float=False):
            if fixed:
                compat.specialize_float_attributes()
            torch._dynamo.reset()
            counters.clear()
            out = torch.compile(compat.eager_call(block), backend="aot_eager", dynamic=True)(torch.randn(2, 8, 32))
            out[0].sum().backward()
            traces[fixed] = (counters["aot_autograd"]["total"], counters["aot_autograd"]["ok"])
    torch._dynamo.reset()
    assert traces == {False: (2, 1), True: (1, 1)}  # without: a discarded first attempt
