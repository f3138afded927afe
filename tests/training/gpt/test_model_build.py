"""Building the GPT trainer from a base checkpoint: no random init for what the checkpoint fills."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch

from utils.gpt_train import build_config
from utils.hparams import resolve


def _config(base: Path, out: Path):
    return build_config(resolve(dataset_hours=0.01), base, output_path=out, language="en")


def _count_normal_calls(monkeypatch, build):
    calls = []
    original = torch.Tensor.normal_

    def counted(self, *args, **kwargs):
        calls.append(tuple(self.shape))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "normal_", counted)
    model = build()
    monkeypatch.setattr(torch.Tensor, "normal_", original)
    return model, len(calls)


def test_same_weights_as_coqui_with_far_less_random_init(tiny_base: Path, tmp_path: Path, monkeypatch) -> None:
    from TTS.tts.layers.xtts.trainer.gpt_trainer import GPTTrainer

    from utils.training.gpt.model import ToolkitGPTTrainer

    ours, ours_calls = _count_normal_calls(monkeypatch, lambda: ToolkitGPTTrainer(_config(tiny_base, tmp_path / "a")))
    stock, stock_calls = _count_normal_calls(monkeypatch, lambda: GPTTrainer(_config(tiny_base, tmp_path / "b")))
    a, b = ours.xtts.state_dict(), stock.xtts.state_dict()
    assert sorted(a) == sorted(b)
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert differ == []
    gpt2 = sum(1 for _ in ours.xtts.gpt.gpt.parameters())
    assert gpt2 >= 10
    # the GPT2 stack draws nothing; Coqui's build draws for each GPT2 weight matrix and embedding
    assert stock_calls - ours_calls >= 8, (stock_calls, ours_calls)
    assert all(p.requires_grad for p in ours.xtts.gpt.parameters())
    # the torch and transformers init functions are back to normal afterwards
    lin = torch.nn.Linear(64, 64)
    torch.nn.init.normal_(lin.weight, std=0.02)
    assert 0.015 < float(lin.weight.detach().std()) < 0.025


def test_a_checkpoint_missing_a_gpt2_weight_gets_it_initialised(tiny_base: Path, tmp_path: Path, caplog) -> None:
    from utils.training.gpt.model import ToolkitGPTTrainer

    base = tmp_path / "base"
    shutil.copytree(tiny_base, base)
    ckpt = torch.load(base / "model.pth", map_location="cpu", weights_only=True)
    key = "gpt.gpt.h.0.attn.c_attn.weight"
    assert key in ckpt["model"]
    del ckpt["model"][key]
    torch.save(ckpt, base / "model.pth")
    with caplog.at_level(logging.WARNING, logger="utils.training.gpt.model"):
        model = ToolkitGPTTrainer(_config(base, tmp_path / "runs"))
    assert any("lacks 1 GPT2 weights" in r.getMessage() for r in caplog.records)
    weight = model.xtts.gpt.gpt.h[0].attn.c_attn.weight
    assert torch.isfinite(weight).all()
    assert 0.015 < float(weight.std()) < 0.025  # GPT2's own init: normal, std 0.02
    kept = model.xtts.gpt.gpt.h[0].mlp.c_fc.weight
    assert torch.equal(kept, ckpt["model"]["gpt.gpt.h.0.mlp.c_fc.weight"])


def test_a_half_precision_checkpoint_gives_float32_weights(tiny_base: Path, tmp_path: Path) -> None:
    from utils.training.gpt.model import ToolkitGPTTrainer

    base = tmp_path / "base"
    shutil.copytree(tiny_base, base)
    ckpt = torch.load(base / "model.pth", map_location="cpu", weights_only=True)
    ckpt["model"] = {k: v.half() if v.is_floating_point() else v for k, v in ckpt["model"].items()}
    torch.save(ckpt, base / "model.pth")
    model = ToolkitGPTTrainer(_config(base, tmp_path / "runs"))
    dtypes = {p.dtype for p in model.xtts.gpt.parameters()}
    assert dtypes == {torch.float32}
    weight = model.xtts.gpt.gpt.h[0].mlp.c_fc.weight
    assert torch.equal(weight, ckpt["model"]["gpt.gpt.h.0.mlp.c_fc.weight"].float())
