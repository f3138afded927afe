"""Every batch-size decision of a run, in the order they are made: table -> plan -> probe -> OOM back-off.

1. The hours table (``utils/hparams.py``) gives a micro-batch and a gradient accumulation; their
   product, the effective batch (3 x 84 = 252 for Coqui's recipe), is what the table's LR is for.
2. Plan over the ranks (:func:`plan_batch`): ``grad_accum`` counts micro-batches per optimizer step
   over all GPUs, each rank accumulating its share (``--dry-run`` shows the plan;
   :func:`utils.training.distributed.build_trainer` applies it).
3. Probe (:func:`size_micro_batch` before ``fit``; speed option ``auto_batch``, DVAE-code cache
   on): the micro-batch only decides how much of the effective batch the GPU does per pass, so it
   is picked from memory and the effective batch (and with it the table's LR) stays. Full training
   steps on the longest clips (:func:`auto_micro_batch` over :func:`probe_training_step`) find the
   largest micro-batch that fits, :func:`plan_micro_batch` splits the effective batch exactly with
   it, and the result is kept for the next run on the same GPU, data and model. Data parallel:
   every rank probes its own GPU and the smallest fit is every rank's.
4. OOM back-off (speed option ``oom_backoff``, one process): on a CUDA out-of-memory error during a
   step the trainer calls :func:`back_off_after_oom`: the next exact split with at most half the
   micro-batch (126 x 2 -> 63 x 4), one warning line, and the trainer redoes the interrupted
   accumulation window with the smaller batches (:class:`MicroBatchHalved`).

Steps 3 and 4 rewrite the run's config (``config.json`` in the run folder), so ``--continue``
resumes with the sizes in effect. Importing this module does not import torch (``--dry-run``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from utils.errors import ConfigError

logger = logging.getLogger(__name__)


def _cuda() -> Any:
    """``torch.cuda`` (a seam: the CPU tests stand in a fake GPU memory report)."""
    import torch

    return torch.cuda


# ------------------------------------------------------------------------------------------------
# The plan over ranks (pure Python: used by --dry-run)
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchPlan:
    """How the planned optimizer batch is split over GPUs.

    ``grad_accum`` in the hyperparameters counts micro-batches per optimizer step over all GPUs,
    so the table's LR (chosen for ``batch_size x grad_accum`` samples per step) stays valid:
    each of ``world_size`` ranks accumulates ``ceil(grad_accum / world_size)`` micro-batches.
    """

    world_size: int
    batch_size: int
    grad_accum: int
    per_rank_grad_accum: int
    effective_batch: int
    planned_effective_batch: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def optimizer_steps_per_epoch(self, num_rows: int) -> int:
        """Optimizer steps in one epoch over ``num_rows`` training rows, as the Trainer counts them.

        Each rank gets ``ceil(rows / world_size)`` rows (DistributedSampler pads with repeats),
        makes ``ceil(rows / batch_size)`` micro-batches and steps every ``per_rank_grad_accum``
        of them and at the epoch's last one.
        """
        per_rank_rows = -(-int(num_rows) // self.world_size)
        batches = -(-per_rank_rows // self.batch_size)
        return -(-batches // self.per_rank_grad_accum)


def plan_batch(batch_size: int, grad_accum: int, world_size: int) -> BatchPlan:
    """Split ``batch_size x grad_accum`` samples per optimizer step over ``world_size`` ranks.

    Raises:
        ConfigError: on a non-positive value.
    """
    for name, value in (("batch size", batch_size), ("grad accum", grad_accum), ("number of GPUs", world_size)):
        if int(value) != value or value < 1:
            raise ConfigError(f"{name} must be a whole number >= 1 (got {value!r})")
    per_rank = -(-int(grad_accum) // int(world_size))
    return BatchPlan(
        world_size=int(world_size),
        batch_size=int(batch_size),
        grad_accum=int(grad_accum),
        per_rank_grad_accum=per_rank,
        effective_batch=int(batch_size) * per_rank * int(world_size),
        planned_effective_batch=int(batch_size) * int(grad_accum),
    )


def describe_plan(plan: BatchPlan) -> str:
    """One log line; says when the effective batch differs from the planned one (and why)."""
    text = (
        f"{plan.world_size} rank(s) x micro-batch {plan.batch_size} x {plan.per_rank_grad_accum} accumulation "
        f"step(s) = {plan.effective_batch} samples per optimizer step"
    )
    if plan.effective_batch != plan.planned_effective_batch:
        text += (
            f" (planned {plan.planned_effective_batch}: --grad-accum {plan.grad_accum} does not divide over "
            f"{plan.world_size} GPUs; give a --grad-accum that is a multiple of --gpus to keep the table's LR exact)"
        )
    return text


def planned_world_size(config: Any) -> int:
    """The number of ranks the run's batch plan is for (recorded by ``distributed.build_trainer``; 1 if none)."""
    record = (getattr(config, "toolkit", None) or {}).get("distributed") or {}
    return int(record.get("world_size", 1))


