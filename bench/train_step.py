"""Training-step benchmark: Coqui's stock GPTTrainer step against ours, in one process.

Builds an XTTS v2 GPT (full size or tiny) with random weights, a synthetic workload (noise-like
clips of a uniform duration range at 22.05 kHz, pseudo-word text at a given characters-per-
second rate, a BPE vocabulary of the requested size), then times:

* stock variants: ``GPTTrainer`` + Coqui's ``XTTSDataset`` loader, the step Trainer 0.4 runs
  (format_batch, to_cuda, format_batch_on_device, train_step under autocast, backward, optimizer
  step, zero_grad, loss read back);
* a cumulative ladder of our levers (one added per rung) and ours at larger micro-batches;
* loss parity on fixed batches (stock fp32 against ours, same weights, same codes, dropout off);
* optionally the low-VRAM preset under a hard 7 GiB cap with automatic micro-batch sizing.

Everything is returned as one dict (written as JSON by ``scripts/bench_train.py``).
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import math
import os
import platform
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from utils.training.batch_size import auto_micro_batch, is_oom, probe_training_step
from utils.training.gpt import clip_cache
from utils.training.speed_options import SpeedOptions, apply_speed_options

logger = logging.getLogger(__name__)

SAMPLE_RATE = 22050
LANGS = ["en", "es", "fr", "de", "it", "pt", "pl", "tr", "ru", "nl", "cs", "ar", "zh-cn", "hu", "ko", "ja", "hi"]
SPECIALS = ["[STOP]", "[UNK]", "[SPACE]", "[START]"] + [f"[{lang}]" for lang in LANGS]


@dataclass
class BenchSpec:
    """What to run. Defaults: the reference workload on one GPU."""

    workdir: str
    size: str = "full"  # "full" (30 x 1024 x 16) or "tiny" (2 x 128 x 4)
    clips: int = 512
    min_s: float = 2.0
    max_s: float = 11.0
    chars_per_s: float = 14.0
    vocab_size: int = 6681
    steps: int = 20
    warmup: int = 4
    stock: list[tuple[str, int]] = field(default_factory=lambda: [("fp32", 3), ("bf16", 32)])
    ladder_batch: int = 32
    ours_batches: list[int] = field(default_factory=lambda: [64, 128])
    workers: int = 8
    parity_batches: int = 2
    parity_batch_size: int = 4
    ladder: bool = True
    compile_rung: bool = False
    profile: bool = False
    lowvram: bool = False
    lowvram_budget_gib: float = 7.0
    lowvram_accum: int = 4
    lowvram_micro: int = 0  # 0: automatic micro-batch
    device: str = "cuda"
    seed: int = 1
    progress: bool = False


# --------------------------------------------------------------------------------------------
# Workload
# --------------------------------------------------------------------------------------------


def _pseudo_words(rng: random.Random, n: int) -> list[str]:
    cons, vows = "bcdfghjklmnprstvwz", "aeiou"
    words = set()
    while len(words) < n:
        k = rng.randint(1, 4)
        words.add(
            "".join(
                rng.choice(cons) + rng.choice(vows) + (rng.choice(cons) if rng.random() < 0.3 else "") for _ in range(k)
            )
        )
    return sorted(words)


def _sentence(rng: random.Random, lexicon: list[str], chars: int) -> str:
    out: list[str] = []
    while sum(len(w) + 1 for w in out) < chars:
        out.append(rng.choice(lexicon))
    return " ".join(out)


def write_vocab(path: Path, texts: Iterable[str], vocab_size: int) -> None:
    """A tokenizers BPE in XTTS's layout (special tokens first, [SPACE] separator)."""
    from tokenizers import Tokenizer
    from tokenizers.models import BPE
    from tokenizers.pre_tokenizers import Whitespace
    from tokenizers.trainers import BpeTrainer

    tok = Tokenizer(BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()
    trainer = BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False)
    tok.train_from_iterator(texts, trainer)
    tok.save(str(path))


def _write_clip(job: tuple[str, int, int, int]) -> None:
    """One synthetic clip: a vibrato tone in noise, its own generator (seed, clip index)."""
    import soundfile as sf

    path, n, seed, i = job
    nrng = np.random.default_rng([seed, i])
    t = np.arange(n) / SAMPLE_RATE
    f0 = 100 + 100 * nrng.random()
    sig = 0.2 * np.sin(2 * np.pi * f0 * t * (1 + 0.1 * np.sin(2 * np.pi * 3 * t))) + 0.05 * nrng.standard_normal(n)
    sf.write(path, np.clip(sig, -1, 1).astype(np.float32), SAMPLE_RATE, subtype="PCM_16")


def _write_clips(jobs: list[tuple[str, int, int, int]]) -> None:
    """Write the clips, in parallel processes when there are many (20,480 clips are 37 hours of audio)."""
    workers = min(os.cpu_count() or 1, 16)
    if len(jobs) < 256 or workers < 2:
        for job in jobs:
            _write_clip(job)
        return
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_write_clip, jobs, chunksize=64))


