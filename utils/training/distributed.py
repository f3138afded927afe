"""Data-parallel fine-tuning: N worker processes started by torchrun, one GPU each (or N CPU processes).

``torchrun --nproc_per_node N utils/gpt_train.py ...`` (or ``--nnodes M`` for several machines,
or ``python utils/gpt_train.py --gpus N ...``, which runs ``torch.distributed.run`` in-process)
starts the workers; :mod:`utils.training.torchrun` joins them to the process group. Rank 0
prepares everything once (base model, preflight, vocabulary, config) and sends the config and
the rows to the other ranks (:func:`broadcast_json`); every rank then runs
:func:`utils.finetune.training.train` on its own shard of the training rows; inside it,
:func:`build_trainer` makes the Trainer rank-aware. Gradients are averaged over the workers
before clipping, so N workers with micro-batch B and G accumulation steps take the optimizer
step one worker takes with micro-batch B and N x G accumulation steps (same number of samples
per step; only which rows and which dropout masks differ).

Upstream behaviours this works around (Coqui Trainer 0.4, coqui-tts 0.28):

- The Trainer's DDP path wraps the model in ``DistributedDataParallel`` and then keeps only
  ``ddp_model.module`` (``self.wrapped_model = ddp_model.module``); GPTTrainer's ``train_step``
  calls its own ``forward``, so DDP's forward never runs and its reducer never averages a
  gradient: every rank trains its own copy (checked with gloo: gradients through ``.module``
  stay rank-local). Here gradients are averaged explicitly (:func:`sync_gradients`, called by
  ``ToolkitGPTTrainer.before_gradient_clipping``) and Coqui's DDP path stays off: each worker
  sees one GPU (``CUDA_VISIBLE_DEVICES``, set before CUDA starts), and the process group is ours.
- ``trainer.utils.distributed.init_distributed`` asserts CUDA: there is no CPU (gloo) path. The
  workers here use nccl on CUDA and gloo on CPU.
- The train loader's sampler never gets ``set_epoch``: every epoch would visit each rank's shard
  in the same order. :func:`trainer_callbacks` sets it at each epoch start (the length-bucketed
  sampler of the cached-code loader and the ``DistributedSampler`` of the stock one alike).
- Every rank's Trainer writes config.json, ``trainer_N_log.txt`` and a copy of the script into
  its own timestamped run folder. Here only rank 0 writes the run folder; other ranks get a
  scratch folder (deleted at the end) and then follow rank 0's run folder (checkpoint reloads).
  With several machines the output path must be on a file system they share.
- GPTTrainer's weight-decay grouping (``optimizer_wd_only_on_weights``), which users were told
  to switch off for Coqui's DDP, works unchanged: the gradient averaging goes over the GPT's
  parameters, whatever the optimizer's groups are.

Evaluation runs on every rank over the full eval set (identical weights, so identical losses);
:func:`all_reduce_mean` makes the value every rank's LR bridge and health monitor decide on
provably the same. Metrics, plots, TensorBoard and checkpoints come from rank 0 only.

Where the toolkit calls in: ``utils.finetune.recipe.FineTune`` prepares on rank 0 and shares;
``utils.finetune.training.train`` builds its Trainer with :func:`build_trainer` and writes
vocab.json/preflight_report.json/plots on rank 0 only; :func:`build_trainer` applies the batch
plan over the ranks (:func:`utils.training.batch_size.plan_batch`);
``ToolkitGPTTrainer.before_gradient_clipping`` calls :func:`sync_gradients`; the cached DVAE codes
are prepared by rank 0 first (``ToolkitGPTTrainer.clip_dataset``); the automatic micro-batch is
the smallest that fits on every rank (:mod:`utils.training.batch_size`).

Importing this module does not import torch.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from utils.errors import ConfigError
from utils.training.batch_size import describe_plan, plan_batch, probing

logger = logging.getLogger(__name__)

BUCKET_NUMEL = 32 * 1024 * 1024  # gradient elements per all-reduce (128 MB in fp32)


# ------------------------------------------------------------------------------------------------
# Rank queries and collectives (no-ops in a single process)
# ------------------------------------------------------------------------------------------------


def _dist() -> Any:
    import torch.distributed as dist

    return dist


def is_distributed() -> bool:
    """True inside a worker whose process group is initialised with more than one rank."""
    if "torch" not in sys.modules:
        return False
    dist = _dist()
    return bool(dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1)


def rank() -> int:
    return _dist().get_rank() if is_distributed() else 0


def world_size() -> int:
    return _dist().get_world_size() if is_distributed() else 1


def is_rank_zero() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        _dist().barrier()


def _device() -> Any:
    import torch

    return torch.device("cuda", torch.cuda.current_device()) if _dist().get_backend() == "nccl" else torch.device("cpu")


def all_reduce_mean(value: float | None) -> float | None:
    """The mean of ``value`` over all ranks (None on a rank counts as absent; None if all are).

    A non-finite value on any rank makes the result non-finite, so every rank sees the same
    divergence. In a single process the value is returned unchanged.
    """
    return all_reduce_mean_dict({"value": value}, ("value",)).get("value")


def all_reduce_mean_dict(values: dict[str, float | None], keys: Iterable[str]) -> dict[str, float]:
    """Mean over ranks of each of ``keys`` (absent or None on a rank: not counted there).

    Every rank must pass the same ``keys``. Keys absent on every rank are left out of the result.
    """
    keys = list(keys)
    if not is_distributed():
        return {k: float(values[k]) for k in keys if values.get(k) is not None}
    import torch

    buf = torch.zeros(2 * len(keys), dtype=torch.float64, device=_device())
    for i, key in enumerate(keys):
        if values.get(key) is not None:
            buf[2 * i] = float(values[key])
            buf[2 * i + 1] = 1.0
    _dist().all_reduce(buf)
    out = buf.cpu().tolist()
    return {k: out[2 * i] / out[2 * i + 1] for i, k in enumerate(keys) if out[2 * i + 1] > 0}


def any_rank(flag: bool) -> bool:
    """True on every rank if ``flag`` is true on any rank (a shared stop/recover decision)."""
    if not is_distributed():
        return bool(flag)
    import torch

    t = torch.tensor([1.0 if flag else 0.0], device=_device())
    _dist().all_reduce(t, op=_dist().ReduceOp.MAX)
    return bool(t.item() > 0)


def broadcast_json(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` (JSON data) on every rank; sent as UTF-8 bytes, never a pickle."""
    if not is_distributed():
        return obj
    import torch

    device = _device()
    data = json.dumps(obj).encode("utf-8") if rank() == src else b""
    size = torch.tensor([len(data)], dtype=torch.long, device=device)
    _dist().broadcast(size, src=src)
    if rank() == src:
        buf = torch.frombuffer(bytearray(data), dtype=torch.uint8).to(device)
    else:
        buf = torch.empty(int(size.item()), dtype=torch.uint8, device=device)
    _dist().broadcast(buf, src=src)
    return json.loads(buf.cpu().numpy().tobytes().decode("utf-8"))


