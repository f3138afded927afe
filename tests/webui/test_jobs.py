"""The job manager without training: one start of many at the same moment wins, a stop that is
not answered is said so and can be made hard, finished workers are reaped, and the status line
counts steps one way. The worker is ``tests/webui/fake_worker.py`` (a process that only sleeps)."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from tests.webui.conftest import zombie_children
from utils.errors import ConfigError
from utils.webui import jobs as jobs_mod
from utils.webui.app import Screens
from utils.webui.engine import Engine
from utils.webui.jobs import JobManager


@pytest.fixture
def fake_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jobs_mod, "WORKER_MODULE", "tests.webui.fake_worker")


def _wait_for(cond, timeout: float = 20.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_two_starts_at_the_same_moment_one_runs(tmp_path: Path, fake_worker: None) -> None:
    """Eight starts released together: exactly one process starts, the others get the reason."""
    manager = JobManager(tmp_path / "runs")
    gate = threading.Barrier(8)
    started, refused = [], []

    def start() -> None:
        gate.wait()
        try:
            started.append(manager.start({"mode": "new", "seconds": 30}))
        except ConfigError as exc:
            refused.append(str(exc))

    threads = [threading.Thread(target=start) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert len(started) == 1 and len(refused) == 7, (started, refused)
        assert all("one training at a time" in r for r in refused), refused
        assert len(list(manager.jobs_root.iterdir())) == 1  # the refused starts left no job behind
        # another server on the same runs folder is refused too, while the worker runs
        with pytest.raises(ConfigError, match="already running"):
            JobManager(tmp_path / "runs").start({"mode": "new"})
        # the lock dies with the process, however it ends: a kill -9 frees the slot
        os.kill(started[0].pid, 9)
        _wait_for(lambda: not manager.alive(started[0]))
        again = manager.start({"mode": "new", "seconds": 30})
        _wait_for(lambda: manager.load(again.folder).status.get("state") == "running")
        manager.stop()
        assert manager.wait(again, 20).state == "stopped"
    finally:
        for job in manager.jobs():
            if manager.alive(job):
                os.kill(job.pid, 9)


def test_stop_not_answered_is_said_and_a_hard_stop_ends_it(tmp_path: Path, fake_worker: None) -> None:
    """A worker that ignores SIGINT and SIGTERM: the page says it did not stop, Stop again kills it,
    the job names the checkpoint to continue from, and no zombie of this process is left."""
    engine = Engine(tmp_path / "data", tmp_path / "runs", cache_dir=tmp_path / "cache")
    engine.jobs.stop_grace_s, engine.jobs.hard_stop_wait_s = 1.0, 0.5
    screens = Screens(engine)
    run = engine.runs_root / "ft_120000"
    run.mkdir(parents=True)
    for step in (3, 6):
        (run / f"checkpoint_{step}.pth").write_bytes(b"")
    job = engine.jobs.start({"mode": "new", "ignore_stop": True, "run_dir": str(run)})
    try:
        _wait_for(lambda: engine.jobs.load(job.folder).status.get("state") == "running")
        assert "stop requested (job" in screens.stop()
        assert "training: stopping" in screens.refresh_train("")[0]
        assert "stop already requested" in screens.stop()  # pressed again at once: nothing harsher yet
        time.sleep(1.2)
        status = screens.refresh_train("")[0]
        assert "training: stopping" in status and "not stopped 1 s after Stop" in status, status
        assert "Press Stop again for a hard stop" in status and "(checkpoint_6.pth)" in status
        assert "hard stop" in screens.stop()
        ended = engine.jobs.wait(job, 30)
    finally:
        if engine.jobs.alive(job):
            os.kill(job.pid, 9)
    assert ended.state == "killed", ended.status
    assert ended.status["error"] == "ended by a hard stop; continue the run from checkpoint_6.pth"
    _wait_for(lambda: job.pid not in zombie_children(os.getpid()), timeout=5)


def test_finished_worker_is_reaped(tmp_path: Path, fake_worker: None) -> None:
    """A worker that ends on its own is no zombie of the server, without anyone looking at it."""
    manager = JobManager(tmp_path / "runs")
    job = manager.start({"mode": "new", "seconds": 0.3})
    time.sleep(2.0)  # nobody polls the job meanwhile (no page open)
    assert job.pid not in zombie_children(os.getpid())
    assert manager.load(job.folder).state == "finished"


def test_status_line_counts_steps_of_the_run(tmp_path: Path) -> None:
    """The live line shows the run's steps done of its planned steps, not a step inside the epoch."""
    engine = Engine(tmp_path / "data", tmp_path / "runs", cache_dir=tmp_path / "cache")
    folder = engine.runs_root / ".webui" / "jobs" / "20261202-120000-abcd"
    folder.mkdir(parents=True)
    (folder / "spec.json").write_text(json.dumps({"mode": "new", "pid": os.getpid()}))
    (folder / "status.json").write_text(json.dumps({"state": "running", "pid": os.getpid()}))
    engine.jobs._children[os.getpid()] = _Running()
    # epoch 23 of 60 with 115 steps an epoch: the 5th step of epoch 23 is the run's step 2,535
    progress = {"step": 4, "steps_in_epoch": 115, "epoch": 23, "epochs": 60, "total_steps": 2535, "loss": 2.5}
    (folder / "events.jsonl").write_text(json.dumps({"kind": "progress", "time": 1.0, **progress}) + "\n")
    status = Screens(engine).refresh_train("")[0]
    assert "trainer step 2,535 of 6,900 (epoch 23 of 60), loss 2.5" in status, status


class _Running:
    """A child that is still running (the test's own process stands in for the worker)."""

    def poll(self) -> None:
        return None