def build_workload(spec: BenchSpec) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Write vocab.json, mel_stats.pth, dvae.pth and the clips; return Coqui samples and facts."""
    root = Path(spec.workdir)
    wav_dir = root / "wavs"
    wav_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(spec.seed)
    lexicon = _pseudo_words(rng, 40000)
    samples, durations, todo = [], [], []
    for i in range(spec.clips):
        dur = rng.uniform(spec.min_s, spec.max_s)
        n = int(dur * SAMPLE_RATE)
        path = wav_dir / f"clip{i:05d}.wav"
        if not path.exists():
            todo.append((str(path), n, spec.seed, i))
        text = _sentence(rng, lexicon, int(round(dur * spec.chars_per_s)))
        samples.append(
            {
                "text": text,
                "audio_file": str(path),
                "speaker_name": "bench",
                "language": "en",
                "root_path": str(root),
                "audio_unique_name": path.stem,
            }
        )
        durations.append(n / SAMPLE_RATE)
    _write_clips(todo)
    corpus = [_sentence(rng, lexicon, 200) for _ in range(4000)] + [s["text"] for s in samples]
    if not (root / "vocab.json").exists():
        write_vocab(root / "vocab.json", corpus, spec.vocab_size)
    torch.save(torch.ones(80), root / "mel_stats.pth")
    torch.save({}, root / "dvae.pth")  # GPTTrainer loads it with strict=False: random real-size DVAE
    facts = {
        "clips": spec.clips,
        "duration_s": {
            "min": min(durations),
            "max": max(durations),
            "mean": float(np.mean(durations)),
            "total_h": sum(durations) / 3600,
        },
        "chars_per_s": float(np.mean([len(s["text"]) / d for s, d in zip(samples, durations)])),
    }
    return samples, facts


def build_model(spec: BenchSpec, batch_size: int) -> tuple[Any, Any]:
    """A GPTTrainer of the recipe's XTTS v2 configuration (or tiny), random weights.

    Coqui's own GPTTrainer with the toolkit's :class:`~utils.training.gpt.model.SpeedLevers` in
    front: its step methods are Coqui's until ``apply_speed_options`` sets the model's levers.
    """
    from TTS.tts.configs.xtts_config import XttsAudioConfig
    from TTS.tts.layers.xtts.trainer.gpt_trainer import GPTArgs, GPTTrainer, GPTTrainerConfig

    from utils.training.gpt.model import SpeedLevers

    class LeverGPTTrainer(SpeedLevers, GPTTrainer):
        """Coqui's GPTTrainer; the speed options change its step methods as they do the toolkit's."""

    root = Path(spec.workdir)
    dims = (
        {}
        if spec.size == "full"
        else dict(gpt_layers=2, gpt_n_model_channels=128, gpt_n_heads=4, decoder_input_dim=128)
    )
    # Values from Coqui's recipes/ljspeech/xtts_v2/train_gpt_xtts.py; the GPT size is XttsArgs' default.
    args = GPTArgs(
        max_conditioning_length=132300,
        min_conditioning_length=66150,
        max_wav_length=255995,
        max_text_length=200,
        mel_norm_file=str(root / "mel_stats.pth"),
        dvae_checkpoint=str(root / "dvae.pth"),
        tokenizer_file=str(root / "vocab.json"),
        gpt_num_audio_tokens=1026,
        gpt_start_audio_token=1024,
        gpt_stop_audio_token=1025,
        gpt_use_masking_gt_prompt_approach=True,
        gpt_use_perceiver_resampler=True,
        **dims,
    )
    config = GPTTrainerConfig(
        model_args=args,
        audio=XttsAudioConfig(sample_rate=22050, dvae_sample_rate=22050, output_sample_rate=24000),
        batch_size=batch_size,
        num_loader_workers=spec.workers,
        optimizer="AdamW",
        optimizer_wd_only_on_weights=True,
        optimizer_params={"betas": [0.9, 0.96], "eps": 1e-8, "weight_decay": 1e-2},
        lr=5e-06,
        training_seed=spec.seed,
        output_path=str(root / "run"),
    )
    torch.manual_seed(spec.seed)
    model = LeverGPTTrainer(config)
    return model, config


# --------------------------------------------------------------------------------------------
# The step and the timed loop
# --------------------------------------------------------------------------------------------


def batch_counts(batch: dict[str, Any], prompt_tokens: int = 32, multiple: int = 1) -> dict[str, float]:
    """Samples, audio samples and GPT tokens (real and padded) of one collated batch.

    ``multiple``: rows padded to a multiple of that many positions (the ``round_lengths`` lever).
    """
    tl = batch["text_lengths"].long()
    wl = batch["wav_lengths"].long()
    codes = torch.ceil(wl / clip_cache.CODE_STRIDE).long()
    b = len(tl)
    real = int((prompt_tokens + tl + 2 + codes + 5).sum())
    row = prompt_tokens + int(tl.max()) + 2 + int(codes.max()) + 5
    padded = b * (row + (-row) % max(1, multiple))
    return {"samples": b, "audio_samples": int(wl.sum()), "tokens": real, "padded_tokens": padded}


def move_to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Trainer 0.4's ``to_cuda`` loop (tensors only, contiguous, non_blocking)."""
    for k, v in batch.items():
        if torch.is_tensor(v):
            batch[k] = v.contiguous().to(device, non_blocking=True)
    return batch


