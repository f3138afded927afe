"""Data-parallel fine-tuning on one host: N worker processes, one GPU each (or N CPU processes).

``python utils/gpt_train.py --gpus N ...`` prepares everything once (base model, preflight,
vocabulary, config), then :func:`launch_train` starts N workers that each run
:func:`utils.gpt_train.train` on their own shard of the training rows. Gradients are averaged
over the workers before clipping, so N workers with micro-batch B and G accumulation steps train
exactly like one worker with micro-batch B and N x G accumulation steps.

Upstream behaviours this works around (Coqui Trainer 0.4, coqui-tts 0.28):

- The Trainer's DDP path wraps the model in ``DistributedDataParallel`` and then keeps only
  ``ddp_model.module`` (``self.wrapped_model = ddp_model.module``); GPTTrainer's ``train_step``
  calls its own ``forward``, so DDP's forward never runs and its reducer never averages a
  gradient: every rank trains its own copy (checked with gloo: gradients through ``.module``
  stay rank-local). Here gradients are averaged explicitly (:func:`sync_gradients`, called by
  ``ToolkitGPTTrainer.before_gradient_clipping``) and Coqui's DDP path stays off: each worker
  sees one GPU (``CUDA_VISIBLE_DEVICES``), and the process group is ours.
- ``trainer.utils.distributed.init_distributed`` asserts CUDA: there is no CPU (gloo) path. The
  workers here use nccl on CUDA and gloo on CPU.
- The train loader's ``DistributedSampler`` never gets ``set_epoch``: every epoch would visit
  each rank's shard in the same order. :func:`trainer_callbacks` sets it at each epoch start.
- ``python -m trainer.distribute`` waits on its children one by one: when one rank fails the
  others hang in their next collective. :func:`launch_train` stops the rest at the first failure
  and re-raises the failing rank's error (a toolkit error keeps its one-line message).
- Every rank's Trainer writes config.json, ``trainer_N_log.txt`` and a copy of the script into
  its own timestamped run folder. Here only rank 0 writes the run folder; other ranks get a
  scratch folder (deleted at the end) and then follow rank 0's run folder (checkpoint reloads).
- GPTTrainer's weight-decay grouping (``optimizer_wd_only_on_weights``), which users were told
  to switch off for Coqui's DDP, works unchanged: the gradient averaging goes over the GPT's
  parameters, whatever the optimizer's groups are.

Evaluation runs on every rank over the full eval set (identical weights, so identical losses);
:func:`all_reduce_mean` makes the value every rank's LR bridge and health monitor decide on
provably the same. Metrics, plots, TensorBoard and checkpoints come from rank 0 only.

Importing this module does not import torch (``--dry-run`` uses :func:`plan_batch`).
"""

from __future__ import annotations

import importlib
import logging
import os
import pickle
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterable

from utils.errors import ConfigError, ToolkitError

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
ENV_STAGING = "XTTS_FT_DDP_STAGING"  # set by launch_train in every worker: the job folder
ENV_BACKEND = "XTTS_FT_DDP_BACKEND"
BUCKET_NUMEL = 32 * 1024 * 1024  # gradient elements per all-reduce (128 MB in fp32)
COLLECTIVE_TIMEOUT = timedelta(minutes=30)  # an evaluation on rank 0 must fit inside it


# ------------------------------------------------------------------------------------------------
# Batch arithmetic (pure Python: used by --dry-run)
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


