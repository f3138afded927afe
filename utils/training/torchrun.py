"""Data-parallel runs through PyTorch's elastic launcher, torchrun (``torch.distributed.run``).

    torchrun --nproc_per_node 4 utils/gpt_train.py ...                      # 4 GPUs of this host
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 utils/gpt_train.py ...
    python utils/gpt_train.py --gpus 4 ...                                   # the same, started for you

A worker reads torchrun's environment (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ...; see
:func:`worker_env`) and :func:`init_worker` joins the process group: nccl with one GPU per
worker, gloo on the CPU. ``--gpus N`` (:func:`launch_local`) runs ``torch.distributed.run``
in-process on this same command line, so a worker runs the same code either way; torchrun's
agent stops every worker when one fails.

Failures: a toolkit error (:class:`~utils.errors.ToolkitError`) on a rank is its one line on
stderr, or, under ``--gpus N``, the launching process prints it (the worker only records it in
torchrun's error file, JSON). A rank that only lost a peer (a collective failed because another
rank exited) waits quietly for the agent to stop it: no second traceback (:func:`quiet_exit`).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from utils.errors import ConfigError, ToolkitError

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
ENV_LAUNCHED = "XTTS_FT_GPUS_LAUNCH"  # set by --gpus N for its workers: the launching process reports errors
# A collective waits this long, e.g. for rank 0's preflight of a large dataset or a long evaluation.
COLLECTIVE_TIMEOUT = timedelta(minutes=60)
PEER_LOST_WAIT_S = 60.0  # a rank whose peer died waits this long for the agent to stop it
_AGENT_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT") if hasattr(signal, name)
)


@dataclass(frozen=True)
class WorkerEnv:
    """A torchrun worker's place in the job."""

    rank: int
    local_rank: int
    world_size: int
    local_world_size: int


