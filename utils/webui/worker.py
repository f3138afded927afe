"""The training child process of the web UI: ``python -m utils.webui.worker JOB/spec.json``.

It trains through the recipe API (:class:`utils.finetune.FineTune`, via
:func:`run_training_spec`). The recipe's events go to ``JOB/events.jsonl``
(:class:`utils.events.JsonlWriter`: stages, per-step progress, evaluations, health), and its
state to ``JOB/status.json``: ``running`` (with its pid and, from the ``run_dir`` event, the run
folder), then ``finished``, ``stopped`` (SIGINT or SIGTERM, whatever SIGINT disposition the
server inherited: the trainer writes a checkpoint first) or ``failed`` with the one-line reason.
A ``search`` job runs a hyperparameter study first (:mod:`utils.webui.search`; status
``phase`` ``search``, then ``train``), then the training with the study's best.json.
The process holds the job manager's training lock (an inherited descriptor) until it ends.
The page reads these files and the run folder; it never parses this process's output.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from utils import cli
from utils.errors import ToolkitError
from utils.webui.jobs import Job, write_json_atomic
from utils.webui.run_view import read_json

logger = logging.getLogger("utils.webui.worker")


class StatusWriter:
    """Owns JOB/status.json for this process; an event subscriber records the run folder."""

    def __init__(self, folder: Path, spec: dict[str, Any]) -> None:
        self.folder = folder
        self.job = Job(folder=folder, spec=spec)
        self.status: dict[str, Any] = {"state": "running", "pid": os.getpid(), "started": time.time()}
        self._lock = threading.Lock()

    def update(self, **values: Any) -> None:
        with self._lock:
            self.status.update(values)
            write_json_atomic(self.folder / "status.json", self.status)

    def __call__(self, event: Any) -> None:
        """Event subscriber: the run folder as soon as training has made it, and the stage."""
        if event.kind.value == "run_dir":
            self.update(run_dir=str(event.data["path"]))
        elif event.kind.value == "stage" and event.data.get("status") == "started":
            self.update(stage=event.data.get("name"))

    def finish(self, **values: Any) -> None:
        run_dir = self.job.run_dir
        if run_dir is not None and "run_dir" not in self.status:
            values["run_dir"] = str(run_dir)
        self.update(ended=time.time(), **values)


def install_stop_signals() -> None:
    """SIGINT and SIGTERM stop training the way Ctrl-C does (the trainer writes a checkpoint).

    A process started in the background by a shell script (``nohup python scripts/webui.py &``)
    inherits SIGINT as ignored, and Python then leaves it ignored in every child: the server's
    Stop would do nothing. So the worker installs Python's own SIGINT handler whatever it
    inherited.
    """
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)


def _sigterm_as_interrupt(_signum: int, frame: Any) -> None:
    """SIGTERM goes through the SIGINT handler in place: while a checkpoint is being written, the
    trainer's deferring handler holds it until the file is complete, as it does a Ctrl-C."""
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler) and handler is not signal.default_int_handler:
        handler(signal.SIGINT, frame)
        return
    raise KeyboardInterrupt  # the trainer saves a checkpoint on KeyboardInterrupt


def _preload() -> None:
    """Import what the evaluation hooks import lazily, before training starts.

    Stop is a SIGINT, which raises KeyboardInterrupt wherever the main thread is; landing inside
    a first ``import matplotlib`` (the first evaluation's plot) leaves a half-imported package
    behind, and the plot in the trainer's ``finally`` then fails instead of the run stopping.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot

    import utils.after.hooks
    import utils.plots  # noqa: F401


def main(argv: list[str] | None = None) -> int:
    """Run the job whose spec.json is ``argv[0]``; returns the exit code (0 finished or stopped)."""
    install_stop_signals()
    argv = list(sys.argv[1:] if argv is None else argv)
    spec_path = Path(argv[0])
    spec = read_json(spec_path)
    cli.setup_logging()  # stderr is JOB/worker.log
    status = StatusWriter(spec_path.parent, spec)
    status.update()
    _preload()
    from utils.events import JsonlWriter

    try:
        run_dir = run_training_spec(spec, subscribers=[JsonlWriter(spec_path.parent / "events.jsonl"), status])
    except KeyboardInterrupt:
        logger.info("stopped on request")
        status.finish(state="stopped")
        return 0
    except ToolkitError as exc:
        logger.error("%s", exc)
        status.finish(state="failed", error=str(exc))
        return 2
    except Exception as exc:  # the page must get one line; the traceback goes to worker.log
        logger.error("training failed:\n%s", traceback.format_exc())
        status.finish(
            state="failed", error=f"training failed ({type(exc).__name__}: {exc}); see {status.folder / 'worker.log'}"
        )
        return 1
    status.finish(state="finished", run_dir=str(run_dir))
    return 0


def run_training_spec(spec: dict[str, Any], subscribers: Sequence[Any] = ()) -> Path | None:
    """Run a job spec through the recipe API in this process (the worker calls it).

    Returns:
        The run folder.
    """
    from utils.finetune import FineTune, RunConfig

    mode = spec.get("mode", "new")
    if mode == "continue":
        ft = FineTune.resume(
            spec["continue_run"],
            epochs=spec.get("epochs"),
            config=RunConfig.build(progress=False),
            subscribers=subscribers,
        )
    elif mode == "restore":
        ft = FineTune.restore(spec["restore"], dict(spec.get("values") or {}), subscribers=subscribers)
    elif mode == "search":  # a study first (utils.webui.search), then the training with its best.json
        from utils.webui.search import run_search_spec

        status = next((s for s in subscribers if isinstance(s, StatusWriter)), None)
        config = run_search_spec(spec, status.update if status is not None else _no_status)
        ft = FineTune(RunConfig.from_dict(config), subscribers=subscribers)
    else:
        ft = FineTune(RunConfig.from_dict(spec["config"]), subscribers=subscribers)
    return Path(ft.run().run_dir)


def _no_status(**_values: Any) -> None:
    """No status file to update (a caller without a job folder)."""


if __name__ == "__main__":
    sys.exit(main())
