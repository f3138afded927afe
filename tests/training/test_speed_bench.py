"""The training-step benchmark (bench/train_step.py) and the end-to-end one (bench/gpt_train.py), on the
CPU with a tiny XTTS GPT."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench import train_step as bench_step  # noqa: E402


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
    in_clip_cache = sum(int(n) for stack, n in stacks if "gpt/clip_cache.py:prepare_clip_cache" in stack)
    assert in_run == pytest.approx(startup["samples"], rel=0.1)
    assert 0 < in_clip_cache < in_run
    assert set(r["compile"]) == {"counters", "phases_s"}  # torch.compile's facts at the first step's end


def test_padded_token_counts_include_the_rounding_of_packed_rows() -> None:
    """Two clips: rows of 32 + text + 2 + codes + 5 positions; rounded rows count up to a multiple of 16."""
    batch = {"text_lengths": torch.tensor([10, 4]), "wav_lengths": torch.tensor([20 * 1024, 8 * 1024])}
    exact = bench_step.batch_counts(batch)
    rounded = bench_step.batch_counts(batch, multiple=16)
    assert exact["tokens"] == rounded["tokens"] == (32 + 10 + 2 + 20 + 5) + (32 + 4 + 2 + 8 + 5)  # 69 + 51
    assert exact["padded_tokens"] == 2 * 69 and rounded["padded_tokens"] == 2 * 80


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
