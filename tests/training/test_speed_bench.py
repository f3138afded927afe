"""Speed levers and the training-step benchmark, on the CPU with a tiny XTTS GPT."""

from __future__ import annotations

import copy
import json
import os
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench import train_step as bench_step  # noqa: E402
from utils.training import fast_data, speed  # noqa: E402


@pytest.fixture(scope="module")
def bench_result(tmp_path_factory: pytest.TempPathFactory) -> dict:
    sys.path.insert(0, str(ROOT / "scripts"))
    import bench_train

    work = tmp_path_factory.mktemp("bench")
    out = work / "bench.json"
    rc = bench_train.main(
        [
            "--workdir",
            str(work),
            "--out",
            str(out),
            "--size",
            "tiny",
            "--device",
            "cpu",
            "--clips",
            "8",
            "--min-s",
            "1",
            "--max-s",
            "3",
            "--steps",
            "2",
            "--warmup",
            "1",
            "--stock",
            "fp32:2",
            "--ours",
            "2",
            "--no-ladder",
            "--workers",
            "0",
            "--vocab-size",
            "300",
        ]
    )
    assert rc == 0
    return json.loads(out.read_text())


def test_bench_writes_every_figure(bench_result: dict) -> None:
    for key in ("env", "workload", "gpt_params", "stock", "ours", "parity", "prepare", "code_agreement", "levers"):
        assert key in bench_result, key
    for run in bench_result["stock"] + bench_result["ours"]:
        for key in (
            "samples_per_s",
            "audio_s_per_s",
            "tokens_per_s",
            "tflops_real_tokens",
            "tflops_padded_tokens",
            "loader_wait_share",
            "padding_share",
            "step_ms",
        ):
            assert run[key] >= 0, key
        assert run["tflops_padded_tokens"] >= run["tflops_real_tokens"]
    assert bench_result["stock"][0]["name"] == "stock fp32 b2"
    assert bench_result["prepare"]["clips"] == 8
    assert 1.0 <= bench_result["workload"]["duration_s"]["min"] <= bench_result["workload"]["duration_s"]["max"] <= 3.0
    assert "host_lengths" in bench_result["levers"] and "fast_gelu" in bench_result["levers"]


def test_bench_loss_parity_fp32(bench_result: dict) -> None:
    parity = bench_result["parity"]
    assert parity["ours_precision"] == "fp32"
    assert parity["passed"] is True
    assert parity["max_rel_loss_diff"] <= 1e-4
    assert parity["grad_cosine"] >= 0.9999
    assert abs(parity["grad_norm_ratio"] - 1) < 1e-3
    # cached codes equal the codes Coqui computes inside a padded batch (deterministic DVAE)
    assert bench_result["code_agreement"]["codes_compared"] > 0
    assert bench_result["code_agreement"]["equal_share"] >= 0.9


def test_fast_gelu_is_gelu_new() -> None:
    from transformers.activations import NewGELUActivation

    mlp = nn.Module()
    mlp.act = NewGELUActivation()
    x = torch.randn(1000) * 4
    ref = mlp.act(x)
    assert speed.swap_gelu(mlp) == 1
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
    assert speed.swap_conditioning_attention(gpt) == 2
    out = enc(x)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    assert speed.swap_conditioning_attention(gpt) == 0  # idempotent


def test_a_deep_copy_of_the_fast_forwards_runs_on_its_own_weights() -> None:
    """The fast attention blocks and heads are bound methods: a deep copy's forward uses the copy."""
    from TTS.tts.layers.tortoise.autoregressive import ConditioningEncoder

    torch.manual_seed(0)
    gpt = nn.Module()
    gpt.conditioning_encoder = ConditioningEncoder(80, 64, attn_blocks=1, num_attn_heads=4)
    gpt.mel_head = nn.Linear(64, 1026)
    gpt.text_head = nn.Linear(64, 30)
    assert speed.swap_conditioning_attention(gpt) == 1 and speed.swap_heads(gpt) == 2
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
    assert speed.swap_heads(gpt) == 1
    out = head(x)
    assert out.shape == ref.shape == (4, 43, 1026)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert set(dict(head.named_parameters())) == {"weight", "bias"}


