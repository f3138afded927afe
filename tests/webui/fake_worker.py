"""A stand-in for ``utils.webui.worker`` in the job manager's tests: a process, no training.

``python -m tests.webui.fake_worker JOB/spec.json`` writes ``running`` (with the spec's
``run_dir``), then sleeps ``seconds``; SIGINT or SIGTERM end it as ``stopped``. With
``ignore_stop`` it ignores both, as a worker stuck where a signal cannot reach Python would.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from utils.fs import write_json_atomic
from utils.webui.run_view import read_json


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    spec_path = Path(sys.argv[1])
    spec = read_json(spec_path)
    stop = signal.SIG_IGN if spec.get("ignore_stop") else _interrupt
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    status = {"state": "running", "pid": os.getpid(), "started": time.time(), "run_dir": spec.get("run_dir")}
    write_json_atomic(spec_path.parent / "status.json", status)
    try:
        time.sleep(float(spec.get("seconds", 60)))
    except KeyboardInterrupt:
        write_json_atomic(spec_path.parent / "status.json", dict(status, state="stopped", ended=time.time()))
        return 0
    write_json_atomic(spec_path.parent / "status.json", dict(status, state="finished", ended=time.time()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