# ------------------------------------------------------------------------------------------------
# An effective batch split into micro-batch x accumulation
# ------------------------------------------------------------------------------------------------

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
        _warn_poor_split(effective, top, micro)
    return MicroBatchPlan(micro, effective // micro, effective)


def _warn_poor_split(effective: int, top: int, micro: int) -> None:
    accum = math.ceil(effective / top)
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
        top * accum,
        top,
        accum,
    )


# ------------------------------------------------------------------------------------------------
# The probe: the largest micro-batch whose training step fits in GPU memory
# ------------------------------------------------------------------------------------------------

# the micro-batch of the first probe (the compiling one), where the plan allows one this large
WARM_PROBE_CLIPS = 12


class _Probe:
    active = False  # probe steps run (optimizer steps at LR 0 on one rank alone)


def probing() -> bool:
    """True while the micro-batch probe runs: its optimizer steps (at LR 0) need no averaged gradients."""
    return _Probe.active


@contextlib.contextmanager
def _probing() -> Iterator[None]:
    _Probe.active = True
    try:
        yield
    finally:
        _Probe.active = False


def is_oom(exc: BaseException) -> bool:
    """True for CUDA out-of-memory errors (including the older RuntimeError form)."""
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc)


def auto_micro_batch(
    probe: Callable[[int], None],
    budget_bytes: int,
    *,
    max_batch: int = 256,
    margin: float = 0.9,
    candidates: list[int] | None = None,
) -> int:
    """Pick the largest micro-batch whose step fits ``margin * budget_bytes`` of reserved memory.

    ``probe(b)`` must run one full training step (forward, backward, optimizer step) on a
    worst-case batch of ``b`` clips (the longest clips) and leave the optimizer state and the
    gradient buffers allocated (``zero_grad(set_to_none=False)``), as they are during training
    with gradient accumulation. A first probe allocates that state (and compiles): at the smallest
    candidate of ``WARM_PROBE_CLIPS`` to 4 x ``WARM_PROBE_CLIPS`` clips (without candidates: at
    ``WARM_PROBE_CLIPS``), else, or where that does not fit, at 2 clips. A CUDA OOM counts as not
    fitting.

    With ``candidates`` (the sizes a plan can use, e.g. the divisors of the effective batch), a
    bisection over them finds the largest that fits: 5 probes for the 18 divisors of 252. Only
    where that one is below half of the next candidate does a bisection between the two find the
    largest size of all (so a poor split can name what would fit). Without ``candidates``, ``b``
    doubles while it fits, then a bisection between the last fitting and the first failing size.

    Returns:
        The micro-batch size (>= 1).
    """
    fits = _fit_test(probe, int(budget_bytes * margin))
    sizes = sorted({c for c in (candidates or []) if 1 < c <= max_batch})
    warm = _warm_size(sizes, max_batch)
    good, bad = warm, None
    # The first call allocates the optimizer state (and compiles), the second measures with it.
    if not fits(warm) or not fits(warm):
        if warm <= 2 or not fits(2) or not fits(2):
            return 1
        good, bad = 2, warm
    if sizes:
        good, bad = _bisect_sizes(fits, sizes, good, bad)
        if bad is None or good >= bad // 2:
            _log_choice(good, budget_bytes, margin)
            return good
        good = max(good, 2)  # searching on for the largest size of all (for the split's warning)
    good = _grow_and_bisect(fits, good, bad, max_batch)
    _log_choice(good, budget_bytes, margin)
    return good


