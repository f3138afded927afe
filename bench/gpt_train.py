"""End-to-end benchmark: the fine-tune's default path (the FineTune recipe) on a synthetic workload.

    python scripts/bench_gpt_train.py --workdir /tmp/bench_gt --clips 4096 --out gt.json

A full-size random XTTS v2 GPT (or a given base model) trained through
:class:`utils.finetune.FineTune`, the object behind ``utils/gpt_train.py``, with the options the
command would take.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from bench.train_step import BenchSpec, _sync, batch_counts, build_workload, measure_matmul_peak


def measure_gpt_train(
    workdir: str | Path,
    *,
    clips: int = 2048,
    batch_size: int | None = None,
    epochs: int = 3,
    workers: int = 8,
    extra_args: Sequence[str] = (),
    memory_cap_gib: float | None = None,
    profile_steps: int = 0,
    base_model: str | Path | None = None,
    measure_imports: bool = False,
    startup_profile: Path | None = None,
) -> dict[str, Any]:
    """Train a full-size random XTTS v2 GPT (or ``base_model``) through the FineTune recipe and time it.

    The same synthetic workload as :func:`build_workload` (clips uniform 2-11 s), written as coqui
    CSVs (1/32 of the clips held out for eval), trained with the command's defaults (the table's
    effective batch of 252, automatic micro-batch) unless ``batch_size`` or ``extra_args`` say
    otherwise. Epoch 1 includes the one-off clip decode and DVAE-code pass. Two figures per run:

    - training samples/s, from the trainer's own per-evaluation-period figures in metrics.jsonl
      (time inside training steps plus time waiting for batches; evaluation and checkpoint writes
      excluded), over the epochs after the first;
    - all-in samples/s, from the wall time between the epoch-end evaluations (evaluation and the
      best-model write included).

    ``memory_cap_gib`` caps this process's GPU memory (``torch.cuda.set_per_process_memory_fraction``)
    to stand in for a smaller card. ``profile_steps`` > 0 runs that many training steps of epoch 2
    under ``torch.profiler`` and reports the GPU-busy share and the top kernels.
    ``measure_imports`` also times what a fresh process takes to import torch and Coqui's trainer
    (two extra processes; not part of the start-up figure, which starts with them imported).
    ``startup_profile`` (a file path) samples the main thread's Python stack from the start to the
    end of the first training step (:class:`bench.stack_sampler.StackSampler`), reports the seconds
    per function as ``startup_profile`` and writes the collapsed stacks there; ``compile`` holds
    torch.compile's counters (cache hits and misses) and phase times at the end of that step.
    """
    from bench.ddp import make_full_size_random_base
    from utils.finetune import FineTune
    from utils.gpt_train import parse_args, run_config
    from utils.training.trainer import ToolkitTrainer

    root = Path(workdir)
    samples, facts = build_workload(BenchSpec(workdir=str(root / "clips"), clips=clips))
    base = Path(base_model) if base_model else make_full_size_random_base(root / "base")
    n_eval = max(8, clips // 32)
    for name, part in (("metadata_train.csv", samples[n_eval:]), ("metadata_eval.csv", samples[:n_eval])):
        lines = "".join(f"wavs/{Path(s['audio_file']).name}|{s['text']}|bench\n" for s in part)
        (root / "clips" / name).write_text("audio_file|text|speaker_name\n" + lines, encoding="utf-8")
    out = root / "runs"
    argv = [
        "--base-model",
        str(base),
        "--dataset",
        str(root / "clips"),
        "--dataset-hours",
        "5",
        "--epochs",
        str(epochs),
        "--num-workers",
        str(workers),
        "--output-path",
        str(out),
        "--test-sentences",
        "0",
        "--no-quality-eval",
        "--no-export",
        "--no-plots",
        "--max-excluded-share",
        "1.0",
        *extra_args,
    ]
    if batch_size:
        argv += ["--batch-size", str(batch_size)] + ([] if "--grad-accum" in extra_args else ["--grad-accum", "1"])
    cuda = torch.cuda.is_available()
    if cuda and memory_cap_gib:
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, memory_cap_gib * 2**30 / total), 0)
    saves: list[str] = []
    backoffs: list[str] = []

    class _Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            msg = record.getMessage()
            if "written in" in msg:
                saves.append(msg.rsplit(": ", 1)[-1])
            if "CUDA out of memory at micro-batch" in msg or "automatic micro-batch:" in msg:
                backoffs.append(msg)

    catcher = _Catch()
    levels = {}
    for name in ("utils.training.trainer", "utils.training.best_model", "utils.training.batch_size"):
        logger = logging.getLogger(name)
        levels[name] = logger.level
        logger.setLevel(min(logger.getEffectiveLevel(), logging.INFO))  # the lines caught are INFO
        logger.addHandler(catcher)
    profile: dict[str, Any] = {}
    counts: dict[str, Any] = {
        "tokens": 0,
        "padded_tokens": 0,
        "samples": 0,
        "params": None,
        "first_step_at": None,
        "first_step_done_at": None,
    }
    original_step = ToolkitTrainer.train_step
    ToolkitTrainer.train_step = _counted_train_step(original_step, counts)  # type: ignore[method-assign]
    if profile_steps:
        ToolkitTrainer.train_step = _profiled_train_step(ToolkitTrainer.train_step, profile_steps, profile, root)  # type: ignore[method-assign]
    peak_tflops = measure_matmul_peak(torch.device("cuda")) if cuda else None
    imports = import_seconds() if measure_imports else None
    # the trainer's modules imported before the clock starts, on the first run (which builds the
    # base model) and on a rerun alike: "imports_s" says what a fresh process pays on top
    import TTS.tts.layers.xtts.trainer.gpt_trainer  # noqa: F401

    if startup_profile is not None:
        from bench.stack_sampler import StackSampler

        counts["sampler"] = StackSampler().start()
    started = time.time()
    try:
        FineTune(run_config(parse_args(argv))).run()  # the command's options, the command's recipe object
        code = 0
    finally:
        ToolkitTrainer.train_step = original_step  # type: ignore[method-assign]
        for name in ("utils.training.trainer", "utils.training.best_model", "utils.training.batch_size"):
            logging.getLogger(name).removeHandler(catcher)
            logging.getLogger(name).setLevel(levels[name])
    wall = time.time() - started
    if "_prof" in profile:
        profile["gpu_idle"] = _idle_gaps(profile.pop("_prof"), root / "profile_trace.json.gz")
    run_dir = sorted(p for p in out.iterdir() if p.is_dir() and not p.name.startswith("."))[-1]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    report = json.loads((run_dir / "preflight_report.json").read_text())
    train_rows = report["train"]["kept"]
    per_epoch = [b["elapsed_s"] - a["elapsed_s"] for a, b in zip(records, records[1:])]
    timed = per_epoch[1:] if profile and len(per_epoch) > 1 else per_epoch  # not the profiled epoch
    steady = sum(timed) / len(timed) if timed else None
    later = records[1:] or records
    busy = sum(r["train_samples"] / r["train_samples_per_s"] for r in later if r.get("train_samples_per_s"))
    config = json.loads((run_dir / "config.json").read_text())
    train_rate = sum(r["train_samples"] for r in later) / busy if busy else None
    tokens_per_sample = counts["tokens"] / counts["samples"] if counts["samples"] else None
    mfu = None
    if train_rate and tokens_per_sample and peak_tflops and counts["params"]:
        # 6 x parameters x useful (non-padding) tokens per second, against the measured bf16 matmul peak
        mfu = round(6 * counts["params"] * tokens_per_sample * train_rate / (peak_tflops * 1e12), 4)
    return {
        "exit_code": code,
        "wall_s": round(wall, 1),
        "workload": facts,
        "train_rows": train_rows,
        "excluded": len(report["train"]["excluded"]) + len(report["eval"]["excluded"]),
        "micro_batch": config["batch_size"],
        "grad_accum": config["toolkit"].get("grad_accum"),
        "micro_batch_plan": config["toolkit"].get("micro_batch_plan"),
        "batch_size_source": config["toolkit"]["hparams"]["sources"].get("batch_size"),
        "memory_cap_gib": memory_cap_gib,
        "training_samples_per_s": round(sum(r["train_samples"] for r in later) / busy, 1) if busy else None,
        "all_in_samples_per_s": round(train_rows / steady, 1) if steady else None,
        "epoch_s": [round(x, 2) for x in per_epoch],
        "first_eval_elapsed_s": records[0]["elapsed_s"] if records else None,
        # from the recipe's start (preflight, base model, clip cache, micro-batch probes) to the first training step
        "start_to_first_step_s": round(counts["first_step_at"] - started, 1) if counts["first_step_at"] else None,
        # the same to the end of the first step: a run that found its micro-batch in the memo compiles there
        "start_to_first_step_done_s": (
            round(counts["first_step_done_at"] - started, 1) if counts["first_step_done_at"] else None
        ),
        "imports_s": imports,
        "startup_profile": _startup_profile(counts, startup_profile),
        "compile": counts.get("compile"),
        "per_evaluation": [
            {
                k: r.get(k)
                for k in (
                    "optimizer_step",
                    "train_samples",
                    "train_samples_per_s",
                    "step_s",
                    "loader_wait_share",
                    "gpu_peak_reserved_gib",
                    "gpu_alloc_retries",
                    "train_loss",
                    "eval_loss",
                )
            }
            for r in records
        ],
        "checkpoint_writes": saves,
        "micro_batch_log": backoffs,
        "profile": profile or None,
        "speed_applied": config["toolkit"].get("speed_applied"),
        "gpt_params": counts["params"],
        "useful_tokens_per_sample": round(tokens_per_sample, 1) if tokens_per_sample else None,
        "padding_share": round(1 - counts["tokens"] / counts["padded_tokens"], 4) if counts["padded_tokens"] else None,
        "matmul_peak_tflops": peak_tflops,
        "mfu_useful_tokens": mfu,
        "peak_reserved_gib": max((r.get("gpu_peak_reserved_gib") or 0 for r in records), default=None),
    }


def import_seconds() -> dict[str, float]:
    """Seconds a fresh Python process takes to import torch, and torch with Coqui's XTTS trainer."""
    out = {}
    for name, code in (
        ("torch", "import torch"),
        ("torch_and_coqui", "import torch, TTS.tts.layers.xtts.trainer.gpt_trainer"),
    ):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=300)
        out[name] = round(time.perf_counter() - t, 2)
    return out


