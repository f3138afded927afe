"""Samples per second of each stage (DVAE, GPT, HiFi-GAN decoder), measured in one run of the recipe.

    python scripts/bench_stages.py --workdir /tmp/bench_stages --clips 256 --out stages.json

The synthetic workload of :func:`bench.train_step.build_workload` (clips 2-11 s, 1/32 held out)
trained through :class:`utils.finetune.FineTune` with ``--stages dvae,gpt,decoder`` and the
command's defaults for each stage (or what ``extra_args`` set), on a random base: the full XTTS v2
size on a GPU, the tiny one on a CPU (``base_model`` for another). Each stage's figures come from
its own metrics.jsonl, written by the toolkit's trainer at every evaluation: the samples it
trained and the time inside its training steps plus the time it waited for batches (evaluation,
checkpoints and the one-off caches excluded). A sample is a DVAE crop (``crop_frames`` mel
frames), a GPT clip, or a decoder segment (``segment_frames`` latent frames); ``audio_s_per_s``
puts the three on one scale. The first evaluation period of a stage includes its warm-up
(compilation, cuDNN planning), so ``samples_per_s_after_first`` leaves it out where there are
several.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

MEL_HOP = 256  # samples per DVAE mel frame at 22,050 Hz
CODE_STRIDE = 1024  # samples per GPT code (one latent frame) at 22,050 Hz
RATE = 22050


def _base(root: Path, base_model: str | Path | None, full_size: bool) -> Path:
    from bench.ddp import make_full_size_random_base
    from utils.base_model import make_tiny_base

    if base_model:
        return Path(base_model)
    if full_size:
        return make_full_size_random_base(root / "base_full")
    tiny = root / "base_tiny"
    return tiny if (tiny / "model.pth").is_file() else make_tiny_base(tiny)


def _dataset(root: Path, clips: int) -> tuple[Path, dict[str, Any]]:
    """The synthetic clips as a dataset folder (coqui CSVs)."""
    from bench.train_step import BenchSpec, build_workload

    samples, facts = build_workload(BenchSpec(workdir=str(root / "clips"), clips=clips))
    n_eval = max(2, clips // 32)
    for name, part in (("metadata_train.csv", samples[n_eval:]), ("metadata_eval.csv", samples[:n_eval])):
        lines = "".join(f"wavs/{Path(s['audio_file']).name}|{s['text']}|bench\n" for s in part)
        (root / "clips" / name).write_text("audio_file|text|speaker_name\n" + lines, encoding="utf-8")
    return root / "clips", facts


def stage_figures(rows: Sequence[dict[str, Any]], audio_s_per_sample: float) -> dict[str, Any]:
    """Samples/s of one stage from its metrics.jsonl rows (each row: ``train_samples``, ``train_samples_per_s``)."""
    periods = [
        (float(r["train_samples"]), float(r["train_samples"]) / float(r["train_samples_per_s"]))
        for r in rows
        if r.get("train_samples") and r.get("train_samples_per_s")
    ]

    def rate(part: list[tuple[float, float]]) -> float | None:
        seconds = sum(s for _, s in part)
        return round(sum(n for n, _ in part) / seconds, 2) if seconds > 0 else None

    all_rate = rate(periods)
    return {
        "samples": int(sum(n for n, _ in periods)),
        "train_seconds": round(sum(s for _, s in periods), 2),
        "samples_per_s": all_rate,
        "samples_per_s_after_first": rate(periods[1:]) if len(periods) > 1 else None,
        "audio_s_per_sample": round(audio_s_per_sample, 3),
        "audio_s_per_s": round(all_rate * audio_s_per_sample, 1) if all_rate else None,
        "evaluations": len(rows),
        "gpu_peak_reserved_gib": max((r.get("gpu_peak_reserved_gib") or 0.0 for r in rows), default=None) or None,
    }


def measure_stages(
    workdir: str | Path,
    *,
    clips: int = 64,
    epochs: int = 2,
    workers: int = 2,
    base_model: str | Path | None = None,
    full_size: bool | None = None,
    extra_args: Sequence[str] = (),
) -> dict[str, Any]:
    """Train the three stages on a synthetic workload and report each stage's samples/s.

    Args:
        workdir: clips, base and runs go here (clips and base are reused by a second call).
        clips: synthetic clips (1/32 held out, at least 2).
        epochs: each stage's epochs (``--epochs``, ``--dvae-epochs``, ``--decoder-epochs``).
        workers: data loader workers of the GPT stage.
        base_model: an XTTS v2 folder (default: a random base, full size on a GPU, tiny on a CPU).
        full_size: force the random base's size (None: full size when CUDA is available).
        extra_args: more options of utils/gpt_train.py (``--decoder-batch-size 32``, ...).
    """
    import torch

    from utils.finetune import FineTune
    from utils.gpt_train import parse_args, run_config

    root = Path(workdir)
    root.mkdir(parents=True, exist_ok=True)
    cuda = torch.cuda.is_available()
    base = _base(root, base_model, cuda if full_size is None else full_size)
    dataset, facts = _dataset(root, clips)
    argv = [
        "--base-model", str(base), "--dataset", str(dataset), "--stages", "dvae,gpt,decoder",
        "--dataset-hours", "5", "--epochs", str(epochs), "--dvae-epochs", str(epochs),
        "--decoder-epochs", str(epochs), "--num-workers", str(workers), "--output-path", str(root / "runs"),
        "--test-sentences", "0", "--no-quality-eval", "--no-plots", "--max-excluded-share", "1.0", *extra_args,
    ]  # fmt: skip
    config = run_config(parse_args(argv))
    started = time.time()
    result = FineTune(config).run()
    assert result is not None
    return {
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "base_model": str(base),
        "clips": clips,
        "workload": facts,
        "argv": argv,
        "run_dir": str(result.run_dir),
        "wall_s": round(time.time() - started, 1),
        "stages": _per_stage(result.run_dir, config, float(facts["duration_s"]["mean"])),
    }


def _per_stage(run_dir: Path, config: Any, clip_s: float) -> dict[str, Any]:
    """Each stage's figures, from its metrics.jsonl and its stages.json record."""
    from utils.finetune.stage_values import decoder_stage, dvae_stage
    from utils.runs import read_jsonl, read_stages

    per_sample = {
        "dvae": dvae_stage(config)[0].crop_frames * MEL_HOP / RATE,
        "gpt": clip_s,
        "decoder": decoder_stage(config)[0].segment_frames * CODE_STRIDE / RATE,
    }
    out = {}
    for stage in read_stages(run_dir):
        figures = stage_figures(read_jsonl(run_dir / stage.metrics), per_sample[stage.name])
        figures["stage_wall_s"] = round((stage.finished_at or 0) - (stage.started_at or 0), 1)
        out[stage.name] = figures
        logger.info(
            "%s stage: %s samples/s (%s audio s/s)", stage.name, figures["samples_per_s"], figures["audio_s_per_s"]
        )
    return out