def plan_batch(batch_size: int, grad_accum: int, world_size: int) -> BatchPlan:
    """Split ``batch_size x grad_accum`` samples per optimizer step over ``world_size`` ranks.

    Raises:
        ConfigError: on a non-positive value.
    """
    for name, value in (("batch size", batch_size), ("grad accum", grad_accum), ("number of GPUs", world_size)):
        if int(value) != value or value < 1:
            raise ConfigError(f"{name} must be a whole number >= 1 (got {value!r})")
    per_rank = -(-int(grad_accum) // int(world_size))
    plan = BatchPlan(
        world_size=int(world_size),
        batch_size=int(batch_size),
        grad_accum=int(grad_accum),
        per_rank_grad_accum=per_rank,
        effective_batch=int(batch_size) * per_rank * int(world_size),
        planned_effective_batch=int(batch_size) * int(grad_accum),
    )
    return plan


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


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (picklable objects)."""
    if not is_distributed():
        return obj
    box = [obj]
    _dist().broadcast_object_list(box, src=src)
    return box[0]


# ------------------------------------------------------------------------------------------------
# Gradients, weights, samplers
# ------------------------------------------------------------------------------------------------


class _SyncState:
    syncs = 0  # gradient averagings in this process; the optimizer pre-hook checks it moved
    seconds = 0.0  # wall time spent in them (the benchmark reports it)
    numel = 0  # gradient elements averaged by the last one


def sync_gradients(params: Iterable[Any]) -> None:
    """Average the gradients of ``params`` over all ranks (in place), in buckets.

    A parameter whose gradient is None on every rank stays None (AdamW then skips it, as in a
    single process); one that has a gradient on some rank only gets zeros on the others.
    """
    if not is_distributed():
        return
    import torch
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

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
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    _SyncState.syncs += 1
    _SyncState.seconds += time.perf_counter() - started
    _SyncState.numel = sum(p.numel() for p in live)


def sync_stats() -> dict[str, float]:
    """Gradient averagings so far in this process: count, seconds, elements in the last one."""
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
    """Call ``set_epoch`` on a loader's sampler (a DistributedSampler reshuffles its shards)."""
    sampler = getattr(loader, "sampler", None)
    if sampler is not None and hasattr(sampler, "set_epoch"):
        sampler.set_epoch(int(epoch))
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
    if _SyncState.syncs == _last_checked_sync[0]:
        raise RuntimeError(
            "optimizer step without averaged gradients: the model must call "
            "utils.training.distributed.sync_gradients in before_gradient_clipping"
        )
    _last_checked_sync[0] = _SyncState.syncs


# ------------------------------------------------------------------------------------------------
# The Trainer in a worker
# ------------------------------------------------------------------------------------------------

EVAL_KEYS = ("avg_loss", "avg_loss_text_ce", "avg_loss_mel_ce")


class DataParallelMixin:
    """Shares each evaluation's numbers across ranks before the toolkit trainer uses them.

    Put in front of :class:`utils.training.trainer.ToolkitTrainer` (:func:`build_trainer` does
    it in a worker). Before ``_after_evaluation`` reads them, the eval-loss averages are replaced
    by their mean over ranks and the train-loss sums and counts by their totals, so the LR
    bridge, the health monitor, early stopping and metrics.jsonl see the same numbers on every
    rank (the train loss then covers every rank's batches, not rank 0's).
    """

    def _after_evaluation(self) -> None:
        keep = getattr(self, "keep_avg_eval", None)
        if keep is not None:
            shared = all_reduce_mean_dict(keep.avg_values, EVAL_KEYS)
            for key in EVAL_KEYS:
                if key in keep.avg_values or key in shared:
                    keep.avg_values[key] = shared.get(key, float("nan"))
        sums: dict[str, float] = getattr(self, "_train_sums", {})
        keys = sorted(TRAIN_KEYS)
        totals = all_reduce_mean_dict({**sums, "_count": float(getattr(self, "_train_count", 0))}, [*keys, "_count"])
        n = world_size()
        self._train_sums = {k: totals[k] * n for k in keys if k in sums and k in totals}
        self._train_count = int(round(totals.get("_count", 0.0) * n))
        super()._after_evaluation()  # type: ignore[misc]


TRAIN_KEYS = ("loss", "loss_text_ce", "loss_mel_ce", "grad_norm")



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
            if args.continue_path:
                args.continue_path = str(_mirror_run_folder(Path(args.continue_path), scratch / "continue"))
        barrier()  # the mirrors exist before rank 0 rewrites anything in the run folder
        callbacks = dict(kwargs.pop("callbacks", None) or {})
        for key, fn in trainer_callbacks(int(config.training_seed)).items():
            callbacks[key] = _chain(callbacks.get(key), fn)
        kwargs["callbacks"] = callbacks
        cls = type(f"DataParallel{trainer_cls.__name__}", (DataParallelMixin, trainer_cls), {})
        trainer = cls(args, config, **kwargs)
        trainer.output_path = Path(broadcast_object(str(trainer.output_path) if r == 0 else None))
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
    staging = os.environ.get(ENV_STAGING)
    base = Path(staging) if staging else Path(tempfile.mkdtemp(prefix="xtts-ddp-"))
    path = base / f"rank{r}"
    path.mkdir(parents=True, exist_ok=True)
    return path


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


# ------------------------------------------------------------------------------------------------
# Launcher
# ------------------------------------------------------------------------------------------------


def default_backend() -> str:
    import torch

    return "nccl" if torch.cuda.is_available() else "gloo"


def check_gpus(nprocs: int, backend: str) -> list[str]:
    """The device ids the workers get (one each); CPU workers get none.

    Raises:
        ConfigError: more workers than visible GPUs, or fewer than 1.
    """
    if int(nprocs) != nprocs or nprocs < 1:
        raise ConfigError(f"--gpus must be a whole number >= 1 (got {nprocs!r})")
    if backend != "nccl":
        return []
    import torch

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [x.strip() for x in visible.split(",") if x.strip()] if visible else [str(i) for i in range(torch.cuda.device_count())]
    if len(ids) < nprocs:
        raise ConfigError(f"--gpus {nprocs} but only {len(ids)} GPU(s) are visible ({', '.join(ids) or 'none'}); lower --gpus")
    return ids[:nprocs]


def launch_train(
    nprocs: int,
    fn: Callable[..., Any] | str,
    *args: Any,
    backend: str | None = None,
    staging_dir: str | Path | None = None,
    timeout_s: float | None = None,
    **kwargs: Any,
) -> Any:
    """Run ``fn(*args, **kwargs)`` in ``nprocs`` worker processes; return rank 0's result.

    Each worker initialises the process group (nccl on CUDA, one GPU per worker; gloo on CPU),
    then calls ``fn``. At the first failing worker the others are stopped and its error is raised
    here (the same toolkit error, so the CLI prints one line; otherwise a RuntimeError naming the
    rank and its log). Rank 0 writes to this process's stdout/stderr; other ranks to
    ``<staging>/rankN.log``. The staging folder is removed after a successful run.

    Args:
        fn: a module-level function, or ``"module:function"``; arguments must pickle.
        staging_dir: parent of the job folder (default: the system temp folder).
        timeout_s: stop everything and raise after this many seconds (None: no limit).
    """
    backend = backend or default_backend()
    gpu_ids = check_gpus(nprocs, backend)
    root = Path(staging_dir) if staging_dir else Path(tempfile.gettempdir())
    job_dir = root / f"ddp-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
    job_dir.mkdir(parents=True)
    with open(job_dir / "job.pkl", "wb") as fh:
        pickle.dump({"fn": _fn_ref(fn), "args": args, "kwargs": kwargs, "log_level": logging.getLogger().level}, fh)
    port = _free_port()
    procs: list[subprocess.Popen] = []
    logs: list[Any] = []
    logger.info("starting %d workers (%s backend); job folder %s", nprocs, backend, job_dir)
    try:
        for r in range(nprocs):
            env = _worker_env(r, nprocs, port, backend, gpu_ids, job_dir)
            out = None if r == 0 else open(job_dir / f"rank{r}.log", "wb")  # noqa: SIM115 - closed below
            logs.append(out)
            cmd = [sys.executable, "-c", "import sys; from utils.training.distributed import _worker_main; "
                   "sys.exit(_worker_main(sys.argv[1]))", str(job_dir)]  # fmt: skip
            procs.append(subprocess.Popen(cmd, env=env, cwd=str(REPO_ROOT), stdout=out, stderr=out))
        failed = _wait(procs, timeout_s)
    except BaseException:
        _stop(procs)
        raise
    finally:
        for fh in logs:
            if fh is not None:
                fh.close()
    if failed is not None:
        _raise_failure(job_dir, failed, procs[failed].returncode)
    with open(job_dir / "result.pkl", "rb") as fh:
        result = pickle.load(fh)
    shutil.rmtree(job_dir, ignore_errors=True)
    return result


def _fn_ref(fn: Callable[..., Any] | str) -> str:
    if isinstance(fn, str):
        return fn
    module = fn.__module__
    if module == "__main__":  # e.g. `python utils/gpt_train.py`: name the module by its file
        main = sys.modules["__main__"]
        spec = getattr(main, "__spec__", None)
        if spec is not None and spec.name:
            module = spec.name
        else:
            rel = Path(main.__file__).resolve().relative_to(REPO_ROOT).with_suffix("")
            module = ".".join(rel.parts)
    return f"{module}:{fn.__qualname__}"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker_env(r: int, n: int, port: int, backend: str, gpu_ids: list[str], job_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": str(n), "LOCAL_WORLD_SIZE": str(n),
        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), ENV_BACKEND: backend, ENV_STAGING: str(job_dir),
    })  # fmt: skip
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
    if gpu_ids:
        env["CUDA_VISIBLE_DEVICES"] = gpu_ids[r]  # one GPU per worker: Coqui's own DDP path stays off
    else:
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // n)))
    return env