# ------------------------------------------------------------------------------------------------
# Gradients, weights, samplers
# ------------------------------------------------------------------------------------------------


class _SyncState:
    syncs = 0  # gradient averagings in this process; the optimizer pre-hook checks it moved
    timing = False  # measure their wall time (waits for the GPU: for the benchmark only)
    seconds = 0.0
    numel = 0  # gradient elements averaged by the last one


def enable_sync_timing() -> None:
    """Time each gradient averaging (synchronises the GPU after it; used by the benchmark)."""
    _SyncState.timing = True


def sync_gradients(params: Iterable[Any]) -> None:
    """Average the gradients of ``params`` over all ranks (in place), in buckets.

    A parameter whose gradient is None on every rank stays None (AdamW then skips it, as in a
    single process); one that has a gradient on some rank only gets zeros on the others.
    """
    if not is_distributed():
        return
    import torch

    from utils.training.compat import flatten_dense_tensors as _flatten_dense_tensors
    from utils.training.compat import unflatten_dense_tensors as _unflatten_dense_tensors

    dist = _dist()
    started = time.perf_counter()
    params = [p for p in params if p.requires_grad]
    device = _device()
    present = torch.tensor([0.0 if p.grad is None else 1.0 for p in params], device=device)
    dist.all_reduce(present, op=dist.ReduceOp.MAX)
    live = [p for p, flag in zip(params, present.tolist()) if flag > 0]
    for p in live:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    n = dist.get_world_size()
    bucket: list[Any] = []
    size = 0

    def flush() -> None:
        if not bucket:
            return
        grads = [p.grad for p in bucket]
        flat = _flatten_dense_tensors(grads)
        dist.all_reduce(flat)
        flat.div_(n)
        for g, synced in zip(grads, _unflatten_dense_tensors(flat, grads)):
            g.copy_(synced)
        bucket.clear()

    for p in live:
        if bucket and (size + p.numel() > BUCKET_NUMEL or p.grad.dtype != bucket[0].grad.dtype):
            flush()
            size = 0
        bucket.append(p)
        size += p.numel()
    flush()
    if _SyncState.timing:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        _SyncState.seconds += time.perf_counter() - started
    _SyncState.syncs += 1
    _SyncState.numel = sum(p.numel() for p in live)


