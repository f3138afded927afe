"""Training jobs owned by the web server: one child process at a time, state kept on disk.

A job is a folder ``RUNS/.webui/jobs/<id>/`` with ``spec.json`` (what to train, written by the
server), ``status.json`` (written by the worker: state, pid, run folder, one-line error) and
``worker.log``. The child runs in its own session, so closing the tab or stopping the server
(Ctrl-C reaches the terminal's process group) does not stop training; a new server finds the job
from these files and re-attaches.

One training at a time, claimed atomically: a start takes an exclusive ``flock`` on
``RUNS/.webui/training.lock`` and hands the open file to the worker, which holds it until its
process ends (the kernel releases it then, also on a kill); a second start, from another tab or
another server on the same runs folder, finds the lock taken and is refused.

Stop sends SIGINT (the worker installs Python's handler itself, since a server started in the
background with ``nohup ... &`` passes SIGINT on as ignored): the trainer writes a checkpoint,
then the process ends. The request is recorded in ``stop.json``; when the process has not ended
``stop_grace_s`` after it, the page says so, and Stop again is a hard stop: SIGTERM (the same
stop once more), then SIGKILL of the worker's process group after :data:`HARD_STOP_WAIT_S`; the
run goes on from its last complete checkpoint. Finished workers are reaped at once (a thread
waits on each), so none lingers as a zombie of the server.
"""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from utils.errors import ConfigError
from utils.fs import write_json_atomic  # the job files are written whole (also used by the worker)
from utils.runs import checkpoint_step
from utils.webui.run_view import read_json

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
# "exiting": the worker wrote its final state and its process is still ending (it holds the lock,
# and on a GPU its memory, until it is gone), so the page says "stopped" only once a new start can run
ACTIVE_STATES = ("starting", "running", "stopping", "exiting")
FINAL_STATES = ("finished", "stopped", "failed")
WORKER_MODULE = "utils.webui.worker"
LOCK_NAME = "training.lock"
STOP_GRACE_S = 60.0  # after Stop, how long the page waits before it says the process did not stop
HARD_STOP_WAIT_S = 10.0  # a hard stop: SIGTERM, then SIGKILL of the process group after this long


