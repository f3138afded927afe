"""Fixtures for the web UI tests: a real server process on a free loopback port (started directly,
or from a shell script with ``nohup ... &`` as a service would be), a real Chromium."""

from __future__ import annotations

import os
import shlex
import signal
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

    def __init__(self, root: Path, extra_args: tuple[str, ...] = (), env: dict[str, str] | None = None) -> None:
        self.root = root
        self.extra_args = list(extra_args)
        self.env = dict(env or {})
        self.data, self.runs = root / "data", root / "runs"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log = root / "server.log"
        self.proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def command(self) -> list[str]:
        return [
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

    def environ(self) -> dict[str, str]:
        return dict(os.environ, PYTHONPATH=str(REPO_ROOT), **self.env)

    def start(self, timeout: float = 90.0) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(), cwd=str(REPO_ROOT), stdout=log, stderr=subprocess.STDOUT, env=self.environ()
            )
        self.wait_up(timeout)

    def exited(self) -> bool:
        assert self.proc is not None
        return self.proc.poll() is not None

    def wait_up(self, timeout: float) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.exited():
                raise RuntimeError(f"the web UI exited:\n{self.log.read_text()[-3000:]}")
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


class BackgroundServer(Server):
    """Started the way a shell script starts a service, ``nohup python scripts/webui.py ... &``: a
    non-interactive shell starts background commands with SIGINT ignored, and the server inherits
    that. It is not this process's child; ``stop()`` ends it by its pid."""

    def start(self, timeout: float = 90.0) -> None:
        script, pid_file = self.root / "start_webui.sh", self.root / "webui.pid"
        cmd = " ".join(shlex.quote(a) for a in self.command())
        script.write_text(
            f"#!/bin/sh\ncd {shlex.quote(str(REPO_ROOT))}\n"
            f"nohup {cmd} >> {shlex.quote(str(self.log))} 2>&1 &\necho $! > {shlex.quote(str(pid_file))}\n"
        )
        subprocess.run(["sh", str(script)], check=True, env=self.environ(), timeout=30)
        self._pid = int(pid_file.read_text())
        self.wait_up(timeout)

    @property
    def pid(self) -> int:
        return self._pid

    def exited(self) -> bool:
        return process_state(self._pid) in (None, "Z")

    def stop(self) -> None:
        if not self.exited():
            os.kill(self._pid, signal.SIGTERM)
            deadline = time.time() + 20
            while not self.exited() and time.time() < deadline:
                time.sleep(0.2)
            if not self.exited():
                os.kill(self._pid, signal.SIGKILL)


def process_state(pid: int) -> str | None:
    """The state letter of ``pid`` in /proc (R, S, Z ...), None when there is no such process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def zombie_children(pid: int) -> list[int]:
    """Child processes of ``pid`` that ended and were never reaped (state Z)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] == "Z" and int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    # scripts/make_screenshots.py names a workspace like a user's: the page shows its folders' paths
    srv = Server(Path(os.environ.get("WEBUI_WORKSPACE") or tmp_path))
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()
        stop_workers(srv.runs)


def stop_workers(runs: Path) -> None:
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
