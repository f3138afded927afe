"""Data-parallel scaling benchmark: training samples/s of the toolkit's real Trainer loop on
1 and N workers (one GPU each, or CPU processes), same micro-batch per worker.

Each measurement runs in fresh worker processes started by torch.distributed.run
(:func:`utils.training.torchrun.launch_local`, also for 1 worker, so both sides pay the same
start-up; ``python -m bench.ddp`` is the worker), builds the model and Trainer as
``utils/gpt_train.py`` does (through
:func:`~utils.training.distributed.build_trainer`), trains ``warmup + steps`` micro-batches per
worker without evaluation or checkpoints, and times the last ``steps`` on rank 0 (the gradient
averaging keeps the ranks in lockstep). samples/s = steps x micro-batch x workers / seconds.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


# XTTS v2's GPT size (427.6 M parameters); the rest of TINY_GPT_ARGS already matches XTTS v2.
FULL_GPT_ARGS = {"gpt_layers": 30, "gpt_n_model_channels": 1024, "gpt_n_heads": 16, "decoder_input_dim": 1024}


def make_full_size_random_base(out_dir: str | Path) -> Path:
    """A random XTTS v2 base with the real GPT size (for timing on machines without the weights).

    Same files and loader as :func:`utils.base_model.make_tiny_base`, with the full GPT; the
    vocabulary stays the tiny one, so the text embedding is smaller than XTTS v2's 6681 rows.
    Reuses ``out_dir`` if it already holds one.
    """
    from utils import base_model

    out = Path(out_dir)
    if (out / "model.pth").is_file():
        return out
    return base_model.make_tiny_base(out, gpt_args={**base_model.TINY_GPT_ARGS, **FULL_GPT_ARGS})


@dataclass(frozen=True)
class ScalingSpec:
    """What to time. ``grad_accum`` is per worker here (1: every micro-batch is an optimizer step)."""

    base_model: str
    dataset: str
    language: str = "en"
    batch_size: int = 2
    grad_accum: int = 1
    steps: int = 20
    warmup: int = 4
    num_loader_workers: int = 0
    lr: float = 1e-5


def samples_for(spec: ScalingSpec, world_size: int) -> list[dict[str, Any]]:
    """The dataset's training rows repeated so each worker gets ``warmup + steps`` micro-batches."""
    from utils.data.csv_io import read_coqui_csv

    rows = [
        {
            "audio_file": str(r.path),
            "text": r.text,
            "speaker_name": r.speaker_name,
            "language": spec.language,
            "root_path": str(Path(r.path).parent),
            "audio_unique_name": str(r.path),
        }
        for r in read_coqui_csv(Path(spec.dataset) / "metadata_train.csv")
    ]
    need = (spec.warmup + spec.steps) * spec.batch_size * world_size
    return [rows[i % len(rows)] for i in range(need)]


def measure(spec: ScalingSpec, world_size: int, workdir: Path) -> dict[str, Any]:
    """Samples/s of ``world_size`` workers (a dict with the timing and the set-up)."""
    from utils.training.torchrun import launch_local

    out = workdir / f"result_{world_size}.json"
    out.unlink(missing_ok=True)
    launch_local(
        world_size,
        "bench.ddp",
        ["--spec", json.dumps(asdict(spec)), "--workdir", str(workdir), "--out", str(out)],
        module=True,
    )
    result = json.loads(out.read_text(encoding="utf-8"))
    seconds = result["times"][-1] - result["times"][spec.warmup - 1]
    samples_timed = spec.steps * spec.batch_size * world_size
    return {
        "world_size": world_size,
        "samples_per_s": round(samples_timed / seconds, 3),
        "step_s": round(seconds / spec.steps, 4),
        "grad_allreduce_s_per_step": round((result["sync_s"][-1] - result["sync_s"][spec.warmup - 1]) / spec.steps, 4),
        "grad_elements": result["grad_numel"],
        # CPU time of rank 0's process per step: near step_s on an idle CPU machine; far below it
        # when the workers wait (for the GPU, for each other, or for cores other programs use).
        "rank0_cpu_s_per_step": round((result["cpu_s"][-1] - result["cpu_s"][spec.warmup - 1]) / spec.steps, 4),
        "micro_batch_per_worker": spec.batch_size,
        "timed_steps": spec.steps,
        "device": result["device"],
    }