def test_bucket_sampler_covers_each_clip_once_and_cuts_padding() -> None:
    rng = random.Random(0)
    lengths = [rng.randint(44100, 242550) for _ in range(1000)]
    sampler = fast_data.LengthBucketBatchSampler(lengths, 16, seed=3)
    batches = list(sampler)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(1000))
    assert len(batches) == len(sampler)

    def padding(bs: list[list[int]]) -> float:
        real = sum(lengths[i] for b in bs for i in b)
        padded = sum(len(b) * max(lengths[i] for i in b) for b in bs)
        return 1 - real / padded

    plain = [flat_i for flat_i in [list(range(k, min(k + 16, 1000))) for k in range(0, 1000, 16)]]
    assert padding(batches) < 0.05 < 0.25 < padding(plain)
    assert [i for b in sampler for i in b] != flat  # a new order each epoch


def test_bucket_sampler_shards_by_rank_disjoint_equal_and_reshuffled() -> None:
    rng = random.Random(1)
    lengths = [rng.randint(44100, 242550) for _ in range(1001)]  # 63 batches of 16 (one short)
    full = fast_data.LengthBucketBatchSampler(lengths, 16, seed=5)
    for replicas in (2, 3, 4):
        shards = [
            fast_data.LengthBucketBatchSampler(lengths, 16, seed=5, num_replicas=replicas, rank=r)
            for r in range(replicas)
        ]
        for epoch in (0, 7):
            full.set_epoch(epoch)
            everything = full._all_batches()  # the unsharded epoch
            for shard in shards:
                shard.set_epoch(epoch)
            drawn = [list(shard) for shard in shards]
            per_rank = -(-63 // replicas)
            assert len(everything) == 63
            assert [len(d) for d in drawn] == [len(shard) for shard in shards] == [per_rank] * replicas
            padding = everything[: per_rank * replicas - 63]  # the first batches again, on the last ranks
            assert sorted(tuple(x) for d in drawn for x in d) == sorted(tuple(x) for x in everything + padding)
            clips = [i for d in drawn for x in d for i in x]
            assert set(clips) == set(range(1001))  # together the shards cover the epoch ...
            assert len(clips) == 1001 + sum(len(x) for x in padding)  # ... and overlap only in the padding
    a, b = (fast_data.LengthBucketBatchSampler(lengths, 16, seed=5, num_replicas=2, rank=0) for _ in range(2))
    b.set_epoch(1)
    assert list(a) != list(b)  # set_epoch: a new shuffle of the shards
    with pytest.raises(ValueError, match="rank 2 of 2"):
        fast_data.LengthBucketBatchSampler(lengths, 16, num_replicas=2, rank=2)


def test_prompt_slice_matches_coqui(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import TTS.tts.layers.xtts.trainer.dataset as xds

    clip = np.random.default_rng(0).uniform(-0.5, 0.5, 90000).astype(np.float32)
    monkeypatch.setattr(xds, "load_audio", lambda path, sr: torch.from_numpy(clip).unsqueeze(0))
    for is_eval in (False, True):
        for seed in range(5):
            random.seed(seed)
            ref, _, ref_idx = xds.get_prompt_slice("x.wav", 132300, 66150, 22050, is_eval)
            random.seed(seed)
            out, idx = fast_data.prompt_slice(clip, 132300, 66150, is_eval)
            assert idx == ref_idx
            torch.testing.assert_close(out, ref)


def test_oom_backoff_halves_micro_batch_and_keeps_gradient_scale(caplog: pytest.LogCaptureFixture) -> None:
    batch = {
        "text_lengths": torch.tensor([3, 5, 2, 4]),
        "wav_lengths": torch.tensor([10, 20, 30, 40]),
        "padded_text": torch.ones(4, 5, dtype=torch.int32),
        "filenames": ["a", "b", "c", "d"],
        "cond_lens": None,
    }
    calls: list[tuple[int, float]] = []

    def step(part: dict, scale: float) -> float:
        part.pop("padded_text")  # formatting pops keys, as format_batch_on_device does
        if len(part["text_lengths"]) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        calls.append((len(part["text_lengths"]), scale))
        return 1.0

    zeroed = []
    backoff = bench_step.OomBackoff(micro_batch=4, accumulation=2)
    with caplog.at_level("WARNING"):
        out = bench_step.run_with_oom_backoff(step, batch, backoff, lambda: zeroed.append(1))
    assert "padded_text" in batch  # the caller's batch is left as it came
    assert out == [1.0, 1.0]
    assert calls == [(2, 0.5), (2, 0.5)]
    assert backoff.parts == 2 and zeroed == [1]
    assert "micro-batch 4 -> 2, gradient accumulation 2 -> 4" in caplog.text
    parts = bench_step.split_batch(batch, 2)
    assert parts[0]["padded_text"].shape == (2, 5) and parts[1]["padded_text"].shape == (2, 4)
    assert parts[1]["filenames"] == ["c", "d"]


def test_presets() -> None:
    low = speed.SpeedOptions.low_vram()
    assert low.grad_checkpointing and low.optimizer_8bit and low.offload_frozen and not low.fused_adamw
    assert low.compile and not low.cudnn_attention  # the measured low-VRAM path (BENCHMARKS.md)
    stock = speed.SpeedOptions.stock()
    # every lever off; SDPA keeps PyTorch's own backend choice (cuDNN allowed), as in Coqui's step
    assert [k for k, v in stock.to_dict().items() if isinstance(v, bool) and v] == ["cudnn_attention"]
    assert speed.SpeedOptions().bf16 and speed.SpeedOptions().cache_dvae_codes and speed.SpeedOptions().cudnn_attention


def test_continuous_loader_keeps_epochs_exact() -> None:
    class Items(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 10

        def __getitem__(self, i: int) -> int:
            return i

    sampler = fast_data.LengthBucketBatchSampler(list(range(10)), 3, seed=1)
    loader = torch.utils.data.DataLoader(
        Items(),
        batch_sampler=fast_data._Cycle(sampler),
        collate_fn=list,
        num_workers=2,
        persistent_workers=True,
        prefetch_factor=2,
    )
    cont = fast_data.ContinuousLoader(loader, len(sampler), 3)
    assert len(cont) == 4
    for _ in range(3):  # each epoch: every item exactly once
        assert sorted(i for b in cont for i in b) == list(range(10))


def _fake_cuda_memory(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """torch.cuda's memory calls for auto_micro_batch without a GPU; a probe sets ``["peak"]`` (bytes)."""
    mem = {"peak": 0}
    for name in ("synchronize", "empty_cache", "reset_peak_memory_stats"):
        monkeypatch.setattr(torch.cuda, name, lambda: None)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda: mem["peak"])
    return mem


def test_auto_micro_batch_search(monkeypatch: pytest.MonkeyPatch) -> None:
    mem = _fake_cuda_memory(monkeypatch)
    sizes: list[int] = []

    def probe(b: int) -> None:  # 4.2 GiB fixed + 60 MiB per clip, OOM above 40 clips
        sizes.append(b)
        if b > 40:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        mem["peak"] = int((4.2 + 0.06 * b) * 2**30)

    b = speed.auto_micro_batch(probe, 7 * 2**30, max_batch=64)
    assert 4.2 + 0.06 * b <= 0.9 * 7  # fits with the 10% margin
    assert b >= 28  # and is not far below the largest that fits (35)
    assert sizes[:2] == [12, 12] and 48 in sizes  # never 1: a compiled step would specialise on it
    assert 1 not in sizes


@pytest.mark.parametrize(
    ("effective", "limit_clips", "chosen", "most_probes"),
    [
        (252, 221, 126, 6),  # the H200: 12, 12, then 36, 84, 126, 252 (earlier: 13 probes)
        (252, 100, 84, 6),
        (251, 128, 128, 16),  # a prime: 1 and 251 only, so the sizes between are searched for the warning
    ],
)
def test_auto_micro_batch_probes_only_the_exact_splits(monkeypatch, effective, limit_clips, chosen, most_probes):
    mem = _fake_cuda_memory(monkeypatch)
    sizes: list[int] = []

    def probe(b: int) -> None:  # 8 GiB fixed + 0.5 GiB per clip: limit_clips fit in 90% of the budget
        sizes.append(b)
        mem["peak"] = int((8 + 0.5 * b) * 2**30)

    budget = int((8 + 0.5 * limit_clips) * 2**30 / 0.9) + 1
    divisors = [d for d in range(1, effective + 1) if effective % d == 0]
    b = speed.auto_micro_batch(probe, budget, max_batch=effective, candidates=divisors)
    assert b >= chosen - max(1, chosen // 8) and b <= limit_clips
    if effective % chosen == 0:
        assert b == chosen and set(sizes) <= set(divisors)
    first = 12 if effective % 12 == 0 else 2  # the compiling probe: a split of at least 12 clips where there is one
    assert len(sizes) <= most_probes and sizes[:2] == [first, first] and 1 not in sizes


def test_auto_micro_batch_compiles_at_two_clips_when_twelve_do_not_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    """A small card: the probe at 12 clips runs out of memory, 2 fit, and the split in between is found."""
    mem = _fake_cuda_memory(monkeypatch)
    sizes: list[int] = []

    def probe(b: int) -> None:  # 4 GiB fixed + 0.25 GiB per clip: 9 clips within 90% of 7 GiB
        sizes.append(b)
        if b > 10:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        mem["peak"] = int((4 + 0.25 * b) * 2**30)

    divisors = [d for d in range(1, 253) if 252 % d == 0]
    assert speed.auto_micro_batch(probe, 7 * 2**30, max_batch=252, candidates=divisors) == 9
    assert sizes[:3] == [12, 2, 2] and max(sizes) == 12 and 1 not in sizes


def test_auto_micro_batch_falls_back_to_one_clip_when_two_do_not_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_cuda_memory(monkeypatch)
    sizes: list[int] = []

    def probe(b: int) -> None:
        sizes.append(b)
        if b > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    assert speed.auto_micro_batch(probe, 8 * 2**30, candidates=[1, 2, 3, 6]) == 1
    assert sizes == [2]


def test_end_to_end_bench_reports_training_and_all_in_rates(tiny_base: Path, tmp_path: Path) -> None:
    """scripts/bench_gpt_train.py's measurement on the tiny base (CPU): the real command, two epochs."""
    from bench.gpt_train import measure_gpt_train

    r = measure_gpt_train(
        tmp_path,
        clips=40,
        epochs=2,
        workers=0,
        base_model=tiny_base,
        extra_args=["--no-progress"],
        profile_steps=2,
        measure_imports=True,
        startup_profile=tmp_path / "stacks.txt",
    )
    assert r["exit_code"] == 0 and r["train_rows"] == 32 and r["excluded"] == 0
    assert [e["train_samples"] for e in r["per_evaluation"]] == [32, 32]  # every kept clip once per epoch
    assert r["training_samples_per_s"] > 0 and r["all_in_samples_per_s"] > 0
    # evaluation and checkpoint writes are outside the training figure, inside the all-in one
    assert r["training_samples_per_s"] > r["all_in_samples_per_s"]
    assert any(w.startswith("best_model_") for w in r["checkpoint_writes"])
    assert (r["micro_batch"], r["grad_accum"]) == (3, 84)  # the table's sizes: no GPU to size from
    assert "needs a CUDA GPU" in r["micro_batch_log"][0]
    assert r["profile"]["steps"] == 2 and r["profile"]["wall_s"] > 0 and r["profile"]["top_cpu"]
    assert (tmp_path / "profile.txt").is_file() and (tmp_path / "profile_trace.json.gz").is_file()
    assert r["profile"]["gpu_idle"]["gaps"] == 0 and r["profile"]["gpu_idle"]["by_host_op"] == []  # no kernels on a CPU
    assert r["profile"]["calls"]["aten::item"] >= 0
    # token counts for MFU: 32 prompt latents + text + 2 + codes + 5 per clip, clips of 1-11 s
    assert 32 + 7 + 22 < r["useful_tokens_per_sample"] < 32 + 250 + 7 + 240
    assert 0 <= r["padding_share"] < 0.5
    assert r["gpt_params"] > 0 and r["mfu_useful_tokens"] is None  # no GPU: no peak to divide by
    assert 0 < r["start_to_first_step_s"] < r["start_to_first_step_done_s"] < r["wall_s"]
    assert 0 < r["imports_s"]["torch"] < r["imports_s"]["torch_and_coqui"]  # coqui-tts adds transformers
    # the start-up's stack samples end with the first step: the recipe's run holds nearly all of it
    startup = r["startup_profile"]
    assert startup["seconds"] == pytest.approx(r["start_to_first_step_done_s"], abs=0.5)
    inclusive = dict(startup["inclusive"])
    assert inclusive["finetune/recipe.py:run"] == pytest.approx(startup["seconds"], rel=0.1)
    # the summary keeps the 40 heaviest functions; the collapsed stacks keep every sample
    stacks = [line.rsplit(" ", 1) for line in (tmp_path / "stacks.txt").read_text().splitlines()]
    in_run = sum(int(n) for stack, n in stacks if "finetune/recipe.py:run" in stack)
    in_clip_cache = sum(int(n) for stack, n in stacks if "training/fast_data.py:prepare_clip_cache" in stack)
    assert in_run == pytest.approx(startup["samples"], rel=0.1)
    assert 0 < in_clip_cache < in_run
    assert set(r["compile"]) == {"counters", "phases_s"}  # torch.compile's facts at the first step's end


def test_compiled_blocks_serve_training_steps_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Evaluation and synthesis (eval mode or no autograd) stay eager; training forwards compile."""
    import types

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
    model = types.SimpleNamespace(xtts=types.SimpleNamespace(gpt=types.SimpleNamespace(gpt=gpt2)))
    x = torch.randn(2, 5, 32)
    block = gpt2.h[0]
    block.train()
    ref = block(x)
    assert speed.compile_blocks(model) == 2 and speed.compile_blocks(model) == 0  # once per block
    out = block(x)
    assert calls["compiled"] == 1
    with torch.no_grad():
        block(x)
    block.eval()
    block(x)
    assert calls["compiled"] == 1  # the no-grad and eval-mode calls took the eager forward
    first = lambda o: o[0] if isinstance(o, tuple) else o  # noqa: E731
    torch.testing.assert_close(first(out), first(ref))


def test_checkpointed_compiled_blocks_keep_inputs_only_and_eager_gradients(monkeypatch: pytest.MonkeyPatch) -> None:
    """Low-VRAM with compile: the checkpoint wraps the compiled block (real inductor), so a training
    forward keeps only each block's input, backward recomputes through the compiled graph, and the
    gradients are the eager ones."""
    import types

    import torch._dynamo
    from transformers import GPT2Config, GPT2Model

    torch._dynamo.reset()
    torch.manual_seed(0)
    config = GPT2Config(n_embd=32, n_layer=2, n_head=2, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    gpt2 = GPT2Model(config).train()
    twin = copy.deepcopy(gpt2)
    model = types.SimpleNamespace(xtts=types.SimpleNamespace(gpt=types.SimpleNamespace(gpt=twin)))
    assert speed.compile_blocks(model, recompute=True) == 2
    monkeypatch.setattr(torch._dynamo.config, "suppress_errors", False)  # a failed compile raises here
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


def test_low_vram_levers_leave_every_block_to_the_compiled_checkpoint() -> None:
    """enable_grad_checkpointing(blocks=False) leaves the GPT2 and conditioning blocks to
    compile_blocks; blocks=True wraps each of them in an eager checkpoint."""
    import types

    from transformers import GPT2Config, GPT2Model

    def model() -> Any:
        gpt2 = GPT2Model(GPT2Config(n_embd=32, n_layer=2, n_head=2))
        enc = types.SimpleNamespace(attn=[torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)])
        return types.SimpleNamespace(
            xtts=types.SimpleNamespace(gpt=types.SimpleNamespace(gpt=gpt2, conditioning_encoder=enc))
        )

    compiled, eager = model(), model()
    speed.enable_grad_checkpointing(compiled, blocks=False)
    speed.enable_grad_checkpointing(eager, blocks=True)
    assert len(speed.training_blocks(compiled)) == 4
    assert all(
        "forward" not in vars(block) for block in speed.training_blocks(compiled)
    )  # the compiled call checkpoints
    assert all("forward" in vars(block) for block in speed.training_blocks(eager))
    assert compiled.xtts.gpt.gpt.config.use_cache is False


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
    speed.swap_conditioning_attention(holder)
    gpt2 = GPT2Model(GPT2Config(n_embd=32, n_layer=2, n_head=2, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
    return types.SimpleNamespace(
        xtts=types.SimpleNamespace(gpt=types.SimpleNamespace(gpt=gpt2, conditioning_encoder=enc))
    )


@pytest.mark.parametrize("recompute", [False, True])
def test_compiled_conditioning_blocks_give_eager_outputs_and_gradients(
    recompute: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The conditioning encoder's attention blocks compile with the GPT2 blocks (real inductor on
    the CPU): the same outputs and gradients as eager; with recompute a training forward keeps only
    each block's input."""
    import torch._dynamo

    torch._dynamo.reset()
    eager_model, ours_model = _conditioning_gpt(), _conditioning_gpt()  # the fast forwards close over their own blocks
    assert speed.compile_blocks(ours_model, recompute=recompute) == 2 + 2
    monkeypatch.setattr(torch._dynamo.config, "suppress_errors", False)  # a failed compile raises here
    x = torch.randn(3, 80, 37)

    def run(model: Any) -> tuple[int, torch.Tensor, list[torch.Tensor]]:
        enc = model.xtts.gpt.conditioning_encoder.train()
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
    eager_saved, eager_dh, eager_grads = run(eager_model)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == before
    ours_saved, ours_dh, ours_grads = run(ours_model)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > before  # the compiled path ran
    torch.testing.assert_close(ours_dh, eager_dh, rtol=1e-4, atol=1e-4)  # gradients of order 10
    for a, b in zip(ours_grads, eager_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    block_input = 3 * 64 * 37 * 4
    if recompute:
        assert ours_saved <= 2 * block_input < eager_saved / 4  # one input per block, not its activations
    else:
        assert ours_saved > 2 * block_input


def test_the_attention_backend_choice_is_baked_into_each_compiled_graph(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDPA backends are entered inside the compiled region: dynamo records them in the graph,
    so graphs traced for cuDNN and for flash-only runs differ (and so do their cache keys)."""
    import types

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
        model = types.SimpleNamespace(xtts=types.SimpleNamespace(gpt=types.SimpleNamespace(gpt=gpt2)))
        speed.compile_blocks(model, attention_backends=speed.sdpa_backends(cudnn))
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


def test_padded_token_counts_include_the_rounding_of_packed_rows() -> None:
    """Two clips: rows of 32 + text + 2 + codes + 5 positions; rounded rows count up to a multiple of 16."""
    batch = {"text_lengths": torch.tensor([10, 4]), "wav_lengths": torch.tensor([20 * 1024, 8 * 1024])}
    exact = bench_step.batch_counts(batch)
    rounded = bench_step.batch_counts(batch, multiple=16)
    assert exact["tokens"] == rounded["tokens"] == (32 + 10 + 2 + 20 + 5) + (32 + 4 + 2 + 8 + 5)  # 69 + 51
    assert exact["padded_tokens"] == 2 * 69 and rounded["padded_tokens"] == 2 * 80


@pytest.mark.parametrize("conditioning", [True, False])
def test_low_vram_levers_on_a_gpu_checkpoint_around_each_compiled_block(
    conditioning: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The low-VRAM preset's wiring (as on a CUDA machine): the GPT2 and conditioning-encoder blocks
    are compiled with the checkpoint outside the compiled call, under the flash-only backends.
    Without compile_conditioning the conditioning blocks keep an eager checkpoint instead."""
    import types

    import torch.utils.checkpoint as ckpt_module

    from tests.training.test_packed_forward import _gpt
    from utils.training.speed_options import SpeedOptions

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
    model = types.SimpleNamespace(xtts=types.SimpleNamespace(gpt=gpt))
    applied = speed._model_levers(model, SpeedOptions.low_vram(compile_conditioning=conditioning), cuda=True)
    assert {"grad_checkpointing", "compile", "no_cudnn_attention"} <= set(applied)
    enc = gpt.conditioning_encoder
    assert len(compiled) == len(gpt.gpt.h) + (len(enc.attn) if conditioning else 0) == 2 + (6 if conditioning else 0)
    assert all("forward" not in vars(block) for block in gpt.gpt.h)  # no eager checkpoint inside
    wrapped = {
        vars(block)["forward"].__qualname__ for block in enc.attn
    }  # the fast forward, or the eager checkpoint around it
    assert wrapped == ({"_fast_attention_forward"} if conditioning else {"_checkpoint_module.<locals>.forward"})
    out = gpt.gpt.h[0](torch.randn(2, 5, gpt.gpt.config.n_embd))
    assert torch.is_tensor(out[0] if isinstance(out, tuple) else out)
    enc.attn[0](torch.randn(2, enc.dim, 9))
    assert checkpointed[0] is compiled[0] and len(checkpointed) == 2  # the checkpoint ran the compiled GPT2 call itself
    assert (checkpointed[1] in compiled) == conditioning  # and the compiled conditioning call, or the eager block


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
    speed.exclude_cudnn_attention(outside)
    outside(torch.randn(2, 4))
    checkpointed = Probe().train()
    speed._checkpoint_module(checkpointed, exclude_cudnn=True)
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

    from tests.training.test_packed_forward import _gpt
    from utils.training.compat import default_compile_cache_dir
    from utils.training.speed_options import SpeedOptions

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_compile_cache_dir())  # what importing torch._dynamo leaves
    off = {name: False for name, value in SpeedOptions().to_dict().items() if isinstance(value, bool)}
    model = types.SimpleNamespace(xtts=types.SimpleNamespace(gpt=_gpt().train()))
    config = types.SimpleNamespace(output_path=str(tmp_path / "runs"), optimizer_params={}, optimizer="AdamW")
    with monkeypatch.context() as gpu:  # the levers as on a CUDA machine
        gpu.setattr(torch.cuda, "is_available", lambda: True)
        gpu.setattr(torch, "compile", lambda fn, dynamic=None: fn)
        applied = speed.apply_speed_options(model, config, SpeedOptions(**{**off, "compile": True}), "cuda")
    cache = tmp_path / "runs" / speed.COMPILE_CACHE
    assert "compile" in applied
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(cache) and cache.is_dir()

    torch._dynamo.reset()
    torch.compile(lambda x: (x * 3).sin() + 1)(torch.randn(16))
    assert list(cache.rglob("*.py")) or list(cache.rglob("*.so"))  # the compiled kernel landed there

    other = tmp_path / "mine"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(other))
    assert speed.keep_compile_cache(tmp_path / "elsewhere") == str(other)
    assert not (tmp_path / "elsewhere").exists()


def test_gpu_idle_gaps_are_charged_to_the_host_ops_open_when_work_resumed() -> None:
    """Kernels with a 50 us gap (no host op open), a 10 us gap (launch latency, not charged) and a
    700 us gap that ends inside the optimizer's fused kernel launch; another thread's ops are ignored."""
    from bench.gpu_gaps import NO_OP, gpu_idle_gaps

    def x(cat: str, name: str, ts: float, dur: float, tid: int = 1) -> dict:
        return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur, "pid": 1, "tid": tid}

    events = [
        x("kernel", "gemm", 0, 100, tid=7),
        x("kernel", "gelu", 150, 100, tid=7),
        x("gpu_memset", "m", 260, 40, tid=7),
        x("kernel", "adamw", 1000, 100, tid=7),
        x("cpu_op", "aten::mm", 0, 20),
        x("cpu_op", "aten::gelu", 160, 5),
        x("cpu_op", "aten::zero_", 255, 4),
        x("user_annotation", "Optimizer.step#AdamW.step", 900, 150),
        x("cpu_op", "aten::_fused_adamw_", 990, 10),
        x("cpu_op", "DataLoader.__next__", 120, 60, tid=2),  # another thread: never charged
        {"ph": "i", "cat": "kernel", "name": "instant", "ts": 500},  # not a complete event
    ]
    r = gpu_idle_gaps(events)
    assert (r["span_us"], r["busy_us"], r["idle_us"], r["gaps"]) == (1100.0, 340.0, 760.0, 3)
    assert r["by_host_op"] == [["Optimizer.step#AdamW.step > aten::_fused_adamw_", 700.0, 1], [NO_OP, 50.0, 1]]
    assert r["charged_us"] == 750.0  # the 10 us gap is idle time but below min_gap_us
    assert gpu_idle_gaps([])["gaps"] == 0

    # with launch records: the kernel after the long gap was launched from the autograd thread
    # (tid 3) at 980, inside a backward op there, while the main thread sat in the optimizer
    events[3]["args"] = {"correlation": 42}
    events += [
        x("cpu_op", "autograd::engine::evaluate_function: MmBackward0", 950, 40, tid=3),
        x("cpu_op", "aten::mm", 970, 15, tid=3),
        {**x("cuda_runtime", "cudaLaunchKernel", 980, 3, tid=3), "args": {"correlation": 42}},
    ]
    r = gpu_idle_gaps(events)
    assert r["by_host_op"][0] == ["autograd::engine::evaluate_function: MmBackward0 > aten::mm", 700.0, 1]


def test_graphs_under_sdpa_kernel_are_cacheable_and_keyed_by_their_backends(monkeypatch: pytest.MonkeyPatch) -> None:
    """A compiled block enters sdpa_kernel inside its graph; AOTAutograd's cache bypassed such graphs
    (each run traced again) until the two calls it leaves are marked cacheable. The backends are
    string constants of the graph, so two backend choices give two graphs (two cache keys)."""
    import torch._dynamo
    import torch._inductor.config as inductor_config
    from torch._functorch._aot_autograd.autograd_cache import BypassAOTAutogradCache, check_cacheable
    from transformers import GPT2Config, GPT2Model

    from utils.training import compat

    monkeypatch.setattr(inductor_config, "unsafe_marked_cacheable_functions", {})
    block = GPT2Model(GPT2Config(n_embd=32, n_layer=1, n_head=4, attn_implementation="sdpa")).train().h[0]
    graphs = {}
    for cudnn in (True, False):

        def capture(gm, example_inputs, _cudnn=cudnn):
            graphs[_cudnn] = gm
            return gm

        torch._dynamo.reset()
        fn = speed._under_backends(compat.eager_call(block), speed.sdpa_backends(cudnn))
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


def test_a_compiled_block_is_traced_once_not_restarted_for_its_float_attributes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
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
        monkeypatch.setattr(dynamo_config, "specialize_float", False)
        if fixed:
            compat.specialize_float_attributes()
        torch._dynamo.reset()
        counters.clear()
        out = torch.compile(compat.eager_call(block), backend="aot_eager", dynamic=True)(torch.randn(2, 8, 32))
        out[0].sum().backward()
        traces[fixed] = (counters["aot_autograd"]["total"], counters["aot_autograd"]["ok"])
    torch._dynamo.reset()
    assert traces == {False: (2, 1), True: (1, 1)}  # without: a discarded first attempt