def trainer_step(
    model: Any,
    config: Any,
    optimizer: Any,
    batch: dict[str, Any],
    device: torch.device,
    *,
    loss_scale: float = 1.0,
    step_optimizer: bool = True,
) -> float:
    """One step as Trainer 0.4 runs it for a single-optimizer model (no grad clip: recipe's 0)."""
    batch = model.format_batch(batch)
    batch = move_to_device(batch, device)
    batch = model.format_batch_on_device(batch)
    dtype = torch.bfloat16 if config.precision == "bf16" else torch.float16
    with torch.autocast(device_type=device.type, dtype=dtype, enabled=bool(config.mixed_precision)):
        _, loss_dict = model.train_step(batch, None)
    (loss_dict["loss"] * loss_scale).backward()
    if step_optimizer:
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return float(loss_dict["loss"].item())  # Trainer's detach_loss_dict reads it back every step


def set_train_mode(model: Any) -> None:
    """GPTTrainer.on_train_epoch_start: everything in eval, the GPT in train."""
    model.eval()
    model.xtts.gpt.train()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed_loop(
    step: Callable[[dict[str, Any]], float],
    loader: Any,
    spec: BenchSpec,
    device: torch.device,
    n_params: int,
    peak_tflops: float | None,
    *,
    steps: int | None = None,
) -> dict[str, Any]:
    """Warm up, then time ``steps`` steps; loader wait is the time blocked in ``next(loader)``."""
    steps = steps or spec.steps
    it = iter(loader)

    def next_batch() -> Any:
        nonlocal it
        try:
            return next(it)
        except StopIteration:
            it = iter(loader)
            return next(it)

    totals = {"samples": 0, "audio_samples": 0, "tokens": 0, "padded_tokens": 0}
    wait = 0.0
    losses = []
    t_first = time.perf_counter()
    for i in range(spec.warmup + steps):
        if i == spec.warmup:
            _sync(device)
            warm_s = time.perf_counter() - t_first
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
        tw = time.perf_counter()
        batch = next_batch()
        if i >= spec.warmup:
            wait += time.perf_counter() - tw
            for k, v in batch_counts(batch).items():
                totals[k] += v
        losses.append(step(batch))
    _sync(device)
    wall = time.perf_counter() - t0
    flops = 6 * n_params * totals["tokens"]
    flops_pad = 6 * n_params * totals["padded_tokens"]
    out = {
        "steps": steps,
        "warmup_steps": spec.warmup,
        "warmup_s": round(warm_s, 3),
        "wall_s": round(wall, 3),
        "step_ms": round(1000 * wall / steps, 1),
        "samples_per_s": round(totals["samples"] / wall, 2),
        "audio_s_per_s": round(totals["audio_samples"] / SAMPLE_RATE / wall, 1),
        "tokens_per_s": round(totals["tokens"] / wall, 0),
        "padding_share": round(1 - totals["tokens"] / max(totals["padded_tokens"], 1), 3),
        "tflops_real_tokens": round(flops / wall / 1e12, 2),
        "tflops_padded_tokens": round(flops_pad / wall / 1e12, 2),
        "loader_wait_share": round(wait / wall, 4),
        "loss_first": round(losses[0], 4),
        "loss_last": round(losses[-1], 4),
    }
    if peak_tflops:
        out["peak_share_real"] = round(out["tflops_real_tokens"] / peak_tflops, 4)
        out["peak_share_padded"] = round(out["tflops_padded_tokens"] / peak_tflops, 4)
    if device.type == "cuda":
        out["peak_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        out["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved() / 2**30, 2)
    if not all(math.isfinite(x) for x in losses):
        out["nonfinite_loss"] = True
    return out


def measure_matmul_peak(device: torch.device) -> float | None:
    """bf16 8192^3 matmul rate on this card (TFLOP/s), the denominator of 'share of peak'."""
    if device.type != "cuda":
        return None
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(20):
        a @ b
    torch.cuda.synchronize()
    rate = 20 * 2 * 8192**3 / (time.perf_counter() - t) / 1e12
    del a, b
    torch.cuda.empty_cache()
    return round(rate, 1)


# --------------------------------------------------------------------------------------------
# Parity
# --------------------------------------------------------------------------------------------


