"""Run a fine-tune in a child process that reports through a JSONL event file (for a web UI).

    proc = start_job(config, "jobs/1/events.jsonl")      # a started multiprocessing.Process (spawn)
    events = read_events("jobs/1/events.jsonl")           # poll: stages, progress, evaluations, ...
    proc.terminate()                                      # stop: the run folder keeps its checkpoints

The child writes every event of :class:`~utils.finetune.FineTune` to the file; a failed run ends
with an ``error`` event (its one-line message) and exit code 2 for problems the user can fix,
1 otherwise.
"""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from utils.finetune.config import RunConfig

logger = logging.getLogger(__name__)


def run_job(config: Mapping[str, Any], events_path: str, resume_dir: str | None = None) -> int:
    """The child's entry: build the run from plain values, run it, return an exit code."""
    from utils.cli import setup_logging
    from utils.errors import ToolkitError
    from utils.events import JsonlWriter
    from utils.finetune import FineTune

    setup_logging()
    writer = JsonlWriter(events_path)
    try:
        cfg = RunConfig.from_dict(config)
        ft = (
            FineTune.resume(resume_dir, config=cfg, subscribers=[writer])
            if resume_dir
            else FineTune(cfg, subscribers=[writer])
        )
        ft.run()
    except ToolkitError as exc:
        if not _ended_with_error(events_path):  # run() already reported what it raised
            writer(_error_event(exc))
        logger.error("%s", exc)
        return 2
    return 0


def _main(config: Mapping[str, Any], events_path: str, resume_dir: str | None) -> None:
    raise SystemExit(run_job(config, events_path, resume_dir))


def start_job(config: RunConfig, events_path: str | Path, *, resume_dir: str | Path | None = None) -> Any:
    """Start :func:`run_job` in a new process (spawn: torch and Coqui do not survive a fork); returns it."""
    ctx = multiprocessing.get_context("spawn")
    proc = ctx.Process(
        target=_main,
        args=(config.to_dict(), str(events_path), str(resume_dir) if resume_dir else None),
        name="xtts-finetune",
        daemon=False,
    )
    proc.start()
    return proc


def _error_event(exc: BaseException) -> Any:
    from utils.events import Event, EventKind

    return Event(EventKind.ERROR, {"message": str(exc), "type": type(exc).__name__})


def _ended_with_error(events_path: str) -> bool:
    from utils.events import EventKind, read_events

    events = read_events(events_path)
    return bool(events) and events[-1].kind is EventKind.ERROR