def worker_env(environ: dict[str, str] | None = None) -> WorkerEnv | None:
    """This process's torchrun environment, or None when torchrun did not start it."""
    env = os.environ if environ is None else environ
    if not all(k in env for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE")):
        return None
    try:
        return WorkerEnv(
            int(env["RANK"]),
            int(env["LOCAL_RANK"]),
            int(env["WORLD_SIZE"]),
            int(env.get("LOCAL_WORLD_SIZE", env["WORLD_SIZE"])),
        )
    except ValueError:
        raise ConfigError("RANK, LOCAL_RANK and WORLD_SIZE must be whole numbers (as torchrun sets them)") from None


def pin_gpu(env: WorkerEnv) -> None:
    """One GPU per worker (its local rank's), set before anything starts CUDA: Coqui's Trainer then
    sees one GPU and keeps its own DDP path off (it raises on several visible GPUs without it).

    Harmless on a machine without GPUs; a no-op for a job of one process or once narrowed.
    """
    if env.world_size == 1:
        return
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [x.strip() for x in visible.split(",") if x.strip()] if visible is not None else None
    if ids is None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(env.local_rank)
    elif len(ids) > 1:
        if env.local_rank >= len(ids):
            raise ConfigError(
                f"local rank {env.local_rank} but only {len(ids)} GPU(s) visible ({visible}); lower --nproc_per_node"
            )
        os.environ["CUDA_VISIBLE_DEVICES"] = ids[env.local_rank]


def init_worker(env: WorkerEnv) -> str | None:
    """Join the process group of a torchrun job (nothing for a job of one process).

    Returns:
        The backend ("nccl" with CUDA, "gloo" without), None for one process.
    """
    if env.world_size == 1:
        return None
    pin_gpu(env)  # before the first CUDA call below
    import torch

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    import torch.distributed as dist

    if backend == "nccl":
        torch.cuda.set_device(0)  # the one GPU this worker sees
    dist.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT)
    if env.rank != 0:  # the other ranks' log lines say which rank they come from
        for handler in logging.getLogger().handlers:
            if getattr(handler, "_xtts_toolkit", False):
                handler.setFormatter(
                    logging.Formatter(f"%(asctime)s rank {env.rank} %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
                )
    logger.info("rank %d of %d (local rank %d, %s)", env.rank, env.world_size, env.local_rank, backend)
    return backend


def check_gpus(nprocs: int) -> None:
    """Raise :class:`ConfigError` when ``--gpus`` asks for more GPUs than are visible (CPU: any number)."""
    if int(nprocs) != nprocs or nprocs < 1:
        raise ConfigError(f"--gpus must be a whole number >= 1 (got {nprocs!r})")
    import torch

    if torch.cuda.is_available() and torch.cuda.device_count() < nprocs:
        raise ConfigError(f"--gpus {nprocs} but only {torch.cuda.device_count()} GPU(s) are visible; lower --gpus")


def launch_local(nprocs: int, script: str | Path, args: Sequence[str], *, module: bool = False) -> None:
    """Run ``script args`` in ``nprocs`` workers on this host through ``torch.distributed.run``.

    The same as ``torchrun --standalone --nproc-per-node N script args``, in this process.

    Args:
        module: ``script`` is a module name (``python -m``).

    Raises:
        WorkerFailed: a worker failed; the message is its toolkit error, or names the rank whose
            traceback is above; ``exit_code`` is the worker's.
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    check_gpus(nprocs)
    argv = [
        "--standalone",
        f"--nproc-per-node={int(nprocs)}",
        *(["--module"] if module else []),
        str(script),
        *map(str, args),
    ]
    saved = {k: os.environ.get(k) for k in (ENV_LAUNCHED, "OMP_NUM_THREADS", "PYTHONPATH")}  # run sets OMP_NUM_THREADS
    os.environ[ENV_LAUNCHED] = "1"
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [saved["PYTHONPATH"]])])  # for --module
    logger.info("starting %d workers through torch.distributed.run", nprocs)
    # the elastic agent installs its own SIGINT/SIGTERM handlers in this process: put ours back after
    handlers = {sig: signal.getsignal(sig) for sig in _AGENT_SIGNALS}
    try:
        run(parse_args(argv))
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        raise WorkerFailed(_failure_line(rank, failure), failure.exitcode) from None
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class WorkerFailed(ToolkitError):
    """A worker of a ``--gpus N`` run failed (its exit code becomes this process's)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = int(exit_code) if exit_code and exit_code > 0 else 1


def _failure_line(rank: int, failure: Any) -> str:
    message = failure.message if isinstance(failure.message, str) else ""
    if failure.error_file_data and message and not message.startswith("To enable traceback"):
        return message  # a toolkit error, recorded by report_failure
    return f"rank {rank} exited with code {failure.exitcode}; its traceback is above"


def report_failure(exc: BaseException) -> bool:
    """In a ``--gpus N`` worker: record a toolkit error for the launching process (which prints it).

    Returns:
        True when recorded (the worker then prints nothing), False outside ``--gpus N``.
    """
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not (os.environ.get(ENV_LAUNCHED) and path and isinstance(exc, ToolkitError)):
        return False
    from utils.training.compat import write_elastic_error

    write_elastic_error(path, str(exc))
    return True


def is_peer_failure(exc: BaseException) -> bool:
    """A collective that failed because another rank went away (not this rank's own error)."""
    import torch.distributed as dist

    if isinstance(exc, ToolkitError) or not (dist.is_available() and dist.is_initialized()):
        return False
    if isinstance(exc, getattr(dist, "DistError", ())):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(
        s in text for s in ("connection closed by peer", "connection reset", "broken pipe", "gloo", "nccl")
    )


def quiet_exit(code: int) -> None:
    """Leave a worker whose peers may be blocked in a collective (no interpreter teardown, no hang)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def wait_to_be_stopped(seconds: float = PEER_LOST_WAIT_S) -> None:
    """A rank that lost a peer: torchrun's agent stops it within moments (returns if it did not)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.2)


def run_worker(env: WorkerEnv, fn: Any) -> int:
    """``fn()`` in a torchrun worker: process group joined first, closed after; failures as the
    module docstring says (a toolkit error: one line and its exit code; a lost peer: quiet)."""
    import traceback

    init_worker(env)
    try:
        code = int(fn())
    except (KeyboardInterrupt, SystemExit):
        raise
    except ToolkitError as exc:
        if not report_failure(exc):
            sys.stderr.write(f"error: {exc}\n")
        quiet_exit(exc.exit_code)
    except Exception as exc:  # reported once, then the worker leaves
        if is_peer_failure(exc):
            wait_to_be_stopped()
        traceback.print_exc()
        quiet_exit(1)
    finish_worker(code)
    return code  # not reached: finish_worker ends the process


def finish_worker(code: int) -> None:
    """After a worker's successful run: wait until every rank is done, then end the process at once.

    Not ``destroy_process_group`` and the interpreter's teardown: gloo's threads, torn down while
    a peer process exits, can abort the process (``terminate called without an active
    exception``, seen once in the tests on a loaded machine). The run's files are closed by then;
    the log is flushed here.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
    logging.shutdown()
    quiet_exit(code)
