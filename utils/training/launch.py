"""Start N data-parallel worker processes on this host and collect rank 0's result.

:func:`launch_train` pickles a call (``fn(*args, **kwargs)``), starts one worker per GPU (nccl;
``CUDA_VISIBLE_DEVICES`` narrowed to that GPU, so Coqui's own DDP path stays off) or per CPU
process (gloo), with torchrun's environment (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR,
MASTER_PORT). Each worker initialises the process group and makes the call; see
:mod:`utils.training.distributed` for what happens inside the Trainer.

Unlike ``python -m trainer.distribute`` (Coqui Trainer 0.4), which waits on its children one by one
and so leaves the other ranks hanging in a collective when one fails, the first failure stops
every worker and its error is raised in the caller (a toolkit error keeps its one-line message).
"""

from __future__ import annotations

import importlib
import logging
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

from utils.errors import ConfigError, ToolkitError
from utils.training.distributed import ENV_STAGING

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
ENV_BACKEND = "XTTS_FT_DDP_BACKEND"
COLLECTIVE_TIMEOUT = timedelta(minutes=30)  # a collective (e.g. after a long evaluation) waits this long
INTERRUPT_GRACE_S = 120  # after Ctrl-C: time for rank 0 to write its interrupt checkpoint

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
    staging_dir: str | Path | None = None, timeout_s: float | None = None,
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
    job_dir = _private_job_dir(staging_dir, {"fn": _fn_ref(fn), "args": args, "kwargs": kwargs,
                                             "log_level": logging.getLogger().level})  # fmt: skip
    port = _free_port()
    procs: list[subprocess.Popen] = []
    logs: list[Any] = []
    logger.info("starting %d workers (%s backend); job folder %s", nprocs, backend, job_dir)
    try:
        for r in range(nprocs):
            env = _worker_env(r, nprocs, port, backend, gpu_ids, job_dir)
            out = None if r == 0 else open(job_dir / f"rank{r}.log", "wb")  # noqa: SIM115 - closed below
            logs.append(out)
            cmd = [sys.executable, "-c", "import sys; from utils.training.launch import _worker_main; "
                   "sys.exit(_worker_main(sys.argv[1]))", str(job_dir)]  # fmt: skip
            procs.append(subprocess.Popen(cmd, env=env, cwd=str(REPO_ROOT), stdout=out, stderr=out))
        failed = _wait(procs, timeout_s)
    except KeyboardInterrupt:
        # Ctrl-C reached the workers too: rank 0 saves a checkpoint on its way out; let it finish.
        logger.info("interrupted: waiting up to %d s for the workers to save and exit", INTERRUPT_GRACE_S)
        _stop(procs, grace_s=INTERRUPT_GRACE_S, signal_first=False)
        raise
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


def _private_job_dir(staging_dir: str | Path | None, job: dict[str, Any]) -> Path:
    """A new job folder holding ``job.pkl``.

    The job files are pickles that the workers load: keep them private to this user (mkdtemp
    creates the folder with mode 0700, exclusively, so nobody else can plant or swap a file).
    """
    root = Path(staging_dir) if staging_dir else Path(tempfile.gettempdir())
    root.mkdir(parents=True, exist_ok=True)
    job_dir = Path(tempfile.mkdtemp(prefix=f"ddp-{time.strftime('%Y%m%d-%H%M%S')}-", dir=root))
    with open(os.open(job_dir / "job.pkl", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as fh:
        pickle.dump(job, fh)
    return job_dir


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


def _stop(procs: list[subprocess.Popen], grace_s: float = 10.0, signal_first: bool = True) -> None:
    """SIGTERM (unless ``signal_first`` is False), wait up to ``grace_s``, then SIGKILL what is left."""
    for p in procs:
        if signal_first and p.poll() is None:
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
    # A user error on any rank explains the run better than the connection errors it caused on the
    # others (whichever process exited first): raise that one when there is one.
    for path in sorted(job_dir.glob("error_rank*.pkl")):
        with open(path, "rb") as fh:
            exc = pickle.load(fh).get("exception")
        if isinstance(exc, ToolkitError):
            raise exc
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
    import torch.distributed as dist

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