def run_scaling(spec: ScalingSpec, world_sizes: list[int], workdir: Path) -> dict[str, Any]:
    """Measure each world size; ``speedup`` is samples/s relative to the first (usually 1)."""
    workdir.mkdir(parents=True, exist_ok=True)
    rows = [measure(spec, n, workdir) for n in world_sizes]
    base = rows[0]["samples_per_s"]
    for row in rows:
        row["speedup"] = round(row["samples_per_s"] / base, 3)
        row["efficiency"] = round(row["speedup"] * rows[0]["world_size"] / row["world_size"], 3)
    return {"spec": asdict(spec), "results": rows, "date": time.strftime("%Y-%m-%d %H:%M:%S")}


class _Done(Exception):
    """Raised from a step callback to end the timed run (no final checkpoint)."""


def _worker(spec: ScalingSpec, samples: list[dict[str, Any]], workdir: str) -> dict[str, Any]:
    import torch
    from trainer import TrainerArgs

    from utils.finetune.training import build_config
    from utils.hparams import resolve
    from utils.training import distributed
    from utils.training.gpt.model import ToolkitGPTTrainer
    from utils.training.trainer import ToolkitTrainer

    values = {
        "epochs": 1,
        "batch_size": spec.batch_size,
        "grad_accum": spec.grad_accum,
        "lr": spec.lr,
        "num_loader_workers": spec.num_loader_workers,
        "save_every_steps": 10**9,
    }
    config = build_config(
        resolve(dataset_hours=1.0, cli=values),
        spec.base_model,
        output_path=workdir,
        language=spec.language,
        run_name="bench_ddp",
    )
    config.run_eval = False
    config.print_step = 10**9
    cuda = torch.cuda.is_available()
    times: list[float] = []
    sync_s: list[float] = []
    cpu_s: list[float] = []
    total = spec.warmup + spec.steps

    def on_step_end(_trainer: Any) -> None:
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter())
        cpu_s.append(time.process_time())
        sync_s.append(distributed.sync_stats()["seconds"])
        if len(times) >= total:
            raise _Done

    distributed.enable_sync_timing()
    # grad_accum here is per worker: build_trainer divides the TrainerArgs count by the world size.
    args = TrainerArgs(grad_accum_steps=spec.grad_accum * distributed.world_size())
    model = ToolkitGPTTrainer(config)
    trainer = distributed.build_trainer(
        ToolkitTrainer,
        args,
        config,
        output_path=workdir,
        model=model,
        train_samples=samples,
        eval_samples=samples[:1],
        callbacks={"on_train_step_end": on_step_end},
    )
    model.run_dir = Path(trainer.output_path)
    try:
        trainer.fit()
    except _Done:
        pass
    if len(times) < total:
        raise RuntimeError(f"only {len(times)} of {total} steps ran; give more rows or fewer steps")
    device = torch.cuda.get_device_name(0) if cuda else f"cpu ({torch.get_num_threads()} threads per worker)"
    stats = distributed.sync_stats()
    return {"times": times, "sync_s": sync_s, "cpu_s": cpu_s, "device": device, "grad_numel": stats["numel"]}


def _worker_main(argv: list[str]) -> int:
    """A torchrun worker of :func:`measure`: rank 0 writes the timings to ``--out`` (JSON)."""
    from utils import cli
    from utils.training import distributed, torchrun

    p = argparse.ArgumentParser()
    p.add_argument("--spec", required=True)
    p.add_argument("--workdir", required=True)
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    cli.setup_logging()
    spec = ScalingSpec(**json.loads(a.spec))
    env = torchrun.worker_env()

    def run() -> int:
        result = _worker(spec, samples_for(spec, distributed.world_size()), a.workdir)
        if distributed.is_rank_zero():
            a.out.write_text(json.dumps(result), encoding="utf-8")
        return 0

    if env is None or env.world_size == 1:
        return run()
    return torchrun.run_worker(env, run)


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