def _wait(procs: list[subprocess.Popen], timeout_s: float | None) -> int | None:
    """Wait for all workers; at the first failure stop the others and return its rank."""
    start = time.monotonic()
    while True:
        codes = [p.poll() for p in procs]
        for r, code in enumerate(codes):
            if code is not None and code != 0:
                _stop(procs)
                return r
        if all(code == 0 for code in codes):
            return None
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            _stop(procs)
            raise RuntimeError(f"distributed training did not finish within {timeout_s:.0f} s; workers stopped")
        time.sleep(0.1)


def _stop(procs: list[subprocess.Popen], grace_s: float = 10.0) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for p in procs:
        if p.poll() is None:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def _raise_failure(job_dir: Path, r: int, code: int) -> None:
    err_path = job_dir / f"error_rank{r}.pkl"
    log = "its output is above" if r == 0 else f"its log: {job_dir / f'rank{r}.log'}"
    if err_path.is_file():
        with open(err_path, "rb") as fh:
            info = pickle.load(fh)
        exc = info.get("exception")
        if isinstance(exc, ToolkitError):
            raise exc
        raise RuntimeError(f"rank {r} failed: {info['type']}: {info['message']} ({log})\n{info['traceback']}")
    raise RuntimeError(f"rank {r} exited with code {code} before reporting an error ({log})")