def _fit_test(probe: Callable[[int], None], limit: int) -> Callable[[int], bool]:
    """``fits(b)``: the probe at ``b`` clips ran and its peak reserved memory is within ``limit``."""
    cuda = _cuda()

    def fits(b: int) -> bool:
        cuda.synchronize()
        cuda.empty_cache()
        cuda.reset_peak_memory_stats()
        try:
            probe(b)
            cuda.synchronize()
        except RuntimeError as exc:
            if not is_oom(exc):
                raise
            cuda.empty_cache()
            return False
        peak = cuda.max_memory_reserved()
        logger.info("auto micro-batch: %d clips peak at %.2f GiB reserved", b, peak / 2**30)
        return peak <= limit

    return fits


def _warm_size(sizes: list[int], max_batch: int) -> int:
    """The first probe's size: a split of the plan near ``WARM_PROBE_CLIPS``, else 2 (a prime effective batch).

    Not 1 clip: torch.compile specialises a dimension of size 1, so that probe compiles graphs
    training never runs. Not 2 either where a larger size can be tried: inductor's fusion choices
    add guards on tensor sizes (a block input of 1,024 channels under 5,120 rows: about 10 clips of
    517 conditioning frames), so the probe at 2 compiled graphs for small batches and the next probe
    compiled again (8 s on an H200: BENCHMARKS.md).
    """
    if sizes:
        return next((c for c in sizes if WARM_PROBE_CLIPS <= c <= 4 * WARM_PROBE_CLIPS), 2)
    return max(min(WARM_PROBE_CLIPS, max_batch), min(2, max_batch))


def _bisect_sizes(fits: Callable[[int], bool], sizes: list[int], good: int, bad: int | None) -> tuple[int, int | None]:
    """The largest of ``sizes`` that fits, and the next one (None: beyond the list); ``good`` fits, ``bad`` not."""
    # sizes[lo] fits (-1: size 1), sizes[hi] does not (len: beyond the list); those up to good fit
    lo = sum(1 for c in sizes if c <= good) - 1
    hi = sum(1 for c in sizes if c < bad) if bad is not None else len(sizes)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(sizes[mid]):
            lo = mid
        else:
            hi = mid
    return (sizes[lo] if lo >= 0 else 1), (sizes[hi] if hi < len(sizes) else None)


