"""Training jobs owned by the web server: one child process at a time, state kept on disk.

A job is a folder ``RUNS/.webui/jobs/<id>/`` with ``spec.json`` (what to train, written by the
server), ``status.json`` (written by the worker: state, pid, run folder, one-line error) and
``worker.log``. The child runs in its own session, so closing the tab or stopping the server
(Ctrl-C reaches the terminal's process group) does not stop training; a new server finds the job
from these files and re-attaches. Stopping sends SIGINT: the trainer writes a checkpoint first.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from utils.errors import ConfigError
from utils.fs import write_json_atomic  # the job files are written whole (also used by the worker)
from utils.webui.run_view import read_json

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
ACTIVE_STATES = ("starting", "running", "stopping")
WORKER_MODULE = "utils.webui.worker"


@dataclass
class Job:
    """A training job as its folder describes it."""

    folder: Path
    spec: dict[str, Any]
    status: dict[str, Any] = field(default_factory=dict)

    @property
    def job_id(self) -> str:
        return self.folder.name

    @property
    def state(self) -> str:
        return str(self.status.get("state") or "starting")

    @property
    def pid(self) -> int | None:
        pid = self.status.get("pid") or self.spec.get("pid")
        return int(pid) if pid else None

    @property
    def run_dir(self) -> Path | None:
        """The run folder: from the status, else the one folder the job's run name made."""
        if self.status.get("run_dir"):
            return Path(self.status["run_dir"])
        if self.spec.get("continue_run"):
            return Path(self.spec["continue_run"])
        out = Path(self.spec.get("output_path", ""))
        prefix = f"{self.spec.get('run_name', '')}_"
        found = sorted(p for p in out.glob(f"{prefix}*") if p.is_dir()) if out.is_dir() and prefix != "_" else []
        return found[-1] if found else None

    @property
    def events_path(self) -> Path:
        """The recipe's events (utils.events.JsonlWriter): stages, per-step progress, evaluations."""
        return self.folder / "events.jsonl"

    @property
    def log_path(self) -> Path:
        return self.folder / "worker.log"

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.is_file():
            return ""
        return "\n".join(self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])


def _pid_is_worker(pid: int) -> bool:
    """True while ``pid`` is alive and (where /proc tells) runs the worker module."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.is_file():
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            return True
        status = Path(f"/proc/{pid}/stat").read_text(errors="replace") if Path(f"/proc/{pid}/stat").is_file() else ""
        if ") Z " in status:  # a zombie: finished, not yet reaped
            return False
        return WORKER_MODULE in text
    return True


class JobManager:
    """Start, stop and find training jobs under ``runs_root``; one active job at a time."""

    def __init__(self, runs_root: Path) -> None:
        self.runs_root = Path(runs_root)
        self.jobs_root = self.runs_root / ".webui" / "jobs"
        self._children: dict[int, subprocess.Popen] = {}

    # --- reading ---------------------------------------------------------------------------

    def load(self, folder: Path) -> Job:
        return Job(folder=folder, spec=read_json(folder / "spec.json"), status=read_json(folder / "status.json"))

    def jobs(self) -> list[Job]:
        """Every job, newest first."""
        if not self.jobs_root.is_dir():
            return []
        folders = [p for p in self.jobs_root.iterdir() if (p / "spec.json").is_file()]
        return [self.load(p) for p in sorted(folders, key=lambda p: p.name, reverse=True)]

    def latest(self) -> Job | None:
        jobs = self.jobs()
        return self.refresh(jobs[0]) if jobs else None

    def alive(self, job: Job) -> bool:
        pid = job.pid
        if pid is None:
            return False
        child = self._children.get(pid)
        if child is not None:
            return child.poll() is None
        return _pid_is_worker(pid)

    def refresh(self, job: Job) -> Job:
        """The job with its state corrected when its process died without saying so (killed)."""
        if job.state in ACTIVE_STATES and not self.alive(job):
            job = self.load(job.folder)  # it may have written its final state just now
            if job.state in ACTIVE_STATES and not self.alive(job):
                job.status.update(
                    state="interrupted",
                    ended=time.time(),
                    error="the training process ended without a final state (killed?); "
                    "continue the run from its last checkpoint",
                )
        return job

    def active(self) -> Job | None:
        """The job whose process is running now, if any."""
        for job in self.jobs()[:5]:
            job = self.refresh(job)
            if job.state in ACTIVE_STATES:
                return job
        return None

    # --- starting and stopping ---------------------------------------------------------------

    def start(self, spec: dict[str, Any]) -> Job:
        """Write the job folder and start the worker process.

        Raises:
            ConfigError: a training is already running (one at a time).
        """
        running = self.active()
        if running is not None:
            where = running.run_dir.name if running.run_dir else running.job_id
            raise ConfigError(
                f"a training is already running ({where}, process {running.pid}); one training at a time: "
                "stop it or wait until it finishes"
            )
        job_id = time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)
        folder = self.jobs_root / job_id
        folder.mkdir(parents=True)
        spec = dict(spec, job_id=job_id, created=time.time())
        write_json_atomic(folder / "spec.json", spec)
        write_json_atomic(folder / "status.json", {"state": "starting", "created": time.time()})
        log = open(folder / "worker.log", "ab")  # the child owns it from here
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        proc = subprocess.Popen(
            [sys.executable, "-m", WORKER_MODULE, str(folder / "spec.json")],
            cwd=str(REPO_ROOT),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
        )
        log.close()
        self._children[proc.pid] = proc
        spec["pid"] = proc.pid  # status.json is the worker's alone; the pid goes into the spec
        write_json_atomic(folder / "spec.json", spec)
        logger.info("training job %s started (process %d)", job_id, proc.pid)
        return self.load(folder)

    def stop(self) -> Job:
        """Ask the running job to stop (SIGINT: the trainer writes a checkpoint, then exits).

        Raises:
            ConfigError: nothing is running.
        """
        job = self.active()
        if job is None or job.pid is None:
            raise ConfigError("no training is running; nothing to stop")
        os.kill(job.pid, signal.SIGINT)
        status = read_json(job.folder / "status.json")
        if status.get("state") in ("starting", "running"):
            status["state"] = "stopping"
            write_json_atomic(job.folder / "status.json", status)
        logger.info("stop requested for job %s (process %d)", job.job_id, job.pid)
        return self.load(job.folder)

    def wait(self, job: Job, timeout: float) -> Job:
        """Wait up to ``timeout`` seconds for ``job`` to end; returns its newest state."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            job = self.refresh(self.load(job.folder))
            if job.state not in ACTIVE_STATES:
                return job
            time.sleep(0.5)
        return self.refresh(self.load(job.folder))