def _worker_main(job_dir: str) -> int:
    """Entry point of a worker process (started by :func:`launch_train`)."""
    job_path = Path(job_dir)
    r, n = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    with open(job_path / "job.pkl", "rb") as fh:
        job = pickle.load(fh)
    from utils import cli

    cli.setup_logging(job.get("log_level") == logging.DEBUG)
    if r != 0:
        logging.getLogger().handlers[-1].setFormatter(logging.Formatter(f"%(asctime)s rank {r} %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    import torch

    backend = os.environ.get(ENV_BACKEND) or default_backend()
    if backend == "nccl":
        torch.cuda.set_device(0)  # the one GPU this worker sees
    dist = _dist()
    dist.init_process_group(backend, init_method="env://", rank=r, world_size=n, timeout=COLLECTIVE_TIMEOUT)
    try:
        module, _, name = job["fn"].partition(":")
        fn: Any = importlib.import_module(module)
        for part in name.split("."):
            fn = getattr(fn, part)
        result = fn(*job["args"], **job["kwargs"])
        if r == 0:
            tmp = job_path / "result.pkl.tmp"
            with open(tmp, "wb") as fh:
                pickle.dump(result, fh)
            tmp.replace(job_path / "result.pkl")
    except BaseException as exc:  # noqa: BLE001 - reported to the launcher, then a non-zero exit
        _write_error(job_path / f"error_rank{r}.pkl", exc)
        logger.error("rank %d failed: %s", r, exc)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(2 if isinstance(exc, ToolkitError) else 1)  # peers may be blocked in a collective
    dist.barrier()
    dist.destroy_process_group()
    return 0


def _write_error(path: Path, exc: BaseException) -> None:
    info: dict[str, Any] = {
        "type": type(exc).__name__,
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(exc)),
    }
    try:
        pickle.loads(pickle.dumps(exc))
        info["exception"] = exc
    except (pickle.PicklingError, TypeError, AttributeError, ValueError):
        pass  # the exception itself does not pickle: type, message and traceback still go back
    with open(path, "wb") as fh:
        pickle.dump(info, fh)