def _grads(model: Any) -> torch.Tensor:
    return torch.cat(
        [
            p.grad.detach().float().flatten().cpu() if p.grad is not None else torch.zeros(p.numel())
            for p in model.xtts.gpt.parameters()
        ]
    )


def _clone_batch(batch: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.clone() if torch.is_tensor(v) else copy.deepcopy(v)) for k, v in batch.items()}


def stock_parity_batches(
    model: Any, config: Any, samples: list[dict[str, Any]], spec: BenchSpec, device: torch.device
) -> list[dict[str, Any]]:
    """Fixed raw batches from Coqui's own loader with the codes Coqui computes, for both paths."""
    from TTS.tts.layers.xtts.trainer.dataset import XTTSDataset

    random.seed(spec.seed + 7)
    ds = XTTSDataset(config, list(samples), model.xtts.tokenizer, SAMPLE_RATE, is_eval=False)
    out = []
    for _ in range(spec.parity_batches):
        raw = ds.collate_fn([ds[0] for _ in range(spec.parity_batch_size)])
        fmt = model.format_batch_on_device(move_to_device(_clone_batch(raw), device))
        raw["audio_codes"] = fmt["audio_codes"].cpu()
        out.append(raw)
    return out


def losses_and_grads(
    model: Any, config: Any, batches: list[dict[str, Any]], device: torch.device, *, stock: bool
) -> tuple[list[dict[str, float]], torch.Tensor]:
    """Losses per batch and the summed gradient, dropout off (model.eval), no optimizer step.

    ``stock``: Coqui's formatting (minus the DVAE call: the batch carries the codes Coqui computed);
    else the model's ``format_batch`` / ``format_batch_on_device`` as its speed levers set them.
    """
    model.eval()
    model.zero_grad(set_to_none=True)
    out = []
    dtype = torch.bfloat16 if config.precision == "bf16" else torch.float16
    for raw in batches:
        b = _clone_batch(raw)
        b = model.format_batch(b)
        b = move_to_device(b, device)
        if stock:
            b.pop("wav")  # Coqui's path would recompute the same codes; reuse them
            b = _stock_format_with_codes(model, b)
        else:
            b = model.format_batch_on_device(b)
        with torch.autocast(device_type=device.type, dtype=dtype, enabled=bool(config.mixed_precision)):
            _, ld = model.train_step(b, None)
        ld["loss"].backward()
        out.append({k: float(v.detach().float()) for k, v in ld.items()})
    return out, _grads(model)


def _stock_format_with_codes(model: Any, batch: dict[str, Any]) -> dict[str, Any]:
    """Stock formatting when codes are given (same as Coqui's, minus the DVAE call)."""
    with torch.no_grad():
        batch["text_inputs"] = batch.pop("padded_text")
        cond = batch.pop("conditioning")
        b, n, c, t = cond.size()
        mel = model.torch_mel_spectrogram_style_encoder(cond.view(b * n, c, t))
        batch["cond_mels"] = mel.view(b, n, mel.size(1), mel.size(2))
    return batch


def compare(
    stock: list[dict[str, float]],
    ours: list[dict[str, float]],
    g_stock: torch.Tensor,
    g_ours: torch.Tensor,
    rel_tol: float,
    cos_tol: float,
) -> dict[str, Any]:
    rel = [abs(o["loss"] - s["loss"]) / max(abs(s["loss"]), 1e-12) for s, o in zip(stock, ours)]
    cos = float(torch.nn.functional.cosine_similarity(g_stock.double(), g_ours.double(), dim=0))
    norm_ratio = float(g_ours.norm() / max(float(g_stock.norm()), 1e-30))
    return {
        "stock_losses": [round(s["loss"], 6) for s in stock],
        "ours_losses": [round(o["loss"], 6) for o in ours],
        "max_rel_loss_diff": max(rel),
        "grad_cosine": cos,
        "grad_norm_ratio": norm_ratio,
        "rel_tol": rel_tol,
        "cos_tol": cos_tol,
        "passed": bool(max(rel) <= rel_tol and cos >= cos_tol),
    }


# --------------------------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------------------------


def _env(device: torch.device) -> dict[str, Any]:
    import transformers

    env = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["gpu_memory_gib"] = round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1)
        env["cudnn"] = torch.backends.cudnn.version()
        env["cuda"] = torch.version.cuda
    return env


def _patch_dataset_decoder() -> None:
    """Bench only: Coqui's XTTSDataset decodes through torchaudio.load (torchcodec + FFmpeg), which
    the GPU machine lacks; give its module soundfile decoding with the same result."""
    import TTS.tts.layers.xtts.trainer.dataset as xds

    xds.load_audio = clip_cache.load_audio_soundfile


