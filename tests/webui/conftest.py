"""Fixtures for the web UI tests: a real server process on a free loopback port, a real Chromium."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``scripts/webui.py`` in a child process; ``restart()`` stops and starts it on the same folders."""

    def __init__(self, root: Path, extra_args: tuple[str, ...] = ()) -> None:
        self.extra_args = list(extra_args)
        self.data, self.runs = root / "data", root / "runs"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log = root / "server.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 90.0) -> None:
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
        cmd = [
            sys.executable,
            str(REPO_ROOT / "scripts" / "webui.py"),
            "--port",
            str(self.port),
            "--data",
            str(self.data),
            "--runs",
            str(self.runs),
            *self.extra_args,
        ]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, cwd=str(REPO_ROOT), stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the web UI exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                time.sleep(0.5)
        raise RuntimeError(f"the web UI did not answer within {timeout} s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    # scripts/make_screenshots.py names a workspace like a user's: the page shows its folders' paths
    srv = Server(Path(os.environ.get("WEBUI_WORKSPACE") or tmp_path))
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()
        _stop_workers(srv.runs)


def _stop_workers(runs: Path) -> None:
    """End a training child the test left running (it has its own session by design)."""
    import signal

    from utils.webui.jobs import JobManager

    jobs = JobManager(runs)
    job = jobs.active()
    if job is not None and job.pid:
        os.kill(job.pid, signal.SIGTERM)
        jobs.wait(job, 60)


@pytest.fixture
def browser() -> Iterator[object]:
    if not CHROMIUM.is_file():
        pytest.skip("Chromium is not installed (/usr/bin/chromium); scripts/setup_env.sh installs it")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()