@dataclass
class Job:
    """A training job as its folder describes it."""

    folder: Path
    spec: dict[str, Any]
    status: dict[str, Any] = field(default_factory=dict)
    stop_request: dict[str, Any] = field(default_factory=dict)  # stop.json: written by the server

    @property
    def job_id(self) -> str:
        return self.folder.name

    @property
    def state(self) -> str:
        """The worker's state; ``stopping`` while a stop was asked for and the worker still runs."""
        state = str(self.status.get("state") or "starting")
        return "stopping" if state in ("starting", "running") and self.stop_request else state

    def stop_waited_s(self) -> float | None:
        """Seconds since Stop was pressed while the job is still stopping (None otherwise)."""
        if self.state != "stopping" or not self.stop_request.get("time"):
            return None
        return max(0.0, time.time() - float(self.stop_request["time"]))

    def last_checkpoint_name(self) -> str | None:
        """The newest ``checkpoint_N.pth`` of the run (by name: nothing is loaded), where continue starts."""
        run_dir = self.run_dir
        found = [p for p in run_dir.glob("checkpoint_*.pth")] if run_dir is not None and run_dir.is_dir() else []
        found = [p for p in found if checkpoint_step(p) is not None]
        return max(found, key=lambda p: checkpoint_step(p) or 0).name if found else None

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

    def __init__(
        self, runs_root: Path, *, stop_grace_s: float = STOP_GRACE_S, hard_stop_wait_s: float = HARD_STOP_WAIT_S
    ) -> None:
        self.runs_root = Path(runs_root)
        self.jobs_root = self.runs_root / ".webui" / "jobs"
        self.lock_path = self.runs_root / ".webui" / LOCK_NAME
        self.stop_grace_s = stop_grace_s
        self.hard_stop_wait_s = hard_stop_wait_s
        self._children: dict[int, subprocess.Popen] = {}

    # --- reading ---------------------------------------------------------------------------

    def load(self, folder: Path) -> Job:
        return Job(
            folder=folder,
            spec=read_json(folder / "spec.json"),
            status=read_json(folder / "status.json"),
            stop_request=read_json(folder / "stop.json"),
        )

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
        """The job with its state corrected: ``exiting`` while the process outlives its final state,
        ``interrupted`` (or ``killed``) when it died without writing one."""
        if job.state in FINAL_STATES and self.alive(job):
            job.status = dict(job.status, state="exiting", final_state=job.state)
            return job
        if job.state in ACTIVE_STATES and not self.alive(job):
            job = self.load(job.folder)  # it may have written its final state just now
            if job.state in ACTIVE_STATES and not self.alive(job):
                job.status.update(_end_without_state(job))
                job.stop_request = {}
        return job

    def active(self) -> Job | None:
        """The job whose process is running now, if any."""
        for job in self.jobs()[:5]:
            job = self.refresh(job)
            if job.state in ACTIVE_STATES:
                return job
        return None

    def stop_overdue(self, job: Job) -> bool:
        """True when Stop was asked for ``stop_grace_s`` ago or more and the process still runs."""
        waited = job.stop_waited_s()
        return waited is not None and waited >= self.stop_grace_s

    # --- starting ------------------------------------------------------------------------------

    def start(self, spec: dict[str, Any]) -> Job:
        """Claim the one training slot, write the job folder and start the worker process.

        Raises:
            ConfigError: a training is already running or being started (one at a time).
        """
        fd = self._claim()
        try:
            return self._launch(spec, fd)
        finally:
            os.close(fd)  # the worker holds its own descriptor of the lock from here

    def _claim(self) -> int:
        """An open, exclusively locked descriptor of the lock file (check and claim in one step)."""
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigError(_busy_message(self.active())) from None
        running = self.active()  # a worker that does not hold the lock (started before it existed)
        if running is not None:
            os.close(fd)
            raise ConfigError(_busy_message(running))
        return fd

    def _launch(self, spec: dict[str, Any], lock_fd: int) -> Job:
        job_id = time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)
        folder = self.jobs_root / job_id
        folder.mkdir(parents=True)
        spec = dict(spec, job_id=job_id, created=time.time())
        write_json_atomic(folder / "spec.json", spec)
        write_json_atomic(folder / "status.json", {"state": "starting", "created": time.time()})
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        with open(folder / "worker.log", "ab") as log:  # the child owns it from here
            proc = subprocess.Popen(
                [sys.executable, "-m", WORKER_MODULE, str(folder / "spec.json")],
                cwd=str(REPO_ROOT),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                pass_fds=(lock_fd,),  # the lock lives as long as the worker's process
                env=env,
            )
        self._children[proc.pid] = proc
        threading.Thread(target=self._reap, args=(proc, job_id), name=f"reap-{job_id}", daemon=True).start()
        os.ftruncate(lock_fd, 0)
        os.write(lock_fd, f"{job_id} {proc.pid}\n".encode())  # for a person looking at the file
        spec["pid"] = proc.pid  # status.json is the worker's alone; the pid goes into the spec
        write_json_atomic(folder / "spec.json", spec)
        logger.info("training job %s started (process %d)", job_id, proc.pid)
        return self.load(folder)

    @staticmethod
    def _reap(proc: subprocess.Popen, job_id: str) -> None:
        """Wait for the worker, so its exit status is collected (no zombie) the moment it ends."""
        code = proc.wait()
        logger.info("training job %s: process %d ended (exit code %s)", job_id, proc.pid, code)

    # --- stopping ------------------------------------------------------------------------------

    def stop(self) -> Job:
        """Ask the running job to stop: SIGINT (the trainer writes a checkpoint, then exits).

        Pressed again once the stop is overdue (``stop_grace_s``), it is a hard stop
        (:meth:`hard_stop`); pressed again before that, it changes nothing.

        Raises:
            ConfigError: nothing is running.
        """
        job = self.active()
        if job is None or job.pid is None:
            raise ConfigError("no training is running; nothing to stop")
        if job.state == "exiting":
            raise ConfigError(f"the training has ended ({job.status.get('final_state')}); its process is exiting")
        if job.stop_request:
            return self.hard_stop(job) if self.stop_overdue(job) else job
        os.kill(job.pid, signal.SIGINT)
        write_json_atomic(job.folder / "stop.json", {"time": time.time(), "signal": "SIGINT", "pid": job.pid})
        logger.info("stop requested for job %s (process %d)", job.job_id, job.pid)
        return self.load(job.folder)

    def hard_stop(self, job: Job) -> Job:
        """End the job now: SIGTERM (one more stop request), then SIGKILL after ``hard_stop_wait_s``.

        The run keeps every checkpoint written before; continue goes on from the newest one.
        """
        pid = int(job.pid or 0)
        request = dict(job.stop_request, hard=time.time())
        write_json_atomic(job.folder / "stop.json", request)
        logger.warning("hard stop of job %s (process %d)", job.job_id, pid)
        _signal(pid, signal.SIGTERM)
        threading.Thread(target=self._kill_after, args=(job, self.hard_stop_wait_s), daemon=True).start()
        return self.load(job.folder)

    def _kill_after(self, job: Job, wait_s: float) -> None:
        """SIGKILL the worker's process group if it still runs after ``wait_s``; record the end."""
        deadline = time.time() + wait_s
        while time.time() < deadline and self.alive(job):
            time.sleep(0.2)
        if self.alive(job):
            pid = int(job.pid or 0)
            try:  # the worker leads its own session: its group holds its data-loader processes too
                os.killpg(pid, signal.SIGKILL) if os.getpgid(pid) == pid else os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            while self.alive(job):
                time.sleep(0.1)
        now = self.load(job.folder)
        if now.status.get("state") in ("starting", "running"):  # it died without writing its end: record it
            write_json_atomic(job.folder / "status.json", dict(now.status, **_end_without_state(now)))

    def wait(self, job: Job, timeout: float) -> Job:
        """Wait up to ``timeout`` seconds for ``job`` to end; returns its newest state."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            job = self.refresh(self.load(job.folder))
            if job.state not in ACTIVE_STATES:
                return job
            time.sleep(0.5)
        return self.refresh(self.load(job.folder))


def _end_without_state(job: Job) -> dict[str, Any]:
    """The final state of a job whose process ended without writing one: killed by a hard stop,
    else interrupted (killed from outside, or the machine went down)."""
    last = job.last_checkpoint_name()
    where = f"continue the run from {last}" if last else "no checkpoint was written; start the run again"
    if job.stop_request.get("hard"):
        return {"state": "killed", "ended": time.time(), "error": f"ended by a hard stop; {where}"}
    return {
        "state": "interrupted",
        "ended": time.time(),
        "error": f"the training process ended without a final state (killed?); {where}",
    }


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass  # ended a moment ago


def _busy_message(running: Job | None) -> str:
    if running is None:
        return "another training is being started right now; one training at a time: wait a moment and look again"
    if running.state == "exiting":
        return (
            f"the last training has ended ({running.status.get('final_state')}) and its process {running.pid} is "
            "still exiting; start again in a few seconds"
        )
    where = running.run_dir.name if running.run_dir else running.job_id
    return (
        f"a training is already running ({where}, process {running.pid}); one training at a time: "
        "stop it or wait until it finishes"
    )