def sync_stats() -> dict[str, float]:
    """Gradient averagings so far in this process: count, seconds (0 unless timed), elements in the last one."""
    return {"syncs": _SyncState.syncs, "seconds": _SyncState.seconds, "numel": _SyncState.numel}


def broadcast_module(module: Any, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers into every rank's ``module`` (as DDP does)."""
    if not is_distributed():
        return
    dist = _dist()
    device = _device()
    for tensor in [*module.parameters(), *module.buffers()]:
        if tensor.device == device:
            dist.broadcast(tensor.data, src=src)
        else:  # e.g. a CPU buffer with nccl
            moved = tensor.data.to(device)
            dist.broadcast(moved, src=src)
            tensor.data.copy_(moved)


def set_sampler_epoch(loader: Any, epoch: int) -> bool:
    """Call ``set_epoch`` on a loader (``gpt.clip_cache.ContinuousLoader``), its batch sampler
    (``gpt.clip_cache.LengthBucketBatchSampler``) or its sampler (``DistributedSampler``)."""
    loader = getattr(loader, "loader", loader) if not hasattr(loader, "set_epoch") else loader  # compat.EpochTail
    for obj in (loader, getattr(loader, "batch_sampler", None), getattr(loader, "sampler", None)):
        if obj is not None and hasattr(obj, "set_epoch"):
            obj.set_epoch(int(epoch))
            return True
    return False


def trainer_callbacks(seed: int) -> dict[str, Callable[[Any], None]]:
    """Coqui Trainer callbacks for a distributed run (an empty dict in a single process).

    - ``on_init_end`` (after a checkpoint restore): rank 0's weights to every rank; per-rank
      random seeds (dropout, conditioning slices) so ranks do not draw the same noise; a guard
      that fails loudly if an optimizer step ever runs on unaveraged gradients.
    - ``on_train_epoch_start``: ``set_epoch`` on the train sampler.
    """
    if not is_distributed():
        return {}

    def on_init_end(trainer: Any) -> None:
        import random

        import torch

        if getattr(trainer, "use_amp_scaler", False):
            raise ConfigError(
                "fp16 mixed precision with a gradient scaler is not supported with --gpus > 1 (each rank would decide "
                "on skipped steps alone); use bf16 (precision 'bf16') or fp32"
            )
        broadcast_module(trainer.model)
        torch.manual_seed(seed + rank())
        random.seed(seed + rank())
        for opt in trainer.optimizer:
            opt.register_step_pre_hook(_check_synced)

    def on_train_epoch_start(trainer: Any) -> None:
        set_sampler_epoch(trainer.train_loader, trainer.epochs_done)

    return {"on_init_end": on_init_end, "on_train_epoch_start": on_train_epoch_start}


_last_checked_sync = [0]


def _check_synced(_optimizer: Any, *_: Any) -> None:
    if probing():  # the micro-batch probe steps at LR 0 on each rank alone
        return
    if _SyncState.syncs == _last_checked_sync[0]:
        raise RuntimeError(
            "optimizer step without averaged gradients: the model must call "
            "utils.training.distributed.sync_gradients in before_gradient_clipping"
        )
    _last_checked_sync[0] = _SyncState.syncs


# ------------------------------------------------------------------------------------------------
# The Trainer in a worker
# ------------------------------------------------------------------------------------------------


class DataParallelMixin:
    """Shares each evaluation's numbers across ranks before the toolkit trainer uses them.

    Put in front of :class:`utils.training.trainer.ToolkitTrainer` (:func:`build_trainer` does
    it in a worker). In the trainer's ``share_evaluation_inputs`` hook the eval-loss averages are
    replaced by their mean over ranks and the train-loss sums and counts (the trainer's step
    accounting, with each sum's own count) by their totals, so the LR bridge, the health monitor,
    early stopping and metrics.jsonl see the same numbers on every rank (the train loss then
    covers every rank's batches, not rank 0's). The keys come from the trainer's stage, the same on every rank.
    """

    def share_evaluation_inputs(self) -> None:
        keep = getattr(self, "keep_avg_eval", None)
        if keep is not None:
            keys = list(self.stage.average_keys)  # type: ignore[attr-defined]
            shared = all_reduce_mean_dict(keep.avg_values, keys)
            for key in keys:
                if key in keep.avg_values or key in shared:
                    keep.avg_values[key] = shared.get(key, float("nan"))
        steps = self.steps  # type: ignore[attr-defined]
        keys = sorted(steps.sum_keys)
        counts = {f"{k}#steps": float(c) for k, c in steps.train_counts.items()}
        totals = all_reduce_mean_dict(
            {**steps.train_sums, **counts, "_count": float(steps.train_count)},
            [*keys, *(f"{k}#steps" for k in keys), "_count"],
        )
        n = world_size()
        steps.replace_train_sums(
            {k: totals[k] * n for k in keys if k in steps.train_sums and k in totals},
            int(round(totals.get("_count", 0.0) * n)),
            {k: int(round(totals[f"{k}#steps"] * n)) for k in keys if f"{k}#steps" in totals},
        )
        super().share_evaluation_inputs()  # type: ignore[misc]


def build_trainer(trainer_cls: type, args: Any, config: Any, **kwargs: Any) -> Any:
    """Construct ``trainer_cls(args, config, **kwargs)``, rank-aware in a distributed worker.

    In a worker: ``args.rank`` is set; ``args.grad_accum_steps`` (micro-batches per optimizer
    step over all GPUs) becomes the per-rank count (:func:`plan_batch`); rank 0 writes the run
    folder, other ranks write only to a scratch folder (for ``args.continue_path``: a mirror of
    the run folder) and afterwards point ``trainer.output_path`` at rank 0's run folder; the
    trainer class gets :class:`DataParallelMixin` and the callbacks of :func:`trainer_callbacks`.
    In a single process it is ``trainer_cls(args, config, **kwargs)``. Either way the batch plan
    is recorded in ``config.toolkit["distributed"]`` (config.json and every checkpoint).
    """
    r, n = rank(), world_size()
    plan = plan_batch(int(config.batch_size), int(args.grad_accum_steps), n)
    record = {**plan.as_dict(), "backend": _dist().get_backend() if n > 1 else None}
    _record(config, record)
    if n == 1:
        trainer = trainer_cls(args, config, **kwargs)
    else:
        args.rank = r
        args.grad_accum_steps = plan.per_rank_grad_accum
        if r != 0:
            scratch = _scratch_dir(r)
            kwargs["output_path"] = str(scratch)
            kwargs.pop("run_folder", None)  # rank 0's folder: the other ranks write to their scratch folder
            if args.continue_path:
                args.continue_path = str(_mirror_run_folder(Path(args.continue_path), scratch / "continue"))
        barrier()  # the mirrors exist before rank 0 rewrites anything in the run folder
        callbacks = dict(kwargs.pop("callbacks", None) or {})
        for key, fn in trainer_callbacks(int(config.training_seed)).items():
            callbacks[key] = _chain(callbacks.get(key), fn)
        kwargs["callbacks"] = callbacks
        cls = type(f"DataParallel{trainer_cls.__name__}", (DataParallelMixin, trainer_cls), {})
        trainer = cls(args, config, **kwargs)
        trainer.output_path = Path(broadcast_json(str(trainer.output_path) if r == 0 else None))
    if args.continue_path and _record(trainer.config, record) and r == 0:
        trainer.config.save_json(str(Path(trainer.output_path) / "config.json"))  # the resumed run's record
    if r == 0:
        logger.info("batch: %s", describe_plan(plan))
    return trainer


def _record(config: Any, record: dict[str, Any]) -> bool:
    toolkit = getattr(config, "toolkit", None)
    if not isinstance(toolkit, dict) or toolkit.get("distributed") == record:
        return False
    toolkit["distributed"] = dict(record)
    return True


def _chain(first: Callable[[Any], None] | None, second: Callable[[Any], None]) -> Callable[[Any], None]:
    if first is None:
        return second

    def both(trainer: Any) -> None:
        first(trainer)
        second(trainer)

    return both


def _scratch_dir(r: int) -> Path:
    path = Path(tempfile.mkdtemp(prefix=f"xtts-ddp-rank{r}-"))
    _scratch_dirs.append(path)
    return path


_scratch_dirs: list[Path] = []


def remove_scratch() -> None:
    """Delete the scratch folders this rank's Trainer wrote instead of the run folder."""
    while _scratch_dirs:
        shutil.rmtree(_scratch_dirs.pop(), ignore_errors=True)


def _mirror_run_folder(run_dir: Path, dest: Path) -> Path:
    """config.json copied and every other file linked, so a rank > 0 resumes without writing there."""
    dest.mkdir(parents=True, exist_ok=True)
    for item in run_dir.iterdir():
        target = dest / item.name
        if item.name == "config.json":
            shutil.copy2(item, target)  # the Trainer rewrites it on resume
        elif item.is_file() and not target.exists():
            target.symlink_to(item.resolve())
    return dest


def resume_batches(batches_done: int, saved_world_size: int, world_size_now: int) -> int:
    """Batches of the interrupted epoch to skip on resume when the number of ranks changed.

    Each rank's epoch has ``1 / world_size`` of the batches, so the same share of the epoch is
    ``batches_done x saved / now``. (Which rows those were cannot be kept across world sizes:
    the shards are drawn differently; resuming at an epoch boundary avoids the question.)
    """
    return (int(batches_done) * int(saved_world_size)) // max(1, int(world_size_now))