def _grow_and_bisect(fits: Callable[[int], bool], good: int, bad: int | None, max_batch: int) -> int:
    """Double ``good`` while it fits (up to ``max_batch``), then bisect to within an eighth of it."""
    while bad is None and good < max_batch:
        b = min(good * 2, max_batch)
        if fits(b):
            good = b
        else:
            bad = b
    while bad is not None and bad - good > max(1, good // 8):
        mid = (good + bad) // 2
        if fits(mid):
            good = mid
        else:
            bad = mid
    return good


def _log_choice(good: int, budget_bytes: int, margin: float) -> None:
    logger.info("auto micro-batch: %d (budget %.2f GiB, limit %.0f%%)", good, budget_bytes / 2**30, 100 * margin)


def probe_training_step(model: Any, config: Any, optimizer: Any, batch: dict[str, Any], device: Any) -> None:
    """One training step for :func:`auto_micro_batch` that leaves the weights unchanged.

    Forward and backward as Trainer 0.4 runs them, then an optimizer step at learning rate 0 (so
    the optimizer state is allocated at its real size), then ``zero_grad(set_to_none=False)`` (the
    gradient buffers stay, as during accumulation). After choosing the size, call
    ``optimizer.state.clear()`` and ``optimizer.zero_grad(set_to_none=True)``.
    """
    import torch

    batch = model.format_batch(dict(batch))
    for k, v in batch.items():
        if torch.is_tensor(v):
            batch[k] = v.contiguous().to(device, non_blocking=True)
    batch = model.format_batch_on_device(batch)
    dtype = torch.bfloat16 if config.precision == "bf16" else torch.float16
    try:
        with torch.autocast(device_type=torch.device(device).type, dtype=dtype, enabled=bool(config.mixed_precision)):
            _, loss_dict = model.train_step(batch, None)
        loss_dict["loss"].backward()
        lrs = [g["lr"] for g in optimizer.param_groups]
        for g in optimizer.param_groups:
            g["lr"] = 0.0
        optimizer.step()
        for g, lr in zip(optimizer.param_groups, lrs):
            g["lr"] = lr
    finally:
        optimizer.zero_grad(set_to_none=False)


# ------------------------------------------------------------------------------------------------
# The run's micro-batch from GPU memory (before fit)
# ------------------------------------------------------------------------------------------------


def size_micro_batch(trainer: Any, *, continuing: bool) -> MicroBatchPlan | None:
    """The run's automatic micro-batch, where it applies (speed option ``auto_batch``).

    Not when resuming (the run keeps its sizes) and not when ``--batch-size`` was given; otherwise
    :func:`autosize_micro_batch`. Returns its plan, or None where the sizes stay.
    """
    from utils.training.compat import unwrap_model

    config = trainer.config
    if not getattr(unwrap_model(trainer).speed, "auto_batch", False) or continuing:
        return None
    if ((config.toolkit.get("hparams") or {}).get("sources") or {}).get("batch_size", "") == "cli":
        logger.info("micro-batch %d from --batch-size (automatic sizing off)", config.batch_size)
        return None
    return autosize_micro_batch(trainer)


def autosize_micro_batch(trainer: Any, *, max_batch: int = 256, margin: float = 0.9) -> MicroBatchPlan | None:
    """Pick the run's micro-batch from GPU memory and apply it to ``trainer`` (see the module doc).

    Returns None (sizes unchanged, reason logged) where it cannot run: no CUDA, or the model has
    no DVAE-code cache to build worst-case batches from.
    """
    from utils.training.compat import unwrap_model

    model = unwrap_model(trainer)
    config = trainer.config
    requested = int(config.batch_size) * int(trainer.grad_accum_steps)
    if not _can_probe(model, config):
        return None
    dataset = model.clip_dataset(config, trainer.train_samples, is_eval=False)
    longest = sorted(range(len(dataset)), key=lambda i: -dataset.items[i].num_samples)
    device = next(model.xtts.gpt.parameters()).device
    budget = _memory_budget(device)
    logger.info(
        "automatic micro-batch: probing training steps on the %d longest clips (budget %.1f GiB)",
        min(len(longest), max_batch),
        budget / 2**30,
    )
    top = max(1, min(max_batch, requested))
    memo = _ProbeMemo(Path(config.output_path) / ".clip_cache" / "micro_batch_probes.json")
    key = _probe_key(model, config, dataset, longest[:top], device, budget, top, margin)
    local_fits = memo.read(key)
    if local_fits is None:
        divisors = [d for d in range(1, top + 1) if requested % d == 0]  # the sizes an exact plan can use
        local_fits = _probe_largest_fit(trainer, dataset, longest, budget, top, margin, divisors)
        memo.write(key, local_fits)
    fits = smallest_over_ranks(local_fits, device)
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


def _can_probe(model: Any, config: Any) -> bool:
    """A CUDA GPU and the DVAE-code cache (worst-case batches come from it); else a log line says why not."""
    if not _cuda().is_available():
        logger.info("automatic micro-batch: needs a CUDA GPU; keeping micro-batch %d", config.batch_size)
        return False
    if not hasattr(model, "clip_dataset") or not getattr(model.speed, "cache_dvae_codes", False):
        logger.info(
            "automatic micro-batch: needs the DVAE-code cache (on by default); keeping micro-batch %d",
            config.batch_size,
        )
        return False
    return True


def _memory_budget(device: Any) -> int:
    """What this process can hold on ``device``: free plus its own reserved memory, under its memory fraction."""
    cuda = _cuda()
    free, total = cuda.mem_get_info(device)
    budget = free + cuda.memory_reserved(device)
    fraction = getattr(cuda, "get_per_process_memory_fraction", None)
    if fraction is not None:
        budget = min(budget, int(fraction(device) * total))  # under torch.cuda.set_per_process_memory_fraction
    return budget


def _probe_largest_fit(
    trainer: Any, dataset: Any, longest: list[int], budget: int, top: int, margin: float, divisors: list[int]
) -> int:
    """Probe steps on the longest clips (at LR 0, this rank alone), then the optimizer as it was."""
    from utils.training.compat import unwrap_model
    from utils.training.gpt.clip_cache import collate_cached

    model = unwrap_model(trainer)
    device = next(model.xtts.gpt.parameters()).device
    optimizer = trainer.optimizer[0]
    model.on_train_epoch_start(trainer)  # GPTTrainer: GPT in train mode, the frozen parts in eval

    def probe(b: int) -> None:
        batch = collate_cached([dataset[longest[i % len(longest)]] for i in range(b)])
        probe_training_step(model, trainer.config, optimizer, batch, device)

    with _probing():
        fits = auto_micro_batch(probe, budget, max_batch=top, margin=margin, candidates=divisors)
    for opt in trainer.optimizer:
        opt.state.clear()  # the probes' moments are not training's
        opt.zero_grad(set_to_none=True)
    _cuda().empty_cache()
    _cuda().reset_peak_memory_stats()
    return fits


def smallest_over_ranks(fits: int, device: Any) -> int:
    """Data parallel: the smallest ``fits`` over the ranks (``fits`` itself in one process).

    Every rank then trains at one micro-batch (the collectives of each step stay in step), the
    largest the smallest GPU holds (a divisor of the same effective batch on every rank).
    ``device``: where this rank's collectives run (its GPU with nccl, the CPU with gloo).
    """
    import sys

    if "torch" not in sys.modules:
        return int(fits)
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return int(fits)
    t = torch.tensor([int(fits)], dtype=torch.long, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())


# speed switches that do not change a training step's memory: a run that changes only these reuses the probe
_NOT_MEMORY = frozenset({"num_workers", "pin_memory", "bucket_lengths", "auto_batch", "oom_backoff"})


def _probe_key(
    model: Any, config: Any, dataset: Any, longest: list[int], device: Any, budget: int, top: int, margin: float
) -> str:
    """What the largest fitting micro-batch depends on: the GPU, its budget, the model, the levers, the
    longest clips."""
    import torch

    props = _cuda().get_device_properties(device)
    gpt = model.xtts.gpt
    opts = getattr(model, "speed", None)
    facts = {
        # the budget in 4 GiB steps: free memory moves by a few MB between runs
        "gpu": [props.name, int(props.total_memory)],
        "budget_4gib": int(budget // (4 * 2**30)),
        "top": top,
        "margin": margin,
        "torch": torch.__version__,
        "gpt": [sum(p.numel() for p in gpt.parameters()), int(gpt.layers), int(gpt.model_dim)],
        "speed": {k: v for k, v in opts.to_dict().items() if k not in _NOT_MEMORY}
        if hasattr(opts, "to_dict")
        else None,
        "precision": [bool(config.mixed_precision), str(config.precision)],
        "clips": [[int(dataset.items[i].num_samples), int(dataset.items[i].tokens.numel())] for i in longest],
    }
    return hashlib.sha1(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class _ProbeMemo:
    """Probe results of earlier runs (key -> clips that fit), in the clip cache (best effort)."""

    path: Path

    def read(self, key: str) -> int | None:
        try:
            value = json.loads(self.path.read_text(encoding="utf-8")).get(key)
        except (OSError, ValueError, AttributeError):
            return None
        if isinstance(value, int) and value >= 1:
            logger.info(
                "automatic micro-batch: %d clips fit (measured by an earlier run on this GPU, data and model: %s)",
                value,
                self.path,
            )
            return value
        return None

    def write(self, key: str, fits: int) -> None:
        from utils.fs import write_json_atomic

        try:
            memo = json.loads(self.path.read_text(encoding="utf-8")) if self.path.is_file() else {}
            if not isinstance(memo, dict):
                memo = {}
            memo[key] = int(fits)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.path, memo)
        except (OSError, ValueError) as exc:
            logger.info("automatic micro-batch: could not keep the probe result in %s (%s)", self.path, exc)


# ------------------------------------------------------------------------------------------------
# The OOM back-off (during training)
# ------------------------------------------------------------------------------------------------


class MicroBatchHalved(Exception):
    """Raised out of a step after an OOM: the epoch goes on ``skip`` batches in, with smaller batches."""

    def __init__(self, skip: int) -> None:
        super().__init__(f"micro-batch halved; going on after {skip} batches")
        self.skip = skip


def oom_backoff_enabled(trainer: Any) -> bool:
    """The OOM back-off is on (speed option ``oom_backoff``) and the run has one process: under data
    parallel one rank alone cannot change its batch size."""
    from utils.training.compat import unwrap_model

    speed = getattr(unwrap_model(trainer), "speed", None)
    return bool(getattr(speed, "oom_backoff", False)) and planned_world_size(trainer.config) == 1


def back_off_after_oom(trainer: Any, step: int) -> int:
    """After a CUDA OOM in pass ``step`` of the epoch: drop the interrupted window's gradients, free
    the memory, halve the micro-batch (:func:`halve_micro_batch`).

    Returns:
        The batches of the re-batched epoch already done: the accumulation windows finished before
        the interrupted one, in batches of the new size (the epoch goes on from there).

    Raises:
        ConfigError: the micro-batch is already 1.
    """
    import gc

    for opt in trainer.optimizer:
        opt.zero_grad(set_to_none=True)  # the window's partial gradients: the window is redone
    gc.collect()
    if _cuda().is_available():
        _cuda().empty_cache()
    old_accum = int(trainer.grad_accum_steps)
    _new_micro, new_accum = halve_micro_batch(trainer)
    return (step // old_accum) * new_accum  # Coqui's windows start at batch 0 of the epoch


def halve_micro_batch(trainer: Any) -> tuple[int, int]:
    """After a CUDA OOM: the largest exact split with at most half the micro-batch; returns the new pair.

    The effective batch is kept exactly (micro-batch x accumulation unchanged): 126 x 2 -> 63 x 4,
    63 x 4 -> 28 x 9 for 252.

    Raises:
        ConfigError: the micro-batch is already 1 (the message names the low-VRAM preset).
    """
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
    config = trainer.config
    config.batch_size = int(micro)
    config.eval_batch_size = int(micro)
    trainer.grad_accum_steps = int(accumulation)
    tk = config.toolkit
    # grad_accum in the config counts micro-batches over all ranks (plan_batch)
    world = planned_world_size(config)
    tk["grad_accum"] = int(accumulation) * world
    hp = tk.setdefault("hparams", {})
    hp["batch_size"], hp["grad_accum"] = int(micro), int(accumulation) * world
    if world > 1:
        plan = plan_batch(int(micro), int(accumulation) * world, world)
        tk["distributed"] = {**(tk.get("distributed") or {}), **plan.as_dict()}
    sources = hp.setdefault("sources", {})
    sources["batch_size"] = sources["grad_accum"] = source
    trainer.train_loader = None  # rebuilt with the new batch size
    trainer.eval_loader = None
    if trainer.args.rank in (None, 0) and getattr(trainer, "output_path", None):
        config.save_json(str(Path(trainer.output_path) / "config.json"))
