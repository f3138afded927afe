"""The micro-batch of a training run: sized from GPU memory at the start, halved on CUDA OOM.

The hours table gives an effective batch (micro-batch x gradient accumulation; 3 x 84 = 252 for
Coqui's recipe). The micro-batch only decides how much of it the GPU does per forward pass, so the
toolkit picks it from memory and keeps the effective batch, and with it the table's LR:

- :func:`autosize_micro_batch` (before ``fit``, DVAE-code cache on): probes full training
  steps on the longest clips of the training set (:func:`utils.training.speed.auto_micro_batch`),
  then :func:`plan_micro_batch` splits the effective batch into micro-batch x accumulation.
  Data parallel: every rank probes its own GPU and the smallest fit is every rank's.
- :func:`halve_micro_batch` (``ToolkitTrainer`` on a CUDA OOM during a step): the next exact split
  with at most half the micro-batch (126 x 2 -> 63 x 4), one warning line; the trainer redoes the
  interrupted accumulation window with the smaller batches.

Both rewrite the run's config (``config.json`` in the run folder), so ``--continue`` resumes with
the sizes in effect.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

_cuda = torch.cuda  # a seam for the CPU tests, which stand in a fake GPU memory report

# Below this share of the largest micro-batch that fits, the exact split wastes most of the GPU's
# memory: the log line then names an effective batch that splits better.
POOR_SPLIT_SHARE = 0.5


@dataclass(frozen=True)
class MicroBatchPlan:
    """How an effective batch is split: ``micro_batch`` clips per pass, ``accumulation`` passes."""

    micro_batch: int
    accumulation: int
    requested_effective: int

    @property
    def effective(self) -> int:
        return self.micro_batch * self.accumulation

    def as_dict(self) -> dict[str, int]:
        return {
            "micro_batch": self.micro_batch,
            "grad_accum": self.accumulation,
            "effective_batch": self.effective,
            "requested_effective_batch": self.requested_effective,
        }


def largest_divisor(n: int, at_most: int) -> int:
    """The largest divisor of ``n`` that is at most ``at_most`` (1 at least)."""
    for m in range(min(n, max(1, at_most)), 0, -1):
        if n % m == 0:
            return m
    return 1


def plan_micro_batch(fits: int, effective: int) -> MicroBatchPlan:
    """Split ``effective`` into micro-batch x accumulation with the micro-batch at most ``fits``.

    The split is always exact: the micro-batch is the largest divisor of ``effective`` that fits
    (252 with 221 fitting: 126 x 2, not 221 x 1), so every optimizer step sees the table's number
    of samples and the table's LR stays valid. An effective batch with no divisor near ``fits``
    (a prime, say) still splits exactly, with a warning that names a better effective batch.
    """
    if fits < 1 or effective < 1:
        raise ValueError(f"micro-batch and effective batch must be >= 1 (got {fits}, {effective})")
    top = min(fits, effective)
    micro = largest_divisor(effective, top)
    if micro < POOR_SPLIT_SHARE * top:
        accum = math.ceil(effective / top)
        better = top * accum
        logger.warning(
            "effective batch %d has no divisor between %d and %d: training at micro-batch %d x accumulation %d "
            "keeps it exact but uses %.0f%% of what fits; an effective batch of %d (--batch-size %d --grad-accum %d) "
            "would use it all (scale --lr with it)",
            effective,
            math.ceil(POOR_SPLIT_SHARE * top),
            top,
            micro,
            effective // micro,
            100 * micro / top,
            better,
            top,
            accum,
        )
    return MicroBatchPlan(micro, effective // micro, effective)


def autosize_micro_batch(trainer: Any, *, max_batch: int = 256, margin: float = 0.9) -> MicroBatchPlan | None:
    """Pick the run's micro-batch from GPU memory and apply it to ``trainer`` (see module doc).

    Returns None (sizes unchanged, reason logged) where it cannot run: no CUDA, or the model has
    no DVAE-code cache to build worst-case batches from.
    """
    from utils.training import distributed, speed
    from utils.training.compat import unwrap_model
    from utils.training.fast_data import collate_cached

    model = unwrap_model(trainer)
    config = trainer.config
    requested = int(config.batch_size) * int(trainer.grad_accum_steps)
    if not _cuda.is_available():
        logger.info("automatic micro-batch: needs a CUDA GPU; keeping micro-batch %d", config.batch_size)
        return None
    if not hasattr(model, "clip_dataset") or not getattr(model.speed, "cache_dvae_codes", False):
        logger.info(
            "automatic micro-batch: needs the DVAE-code cache (on by default); keeping micro-batch %d",
            config.batch_size,
        )
        return None
    dataset = model.clip_dataset(config, trainer.train_samples, is_eval=False)
    longest = sorted(range(len(dataset)), key=lambda i: -dataset.items[i].num_samples)
    device = next(model.xtts.gpt.parameters()).device
    optimizer = trainer.optimizer[0]
    model.on_train_epoch_start(trainer)  # GPTTrainer: GPT in train mode, the frozen parts in eval

    def probe(b: int) -> None:
        batch = collate_cached([dataset[longest[i % len(longest)]] for i in range(b)])
        speed.probe_training_step(model, config, optimizer, batch, device)

    free, total = _cuda.mem_get_info(device)
    budget = free + _cuda.memory_reserved(device)  # what this process can hold ...
    fraction = getattr(_cuda, "get_per_process_memory_fraction", None)
    if fraction is not None:
        budget = min(budget, int(fraction(device) * total))  # ... under torch.cuda.set_per_process_memory_fraction
    logger.info(
        "automatic micro-batch: probing training steps on the %d longest clips (budget %.1f GiB)",
        min(len(longest), max_batch),
        budget / 2**30,
    )
    top = max(1, min(max_batch, requested))
    memo_path = Path(config.output_path) / ".clip_cache" / "micro_batch_probes.json"
    key = _probe_key(model, config, dataset, longest[:top], device, budget, top, margin)
    fits = _read_probe_memo(memo_path, key)
    if fits is not None:
        logger.info(
            "automatic micro-batch: %d clips fit (measured by an earlier run on this GPU, data and model: %s)",
            fits,
            memo_path,
        )
    else:
        divisors = [d for d in range(1, top + 1) if requested % d == 0]  # the sizes an exact plan can use
        with distributed.local_optimizer_steps():  # probes step at LR 0 on each rank alone
            fits = speed.auto_micro_batch(probe, budget, max_batch=top, margin=margin, candidates=divisors)
        _write_probe_memo(memo_path, key, fits)
        for opt in trainer.optimizer:
            opt.state.clear()  # the probes' moments are not training's
            opt.zero_grad(set_to_none=True)
        _cuda.empty_cache()
        _cuda.reset_peak_memory_stats()
    # Data parallel: one micro-batch for every rank (the collectives of each step stay in step),
    # the largest the smallest GPU holds (a divisor of the same effective batch on every rank).
    local_fits, fits = fits, distributed.all_reduce_min(fits)
    if fits != local_fits:
        logger.info("automatic micro-batch: %d clips fit here, %d on every rank", local_fits, fits)
    plan = plan_micro_batch(fits, requested)
    config.toolkit["micro_batch_plan"] = {**plan.as_dict(), "fits": fits}
    _apply(trainer, plan.micro_batch, plan.accumulation, source="auto (GPU memory)")
    logger.info(
        "automatic micro-batch: %d clips fit; micro-batch %d x accumulation %d = effective batch %d (asked %d)",
        fits,
        plan.micro_batch,
        plan.accumulation,
        plan.effective,
        requested,
    )
    return plan


# speed switches that do not change a training step's memory: a run that changes only these reuses the probe
_NOT_MEMORY = frozenset({"num_workers", "pin_memory", "bucket_lengths", "auto_batch", "oom_backoff"})


def _probe_key(
    model: Any, config: Any, dataset: Any, longest: list[int], device: Any, budget: int, top: int, margin: float
) -> str:
    """What the largest fitting micro-batch depends on: the GPU, its budget, the model, the levers, the "
    "longest clips."""
    import hashlib
    import json

    props = _cuda.get_device_properties(device)
    gpt = model.xtts.gpt
    facts = {
        # the budget in 4 GiB steps: free memory moves by a few MB between runs
        "gpu": [props.name, int(props.total_memory)],
        "budget_4gib": int(budget // (4 * 2**30)),
        "top": top,
        "margin": margin,
        "torch": torch.__version__,
        "gpt": [sum(p.numel() for p in gpt.parameters()), int(gpt.layers), int(gpt.model_dim)],
        "speed": _memory_levers(getattr(model, "speed", None)),
        "precision": [bool(config.mixed_precision), str(config.precision)],
        "clips": [[int(dataset.items[i].num_samples), int(dataset.items[i].tokens.numel())] for i in longest],
    }
    return hashlib.sha1(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()


def _memory_levers(opts: Any) -> dict[str, Any] | None:
    """The speed switches that change a step's memory (see ``_NOT_MEMORY``)."""
    if not hasattr(opts, "to_dict"):
        return None
    return {k: v for k, v in opts.to_dict().items() if k not in _NOT_MEMORY}


def _read_probe_memo(path: Path, key: str) -> int | None:
    import json

    try:
        value = json.loads(path.read_text(encoding="utf-8")).get(key)
    except (OSError, ValueError, AttributeError):
        return None
    return int(value) if isinstance(value, int) and value >= 1 else None


def _write_probe_memo(path: Path, key: str, fits: int) -> None:
    """Keep the probe's result for the next run on the same GPU, data and model (best effort)."""
    import json

    from utils.fs import write_json_atomic

    try:
        memo = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        if not isinstance(memo, dict):
            memo = {}
        memo[key] = int(fits)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, memo)
    except (OSError, ValueError) as exc:
        logger.info("automatic micro-batch: could not keep the probe result in %s (%s)", path, exc)


def halve_micro_batch(trainer: Any) -> tuple[int, int]:
    """After a CUDA OOM: the largest exact split with at most half the micro-batch; returns the new pair.

    The effective batch is kept exactly (micro-batch x accumulation unchanged): 126 x 2 -> 63 x 4,
    63 x 4 -> 28 x 9 for 252.

    Raises:
        ConfigError: the micro-batch is already 1 (the message names the low-VRAM preset).
    """
    from utils.errors import ConfigError

    old_b, old_a = int(trainer.config.batch_size), int(trainer.grad_accum_steps)
    if old_b <= 1:
        raise ConfigError(
            "CUDA out of memory at micro-batch 1: use --speed low-vram (gradient checkpointing, 8-bit AdamW), "
            "or drop the longest clips (scripts/validate_dataset.py lists clip lengths)"
        )
    effective = old_b * old_a
    new_b = largest_divisor(effective, old_b // 2)
    new_a = effective // new_b
    _apply(trainer, new_b, new_a, source="halved after CUDA out of memory")
    logger.warning(
        "CUDA out of memory at micro-batch %d: micro-batch %d -> %d, gradient accumulation %d -> %d "
        "(effective batch %d -> %d); redoing the interrupted accumulation window, the rest of this epoch re-batched",
        old_b,
        old_b,
        new_b,
        old_a,
        new_a,
        effective,
        new_b * new_a,
    )
    return new_b, new_a


def _apply(trainer: Any, micro: int, accumulation: int, *, source: str) -> None:
    """Set the sizes on the trainer and its config; rewrite the run folder's config.json."""
    from pathlib import Path

    from utils.training import distributed

    config = trainer.config
    config.batch_size = int(micro)
    config.eval_batch_size = int(micro)
    trainer.grad_accum_steps = int(accumulation)
    tk = config.toolkit
    # grad_accum in the config counts micro-batches over all ranks (distributed.plan_batch)
    world = distributed.world_size()
    tk["grad_accum"] = int(accumulation) * world
    hp = tk.setdefault("hparams", {})
    hp["batch_size"], hp["grad_accum"] = int(micro), int(accumulation) * world
    if world > 1:
        plan = distributed.plan_batch(int(micro), int(accumulation) * world, world)
        tk["distributed"] = {**(tk.get("distributed") or {}), **plan.as_dict()}
    sources = hp.setdefault("sources", {})
    sources["batch_size"] = sources["grad_accum"] = source
    trainer.train_loader = None  # rebuilt with the new batch size
    trainer.eval_loader = None
    if trainer.args.rank in (None, 0) and getattr(trainer, "output_path", None):
        config.save_json(str(Path(trainer.output_path) / "config.json"))
