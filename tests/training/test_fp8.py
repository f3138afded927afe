"""FP8 matmuls in the GPT2 blocks (the ``fp8`` lever), on the CPU: torch's ``_scaled_mm`` runs there too."""

from __future__ import annotations

import logging
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.training.test_packed_forward import _batch, _gpt, _losses_and_grads  # noqa: E402
from utils.training import fp8, packed, speed  # noqa: E402
from utils.training.speed_options import SpeedOptions  # noqa: E402


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.detach().flatten().double(), b.detach().flatten().double(), dim=0))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm())


def test_fp8_matmul_is_the_product_within_fp8_precision_forward_and_backward() -> None:
    torch.manual_seed(0)
    x = torch.randn(512, 256, requires_grad=True)
    w = (torch.randn(256, 96) * 0.05).requires_grad_()
    g = torch.randn(512, 96)
    y = fp8.fp8_matmul(x, w)
    y.float().backward(g)
    x_ref, w_ref = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    (x_ref @ w_ref).backward(g)
    assert y.dtype == torch.bfloat16 and x.grad.dtype == torch.float32 and w.grad.dtype == torch.float32
    # e4m3 keeps 3 mantissa bits (e5m2 for the gradient: 2): a few percent per product, not exact
    for ours, ref in ((y, x_ref @ w_ref), (x.grad, x_ref.grad), (w.grad, w_ref.grad)):
        assert 1e-3 < _rel(ours, ref) < 0.08
        assert _cos(ours, ref) > 0.997


def test_fp8_scaling_uses_the_formats_range_and_survives_zeros() -> None:
    t = torch.tensor([[0.001, -0.002], [0.0005, 0.0]])
    q, inv = fp8.to_fp8(t, fp8.E4M3)
    assert q.dtype == torch.float8_e4m3fn
    assert float(q.float().abs().max()) == torch.finfo(torch.float8_e4m3fn).max  # the largest value maps to 448
    assert torch.allclose(q.float() * inv, t, rtol=0.07, atol=0)
    zq, zinv = fp8.to_fp8(torch.zeros(16, 16), fp8.E5M2)
    assert torch.isfinite(zinv) and float(zq.float().abs().max()) == 0.0
    y = fp8.fp8_matmul(torch.zeros(16, 32), torch.randn(32, 16))
    assert torch.isfinite(y).all() and float(y.abs().max()) == 0.0


def test_swapped_layers_train_in_fp8_and_evaluate_as_before() -> None:
    """Every GPT2 block's four Conv1D layers change; no_grad calls and the state dict stay bit for bit."""
    gpt = _gpt().train()
    ref = _gpt().train()
    assert fp8.swap_fp8_linears(gpt.gpt) == 4 * len(gpt.gpt.h) == 8
    assert fp8.swap_fp8_linears(gpt.gpt) == 0  # once
    assert list(gpt.state_dict()) == list(ref.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(gpt.state_dict().values(), ref.state_dict().values()))
    x = torch.randn(3, 16, gpt.gpt.config.n_embd)  # 48 rows: a multiple of 16
    with torch.no_grad():
        assert torch.equal(gpt.gpt(inputs_embeds=x).last_hidden_state, ref.gpt(inputs_embeds=x).last_hidden_state)
    calls = []
    real = fp8.Fp8Matmul.apply
    fp8.Fp8Matmul.apply = lambda *a: calls.append(a[0].shape) or real(*a)
    try:
        out = gpt.gpt(inputs_embeds=x).last_hidden_state
        odd = gpt.gpt(inputs_embeds=x[:, :15]).last_hidden_state  # 45 rows: the layers' own forward
    finally:
        fp8.Fp8Matmul.apply = real
    assert calls == [torch.Size([48, 64])] * 3 + [torch.Size([48, 256])] + [torch.Size([48, 64])] * 3 + [torch.Size([48, 256])]
    expected = ref.gpt(inputs_embeds=x).last_hidden_state
    assert 0 < _rel(out, expected) < 0.05
    assert torch.equal(odd, ref.gpt(inputs_embeds=x[:, :15]).last_hidden_state)
    assert fp8.restore_linears(gpt.gpt) == 8
    assert torch.equal(gpt.gpt(inputs_embeds=x).last_hidden_state, expected)


def test_fp8_training_loss_and_gradients_stay_within_the_parity_bar() -> None:
    """The packed training forward on rounded rows, FP8 products against float32: the bench's bar
    for bf16 (loss within 2e-2, gradient cosine at least 0.98) holds, and the losses do differ."""
    gpt = _gpt().train()
    gpt._toolkit_pack_multiple = 16
    batch = _batch(seed=3)

    def forward(*a, **k):
        return packed.packed_forward(gpt, *a, **k)

    ref = _losses_and_grads(gpt, batch, forward)
    fp8.swap_fp8_linears(gpt.gpt)
    ours = _losses_and_grads(gpt, batch, forward)
    for i in (0, 1):
        assert ours[i] != ref[i]
        assert abs(ours[i] - ref[i]) / abs(ref[i]) < 2e-2
    assert _cos(ours[2], ref[2]) >= 0.98


def test_fp8_lever_needs_an_fp8_card(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """On the CPU (or an older card) the lever is skipped with one line; on an FP8 card it swaps the layers."""
    gpt = _gpt().train()
    model = types.SimpleNamespace(xtts=types.SimpleNamespace(gpt=gpt))
    no_compile = dict(compile=False, packed_attention=False)
    with caplog.at_level(logging.INFO, logger="utils.training.speed"):
        applied = speed._model_levers(model, SpeedOptions(fp8=True, **no_compile), cuda=False)
    assert "fp8" not in applied and not any(getattr(m, "_toolkit_fp8", False) for m in gpt.modules())
    assert any("fp8 skipped" in r.getMessage() for r in caplog.records)
    assert "fp8" not in speed._model_levers(model, SpeedOptions(fp8=True, bf16=False, **no_compile), cuda=True)
    monkeypatch.setattr(fp8, "fp8_supported", lambda device: True)
    assert "fp8" not in speed._model_levers(model, SpeedOptions(**no_compile), cuda=True)  # off by default
    assert "fp8" in speed._model_levers(model, SpeedOptions(fp8=True, **no_compile), cuda=True)
    assert sum(getattr(m, "_toolkit_fp8", False) for m in gpt.modules()) == 8


def test_fp8_is_off_by_default_and_turned_on_from_the_command_line() -> None:
    from utils.finetune.steps import speed_options
    from utils.gpt_train import parse_args, run_config

    assert SpeedOptions().fp8 is False and SpeedOptions.stock().fp8 is False
    on = run_config(parse_args(["--dataset", "d", "--fp8"]))
    assert on.speed_switches == {"fp8": True} and speed_options(on, 0)["fp8"] is True
    assert speed_options(run_config(parse_args(["--dataset", "d"])), 0)["fp8"] is False