def compile_facts(top: int = 25) -> dict[str, Any]:
    """torch.compile's counters (frames, graphs, cache hits and misses) and its slowest phases so far."""
    from torch._dynamo import utils as dynamo_utils

    counters = {k: dict(v) for k, v in dynamo_utils.counters.items() if v}
    phases: list[tuple[str, float]] = []
    text = dynamo_utils.compile_times(repr="str", aggregate=True)
    for line in (text or "").splitlines()[2:]:  # a title, a header, then "name, seconds"
        name, _, value = line.rpartition(", ")
        try:
            phases.append((name, round(float(value), 2)))
        except ValueError:
            continue
    phases.sort(key=lambda kv: -kv[1])
    return {"counters": counters, "phases_s": phases[:top]}


def _startup_profile(counts: dict[str, Any], path: Path | None) -> dict[str, Any] | None:
    """The start-up's stack samples: the summary for the report, the collapsed stacks written to ``path``."""
    sampler = counts.get("sampler")
    if sampler is None or path is None:
        return None
    summary = counts.get("startup_profile") or sampler.stop()  # a run that never stepped: up to its end
    sampler.write_collapsed(path)
    return summary


def _counted_train_step(original: Callable[..., Any], counts: dict[str, Any]) -> Callable[..., Any]:
    """Wrap ``ToolkitTrainer.train_step``: count each batch's useful and padded GPT tokens (for MFU)."""

    def train_step(self: Any, batch: Any, batch_n_steps: int, step: int, loader_start_time: float) -> Any:
        if counts["params"] is None:
            from utils.training.compat import unwrap_model

            counts["first_step_at"] = time.time()
            gpt = unwrap_model(self).xtts.gpt
            counts["params"] = sum(p.numel() for p in gpt.parameters())
            counts["multiple"] = getattr(gpt, "_toolkit_pack_multiple", 1)  # the round_lengths lever
        if isinstance(batch, dict) and "text_lengths" in batch and "wav_lengths" in batch:
            c = batch_counts(batch, multiple=counts.get("multiple", 1))
            counts["tokens"] += c["tokens"]
            counts["padded_tokens"] += c["padded_tokens"]
            counts["samples"] += c["samples"]
        if counts["first_step_done_at"] is not None:
            return original(self, batch, batch_n_steps, step, loader_start_time)
        out = original(self, batch, batch_n_steps, step, loader_start_time)
        if torch.cuda.is_available():
            torch.cuda.synchronize()  # once: the first step's compile or cached-graph load is part of the start-up
        counts["first_step_done_at"] = time.time()
        counts["compile"] = compile_facts()
        if counts.get("sampler") is not None:
            counts["startup_profile"] = counts["sampler"].stop()
        return out

    return train_step


