"""Where a run's processes come from: this process, N local workers, or one worker of a torchrun job.

    launch.run(config, argv, command=Path("utils/gpt_train.py"), then=report)   # what the command does

- ``config.gpus > 1`` outside torchrun: ``command argv`` runs again in ``config.gpus`` workers on
  this host, started by ``torch.distributed.run`` in this process
  (:func:`utils.training.torchrun.launch_local`); each worker comes back here as a torchrun worker.
- A torchrun worker (started by ``torchrun`` or by the above): its GPU pinned before anything
  starts CUDA, ``gpus`` set to the world size, then the run inside the process group
  (:func:`utils.training.torchrun.run_worker`: a toolkit error is one line, a lost peer is quiet).
- Otherwise: the run in this process.

The command line passes its own command and argv because a worker is the same command line again
(plain strings: nothing the workers read can run code). The web UI's training process is
:mod:`utils.webui.worker`, started by :mod:`utils.webui.jobs`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from utils.errors import ConfigError
from utils.events import Subscriber
from utils.finetune.config import RunConfig
from utils.finetune.recipe import FineTune
from utils.training import torchrun

logger = logging.getLogger(__name__)


def run(
    config: RunConfig,
    argv: Sequence[str],
    *,
    command: str | Path,
    then: Callable[[FineTune], int],
    resume: str | Path | None = None,
    subscribers: Iterable[Subscriber] = (),
    plan_only: bool = False,
) -> int:
    """Build the :class:`FineTune` of ``config`` in every process that runs it and call ``then`` on it.

    Args:
        config: the run, as the command line (or a recipe) set it.
        argv: the command line a ``--gpus N`` worker runs ``command`` with.
        command: the script the workers run (``utils/gpt_train.py``).
        then: what to do with the recipe object (run and report, describe, preview); its
            return value is the exit code.
        resume: continue this run folder (:meth:`FineTune.resume`) instead of starting a new run.
        subscribers: event subscribers of the recipe object.
        plan_only: a dry run or a schedule preview: no workers started, no process group joined.

    Returns:
        The exit code (0 in the process that started ``--gpus N`` workers once they all finished).

    Raises:
        ConfigError: ``--gpus`` disagrees with the number of workers torchrun started.
        WorkerFailed: a ``--gpus N`` worker failed (:mod:`utils.training.torchrun`).
    """
    worker = torchrun.worker_env()
    if worker is None and config.gpus > 1 and not plan_only:
        torchrun.launch_local(config.gpus, Path(command), list(argv))
        return 0
    data_parallel = worker if worker is not None and worker.world_size > 1 else None
    if data_parallel is not None:
        config = _as_worker(data_parallel, config)

    def build_and_go() -> int:
        if resume is not None:
            ft = FineTune.resume(resume, config=config, subscribers=subscribers)
        else:
            ft = FineTune(config, subscribers=subscribers)
        return int(then(ft))

    if data_parallel is None or plan_only:
        return build_and_go()
    return torchrun.run_worker(data_parallel, build_and_go)


def _as_worker(worker: torchrun.WorkerEnv, config: RunConfig) -> RunConfig:
    """A torchrun worker: its GPU (first, before anything starts CUDA), and gpus = the world size."""
    torchrun.pin_gpu(worker)
    if config.source("gpus") == "cli" and config.gpus != worker.world_size:
        raise ConfigError(
            f"--gpus {config.gpus} but torchrun started {worker.world_size} workers; leave out --gpus under torchrun"
        )
    return config.replace(gpus=worker.world_size)