def _free(device: torch.device) -> None:
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run_stock(
    model: Any,
    config: Any,
    samples: list[dict[str, Any]],
    spec: BenchSpec,
    device: torch.device,
    n_params: int,
    peak: float | None,
) -> list[dict[str, Any]]:
    """Coqui's step with its own loader, each variant with a fresh optimizer."""
    results = []
    for precision, bsz in spec.stock:
        config.mixed_precision = precision == "bf16"
        config.precision = "bf16" if precision == "bf16" else "fp16"
        config.batch_size = bsz
        config.num_loader_workers = spec.workers
        loader = model.get_data_loader(config, samples=list(samples))
        opt = model.get_optimizer()
        set_train_mode(model)
        logger.info("stock %s micro-batch %d", precision, bsz)
        # Small micro-batches get more steps (same samples as about `steps` batches of 32, at most 80).
        steps = min(80, spec.steps * max(1, 32 // bsz))
        step = functools.partial(trainer_step, model, config, opt, device=device)
        res = timed_loop(step, loader, spec, device, n_params, peak, steps=steps)
        res.update({"name": f"stock {precision} b{bsz}", "precision": precision, "micro_batch": bsz})
        logger.info("%s", json.dumps(res))
        results.append(res)
        del opt, loader
        _free(device)
    return results


def run_ours_variant(
    name: str,
    model: Any,
    config: Any,
    loader: Any,
    bsz: int,
    spec: BenchSpec,
    device: torch.device,
    n_params: int,
    peak: float | None,
) -> dict[str, Any]:
    opt = model.get_optimizer()
    set_train_mode(model)
    logger.info("ours: %s", name)
    try:
        step = functools.partial(trainer_step, model, config, opt, device=device)
        res = timed_loop(step, loader, spec, device, n_params, peak)
    except RuntimeError as exc:
        if not is_oom(exc):
            raise
        res = {"error": "CUDA out of memory"}
    res.update({"name": name, "precision": "bf16" if config.mixed_precision else "fp32", "micro_batch": bsz})
    logger.info("%s", json.dumps(res))
    del opt
    _free(device)
    return res


def run_main(spec: BenchSpec) -> dict[str, Any]:
    """Stock variants, the lever ladder, ours at larger micro-batches and loss parity."""
    device = torch.device(spec.device if (spec.device != "cuda" or torch.cuda.is_available()) else "cpu")
    t_start = time.perf_counter()
    _patch_dataset_decoder()
    samples, workload = build_workload(spec)
    model, config = build_model(spec, spec.stock[0][1] if spec.stock else 3)
    model.to(device)
    n_params = sum(p.numel() for p in model.xtts.gpt.parameters())
    peak = measure_matmul_peak(device)
    tok = model.xtts.tokenizer
    n_tok = [len(tok.encode(s["text"], "en")) for s in samples[:200]]
    n_chr = [len(s["text"]) for s in samples[:200]]
    workload["text_tokens_per_char"] = round(sum(n_tok) / sum(n_chr), 3)
    workload["vocab_size"] = tok.get_number_tokens()
    result: dict[str, Any] = {
        "env": _env(device),
        "spec": asdict(spec),
        "workload": workload,
        "gpt_params": n_params,
        "gpt_params_m": round(n_params / 1e6, 1),
        "matmul_peak_tflops": peak,
        "flops_note": "TFLOP/s = 6 * GPT params * tokens / s; 'real' counts non-padded "
        "tokens (32 prompt + text+2 + codes+5 per clip), 'padded' the padded batch",
    }
    result["stock"] = run_stock(model, config, samples, spec, device, n_params, peak)

    # Parity batches from the stock path (stock modules, fp32).
    config.mixed_precision = False
    parity_raw = stock_parity_batches(model, config, samples, spec, device)

    # One-off preparation: decode once, DVAE codes once (DVAE still on the device).
    t = time.perf_counter()
    items, excluded = clip_cache.prepare_clip_cache(
        model, samples, Path(spec.workdir) / "cache", device=device, progress=spec.progress
    )
    prep_s = time.perf_counter() - t
    result["prepare"] = {
        "seconds": round(prep_s, 2),
        "clips": len(items),
        "excluded": len(excluded),
        "audio_h": round(sum(i.num_samples for i in items) / SAMPLE_RATE / 3600, 3),
    }
    result["code_agreement"] = _code_agreement(parity_raw, items)

    # The ladder: stock bf16 micro-batch `ladder_batch`, one lever added per rung.
    ladder: list[dict[str, Any]] = []
    if device.type == "cuda":
        config.mixed_precision, config.precision = True, "bf16"
    on = {}
    rungs = [
        ("no_cudnn_attention", {"cudnn_attention": False}),
        ("fast_gelu", {"fast_gelu": True}),
        ("sdpa_conditioning", {"sdpa_conditioning": True}),
        ("fast_heads", {"fast_heads": True}),
        ("host_lengths", {"host_lengths": True}),
        ("no_kv_cache", {"no_kv_cache": True}),
        ("packed_attention", {"packed_attention": True}),
        ("fused_adamw", {"fused_adamw": True, "tf32": True}),
        ("cudnn_attention (packed rows)", {"cudnn_attention": True}),
    ]
    base_off = {
        f: False
        for f in (
            "bf16",
            "tf32",
            "fused_adamw",
            "fast_gelu",
            "sdpa_conditioning",
            "fast_heads",
            "no_kv_cache",
            "packed_attention",
            "host_lengths",
            "cache_dvae_codes",
            "bucket_lengths",
            "pin_memory",
            "compile",
            "grad_checkpointing",
            "optimizer_8bit",
            "offload_frozen",
            "expandable_segments",
            "auto_batch",
        )
    }
    config.batch_size = spec.ladder_batch
    if spec.ladder and device.type == "cuda":
        for name, extra in rungs:
            on.update(extra)
            apply_speed_options(
                model, config, SpeedOptions(**{**base_off, **on, "bf16": True, "num_workers": spec.workers}), device
            )
            loader = model.get_data_loader(config, samples=list(samples))
            ladder.append(
                run_ours_variant(
                    f"+{name} (stock loader) b{spec.ladder_batch}",
                    model,
                    config,
                    loader,
                    spec.ladder_batch,
                    spec,
                    device,
                    n_params,
                    peak,
                )
            )
            del loader
    # Full default options: cached codes, bucketing, pinned memory, frozen modules off the GPU.
    opts = SpeedOptions(num_workers=spec.workers, compile=False)  # compile has its own rung below
    result["levers"] = apply_speed_options(model, config, opts, device)
    result["speed_options"] = opts.to_dict()
    dataset = clip_cache.CachedClipDataset(items, config)
    workers = spec.workers if device.type == "cuda" else 0
    for bsz in ([spec.ladder_batch] if spec.ladder else []) + list(spec.ours_batches):
        loader = clip_cache.build_fast_loader(
            dataset,
            bsz,
            bucket_lengths=opts.bucket_lengths,
            num_workers=workers,
            pin_memory=opts.pin_memory,
            seed=spec.seed,
        )
        ladder.append(
            run_ours_variant(f"ours (all defaults) b{bsz}", model, config, loader, bsz, spec, device, n_params, peak)
        )
        del loader
    if spec.profile and device.type == "cuda":
        ok = [r for r in ladder if "samples_per_s" in r and r["name"].startswith("ours")]
        bsz = max(ok, key=lambda r: r["samples_per_s"])["micro_batch"] if ok else spec.ladder_batch
        loader = clip_cache.build_fast_loader(dataset, bsz, num_workers=workers, seed=spec.seed)
        result["profile"] = profile_steps(model, config, loader, device, bsz)
        del loader
    if spec.compile_rung and device.type == "cuda":
        ok = [r for r in ladder if "samples_per_s" in r and r["name"].startswith("ours")]
        bsz = max(ok, key=lambda r: r["samples_per_s"])["micro_batch"] if ok else spec.ladder_batch
        loader = clip_cache.build_fast_loader(dataset, bsz, num_workers=workers, seed=spec.seed)
        try:
            apply_speed_options(model, config, SpeedOptions(**{**opts.to_dict(), "compile": True}), device)
            ladder.append(
                run_ours_variant(
                    f"ours + compile b{bsz}",
                    model,
                    config,
                    loader,
                    bsz,
                    replace(spec, warmup=max(spec.warmup, 8)),
                    device,
                    n_params,
                    peak,
                )
            )
        except Exception as exc:  # optional rung: record why it failed, keep the run
            logger.exception("compile rung failed")
            ladder.append({"name": f"ours + compile b{bsz}", "error": f"{type(exc).__name__}: {exc}"[:500]})
    result["ours"] = ladder

    # Parity: same weights (the model kept training through the runs above; both checks use the
    # weights as they are now), same batches, same codes; ours in bf16 if on CUDA.
    stock_losses, g_stock = stock_reference(model, config, parity_raw, device)
    ours_losses, g_ours = losses_and_grads(model, config, parity_raw, device, stock=False)
    bf16 = bool(config.mixed_precision)
    result["parity"] = compare(
        stock_losses, ours_losses, g_stock, g_ours, rel_tol=2e-2 if bf16 else 1e-4, cos_tol=0.98 if bf16 else 0.9999
    )
    result["parity"]["ours_precision"] = "bf16" if bf16 else "fp32"
    result["parity"]["stock_precision"] = "fp32"
    best = max((r for r in ladder if "samples_per_s" in r), key=lambda r: r["samples_per_s"], default=None)
    ref = next((r for r in result["stock"] if r["precision"] == "fp32"), None)
    if best and ref:
        result["best"] = {
            "name": best["name"],
            "samples_per_s": best["samples_per_s"],
            "speedup_vs_stock_fp32": round(best["samples_per_s"] / ref["samples_per_s"], 2),
        }
    result["total_s"] = round(time.perf_counter() - t_start, 1)
    return result


def profile_steps(model: Any, config: Any, loader: Any, device: torch.device, bsz: int, n: int = 3) -> dict[str, Any]:
    """torch.profiler over ``n`` steps of ours: top kernels by GPU time, top ops by CPU time."""
    from torch.profiler import ProfilerActivity, profile

    opt = model.get_optimizer()
    set_train_mode(model)
    it = iter(loader)
    batches = [next(it) for _ in range(n + 2)]
    for b in batches[:2]:
        trainer_step(model, config, opt, b, device)
    torch.cuda.synchronize()
    t = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for b in batches[2:]:
            trainer_step(model, config, opt, b, device)
        torch.cuda.synchronize()
    wall = time.perf_counter() - t
    ka = prof.key_averages()
    gpu_us = sum(e.self_device_time_total for e in ka)
    out = {
        "micro_batch": bsz,
        "steps": n,
        "wall_ms_per_step": round(1000 * wall / n, 1),
        "gpu_busy_ms_per_step": round(gpu_us / 1000 / n, 1),
        "cuda_table": ka.table(sort_by="self_cuda_time_total", row_limit=35, max_name_column_width=70),
        "cpu_table": ka.table(sort_by="cpu_time_total", row_limit=20, max_name_column_width=70),
    }
    logger.info(
        "profile b%d: wall %.1f ms/step, GPU busy %.1f ms/step (profiler overhead included)",
        bsz,
        out["wall_ms_per_step"],
        out["gpu_busy_ms_per_step"],
    )
    del opt
    _free(device)
    return out


def stock_reference(
    model: Any, config: Any, raw: list[dict[str, Any]], device: torch.device
) -> tuple[list[dict[str, float]], torch.Tensor]:
    """Stock losses and gradients on ``model``'s current GPT weights.

    A fresh stock GPTTrainer (fp32, Coqui's GELU and attention, stock formatting) gets a copy of
    the GPT weights, so both sides of the parity check use identical weights and batches.
    """
    state = {k: v.detach().cpu() for k, v in model.xtts.gpt.state_dict().items()}
    spec_like = BenchSpec(
        workdir=str(Path(config.model_args.tokenizer_file).parent),
        size="full" if model.xtts.gpt.layers == 30 else "tiny",
    )
    ref, ref_cfg = build_model(spec_like, 4)
    ref.xtts.gpt.load_state_dict(state)
    ref.to(device)
    from utils.training.gpt.model import offload_frozen_modules

    offload_frozen_modules(ref, dvae=True)
    ref_cfg.mixed_precision = False
    out = losses_and_grads(ref, ref_cfg, raw, device, stock=True)
    del ref
    _free(device)
    return out


def _code_agreement(raw: list[dict[str, Any]], items: list[clip_cache.CachedClip]) -> dict[str, Any]:
    """Share of cached codes equal to the codes Coqui computed inside a padded batch."""
    by_src = {it.source: it for it in items}
    same = total = 0
    last_same = last_total = 0
    for batch in raw:
        for i, fn in enumerate(batch["filenames"]):
            it = by_src.get(str(fn))
            if it is None:
                continue
            n = it.codes.shape[0]
            a = batch["audio_codes"][i, :n].long()
            c = it.codes[: a.shape[0]].long()
            same += int((a == c).sum())
            total += int(a.shape[0])
            last_same += int(a[-1] == c[-1])
            last_total += 1
    return {
        "codes_compared": total,
        "equal_share": round(same / max(total, 1), 4),
        "last_code_equal_share": round(last_same / max(last_total, 1), 4),
    }


def run_lowvram(spec: BenchSpec) -> dict[str, Any]:
    """Full fine-tuning under a hard memory cap: low-VRAM preset, auto micro-batch, accumulation."""
    device = torch.device(spec.device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return {"skipped": "needs CUDA"}
    _patch_dataset_decoder()
    samples, workload = build_workload(spec)
    model, config = build_model(spec, 4)
    model.to(device)
    items, _ = clip_cache.prepare_clip_cache(
        model, samples, Path(spec.workdir) / "cache", device=device, progress=spec.progress
    )
    n_params = sum(p.numel() for p in model.xtts.gpt.parameters())
    opts = SpeedOptions.low_vram(num_workers=spec.workers)
    levers = apply_speed_options(model, config, opts, device)
    _free(device)
    budget = int(spec.lowvram_budget_gib * 2**30)
    total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, budget / total), torch.cuda.current_device())
    torch.cuda.reset_peak_memory_stats()
    opt = model.get_optimizer()
    set_train_mode(model)
    dataset = clip_cache.CachedClipDataset(items, config)
    longest = sorted(range(len(items)), key=lambda i: -items[i].num_samples)

    def probe(b: int) -> None:
        probe_training_step(model, config, opt, clip_cache.collate_cached([dataset[i] for i in longest[:b]]), device)

    micro = spec.lowvram_micro or auto_micro_batch(probe, budget, max_batch=64)
    probe_peak = torch.cuda.max_memory_reserved()
    opt.state.clear()  # the probes' moments are not training's
    opt.zero_grad(set_to_none=True)
    backoff = OomBackoff(micro_batch=micro, accumulation=spec.lowvram_accum)
    loader = clip_cache.build_fast_loader(dataset, micro, num_workers=spec.workers, seed=spec.seed)
    counter = {"n": 0}

    def step(batch: dict[str, Any]) -> float:
        counter["n"] += 1
        last = counter["n"] % spec.lowvram_accum == 0
        losses = run_with_oom_backoff(
            lambda part, scale: trainer_step(
                model, config, opt, part, device, loss_scale=scale / spec.lowvram_accum, step_optimizer=False
            ),
            batch,
            backoff,
            lambda: opt.zero_grad(set_to_none=True),
        )
        if last:
            opt.step()
            opt.zero_grad(set_to_none=True)
        return float(np.mean(losses))

    res = timed_loop(step, loader, spec, device, n_params, None, steps=max(spec.steps, 2 * spec.lowvram_accum))
    res.update(
        {
            "name": "low-VRAM preset",
            "micro_batch": micro,
            "grad_accumulation": spec.lowvram_accum,
            "effective_batch": micro * spec.lowvram_accum,
            "budget_gib": spec.lowvram_budget_gib,
            "probe_peak_reserved_gib": round(probe_peak / 2**30, 2),
            "oom_splits": backoff.parts,
            "levers": levers,
            "speed_options": opts.to_dict(),
            "workload": workload,
            "env": _env(device),
        }
    )
    return res


# --------------------------------------------------------------------------------------------
# The benchmark's own OOM fallback (the trainer has its own: utils.training.batch_size.back_off_after_oom)
# --------------------------------------------------------------------------------------------


def split_batch(batch: dict[str, Any], parts: int) -> list[dict[str, Any]]:
    """Split a collated batch (before ``format_batch``) into ``parts`` smaller ones along dim 0."""
    n = len(batch["text_lengths"])
    size = math.ceil(n / parts)
    out = []
    for s in range(0, n, size):
        sub: dict[str, Any] = {}
        for k, v in batch.items():
            if torch.is_tensor(v) and v.dim() > 0 and v.shape[0] == n:
                sub[k] = v[s : s + size]
            elif isinstance(v, list) and len(v) == n:
                sub[k] = v[s : s + size]
            else:
                sub[k] = v
        # trim padding to the part's own longest item
        tl = int(sub["text_lengths"].max())
        if "padded_text" in sub:
            sub["padded_text"] = sub["padded_text"][:, :tl]
        out.append(sub)
    return out


@dataclass
class OomBackoff:
    """State of the OOM fallback: how many parts each loader batch is split into."""

    micro_batch: int
    accumulation: int = 1
    parts: int = 1

    def halve(self) -> None:
        """Halve the micro-batch, double accumulation (effective batch unchanged), log it."""
        if self.micro_batch // (self.parts * 2) < 1:
            raise RuntimeError(
                "CUDA out of memory even at micro-batch 1: use the low-VRAM preset or a shorter max clip"
            )
        self.parts *= 2
        logger.warning(
            "CUDA out of memory: micro-batch %d -> %d, gradient accumulation %d -> %d (effective batch %d unchanged)",
            math.ceil(self.micro_batch / (self.parts // 2)),
            math.ceil(self.micro_batch / self.parts),
            self.accumulation * self.parts // 2,
            self.accumulation * self.parts,
            self.micro_batch * self.accumulation,
        )


def run_with_oom_backoff(
    step: Callable[[dict[str, Any], float], Any],
    batch: dict[str, Any],
    backoff: OomBackoff,
    zero_grad: Callable[[], None],
) -> list[Any]:
    """Run ``step(part, loss_scale)`` over the batch split into ``backoff.parts``; on OOM split more.

    ``step`` must run forward and backward with its loss multiplied by ``loss_scale`` and must NOT
    step the optimizer (the caller does, once, after this returns). On OOM the gradients of this
    batch are cleared with ``zero_grad`` (they may be partial) and the whole batch is redone in
    twice as many parts. Gradients from earlier batches of an accumulation window are lost in
    that case (logged); pass ``zero_grad`` that clears only what this batch wrote if that matters.
    """
    while True:
        # shallow copies: formatting pops keys, and a retry needs the batch as it came
        parts = split_batch(batch, backoff.parts) if backoff.parts > 1 else [dict(batch)]
        try:
            n = len(batch["text_lengths"])
            return [step(p, len(p["text_lengths"]) / n) for p in parts]
        except RuntimeError as exc:
            if not is_oom(exc):
                raise
            zero_grad()
            torch.cuda.empty_cache()
            backoff.halve()