def _idle_gaps(prof: Any, trace_gz: Path) -> dict[str, Any]:
    """The profile's GPU idle gaps by host op (:func:`bench.gpu_gaps.gpu_idle_gaps`); the trace kept gzipped."""
    import gzip
    import shutil

    from bench.gpu_gaps import gpu_idle_gaps

    raw = trace_gz.with_suffix("")
    try:
        prof.export_chrome_trace(str(raw))
        trace = json.loads(raw.read_text(encoding="utf-8"))
    except (OSError, ValueError, RuntimeError) as exc:  # a diagnostic: the run's figures stand without it
        return {"error": f"{type(exc).__name__}: {exc}"}
    with open(raw, "rb") as src, gzip.open(trace_gz, "wb", compresslevel=6) as dst:
        shutil.copyfileobj(src, dst)
    raw.unlink()
    return gpu_idle_gaps(trace.get("traceEvents", []))


COMMAND_BUFFER_FULL = "Command Buffer Full"


def _profiled_train_step(
    original: Callable[..., Any], steps: int, out: dict[str, Any], root: Path
) -> Callable[..., Any]:
    """Wrap ``ToolkitTrainer.train_step``: profile ``steps`` steps from the second epoch's 3rd.

    On a GPU the ``steps`` steps before those are profiled first with kernels only (no host-op
    recording, which itself costs host time per op and opens gaps on the GPU): their busy share is
    ``kernels_only``; the full profile after it gives the attribution (top kernels, idle gaps by
    host op, synchronizing calls).
    """
    from torch.profiler import ProfilerActivity, profile

    state: dict[str, Any] = {"prof": None, "n": 0, "t0": 0.0, "lean": None, "lean_n": 0, "lean_t0": 0.0}
    cuda = torch.cuda.is_available()
    activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]

    def lean_window() -> bool:
        """True while this step belongs to the kernels-only window (opened at its first step)."""
        if state["lean_n"] >= steps:
            return False
        if state["lean"] is None:
            _sync(torch.device("cuda"))
            state["lean"] = profile(activities=[ProfilerActivity.CUDA])
            state["lean"].__enter__()
            state["lean_t0"] = time.perf_counter()
        state["lean_n"] += 1
        return True

    def lean_done() -> None:
        from torch.autograd import DeviceType

        _sync(torch.device("cuda"))
        wall = time.perf_counter() - state["lean_t0"]
        state["lean"].__exit__(None, None, None)
        events = state["lean"].key_averages()
        # "Command Buffer Full" (the host waiting for room in the launch queue) carries device time
        # in these tables but is not a kernel: reported beside the busy time, not in it
        stalls = sum(e.self_device_time_total for e in events if e.key == COMMAND_BUFFER_FULL)
        gpu_us = sum(
            e.self_device_time_total
            for e in events
            if e.device_type == DeviceType.CUDA and e.key != COMMAND_BUFFER_FULL
        )
        out["kernels_only"] = {
            "steps": steps,
            "wall_s": round(wall, 3),
            "gpu_busy_s": round(gpu_us / 1e6, 3),
            "gpu_busy_share": round(gpu_us / 1e6 / wall, 3),
            "command_buffer_full_s": round(stalls / 1e6, 3),
        }

    def train_step(self: Any, batch: Any, batch_n_steps: int, step: int, loader_start_time: float) -> Any:
        if cuda and self.epochs_done == 1 and step >= 2 and lean_window():
            result = original(self, batch, batch_n_steps, step, loader_start_time)
            if state["lean_n"] == steps:
                lean_done()
            return result
        armed = self.epochs_done == 1 and step >= 2 and state["n"] < steps
        if armed and state["prof"] is None:
            _sync(torch.device("cuda" if cuda else "cpu"))
            state["prof"] = profile(activities=activities)
            state["prof"].__enter__()
            state["t0"] = time.perf_counter()
        if armed and cuda:
            import warnings

            # every synchronizing CUDA call in the step warns once, with the Python line that made it
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    result = original(self, batch, batch_n_steps, step, loader_start_time)
                finally:
                    torch.cuda.set_sync_debug_mode("default")
            syncs = state.setdefault("syncs", {})
            for w in caught:
                if "synchroniz" in str(w.message):
                    where = f"{Path(w.filename).name}:{w.lineno}"
                    syncs[where] = syncs.get(where, 0) + 1
        else:
            result = original(self, batch, batch_n_steps, step, loader_start_time)
        if armed:
            state["n"] += 1
            if state["n"] == steps:
                _sync(torch.device("cuda" if cuda else "cpu"))
                wall = time.perf_counter() - state["t0"]
                prof = state["prof"]
                prof.__exit__(None, None, None)
                events = prof.key_averages()
                from torch.autograd import DeviceType

                # kernels only: an operator's row repeats the time of the kernels it launched
                gpu_us = sum(e.self_device_time_total for e in events if e.device_type == DeviceType.CUDA)
                stalls = sum(e.self_device_time_total for e in events if e.key == COMMAND_BUFFER_FULL)
                out.update(
                    {
                        "steps": steps,
                        "wall_s": round(wall, 3),
                        "gpu_busy_s": round(gpu_us / 1e6, 3),
                        "gpu_busy_share": round(gpu_us / 1e6 / wall, 3),
                        "command_buffer_full_s": round(stalls / 1e6, 3),
                    }
                )
                by_name = {e.key: e.count for e in events}
                out["calls"] = {
                    k: by_name.get(k, 0)
                    for k in (
                        "aten::item",
                        "aten::_local_scalar_dense",
                        "cudaStreamSynchronize",
                        "cudaDeviceSynchronize",
                    )
                }
                syncs = state.get("syncs", {})
                out["device_syncs"] = sum(syncs.values())
                out["device_sync_sites"] = sorted(syncs.items(), key=lambda kv: -kv[1])[:15]
                table = events.table(sort_by="self_device_time_total", row_limit=25)
                cpu_table = events.table(sort_by="self_cpu_time_total", row_limit=25)
                # inclusive host time: which layer of the step (checkpoint, optimizer, compiled call) holds it
                nested = events.table(sort_by="cpu_time_total", row_limit=40)
                (root / "profile.txt").write_text(table + "\n\n" + cpu_table + "\n\n" + nested, encoding="utf-8")
                out["_prof"] = prof  # its trace is written after training (seconds of work, outside the timed steps)
                kernels = [e for e in events if e.device_type == DeviceType.CUDA]
                out["top_gpu"] = [
                    (e.key[:60], round(e.self_device_time_total / 1e3, 1))
                    for e in sorted(kernels, key=lambda e: -e.self_device_time_total)[:12]
                ]
                out["top_cpu"] = [
                    (e.key[:60], round(e.self_cpu_time_total / 1e3, 1))
                    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:12]
                ]
        return result

    return train_step
