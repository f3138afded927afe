"""Where a stretch of wall time goes in one thread: its Python stack sampled at a fixed interval.

    sampler = StackSampler(interval_s=0.005).start()
    ...                                # the code to attribute (start-up, say)
    summary = sampler.stop()           # {"samples", "seconds", "inclusive": [...], "leaf": [...]}
    sampler.write_collapsed(path)      # one line per distinct stack: "a;b;c count" (flame-graph input)

A thread of its own reads ``sys._current_frames()`` for the watched thread (the caller's, by
default); nothing is installed in the watched code, so the stretch runs at its usual speed apart
from the sampler holding the GIL briefly at each sample. Time spent in C code that holds the GIL
shows up on the Python frame that called it; time in C code that releases it (file reads, CUDA
synchronization) shows up there too, which is what a start-up breakdown needs.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import Any


def _frame_name(frame: FrameType) -> str:
    code = frame.f_code
    path = Path(code.co_filename)
    where = "/".join(path.parts[-2:]) if len(path.parts) > 1 else path.name
    return f"{where}:{code.co_name}"


def _stack(frame: FrameType | None, limit: int) -> tuple[str, ...]:
    names = []
    while frame is not None and len(names) < limit:
        names.append(_frame_name(frame))
        frame = frame.f_back
    return tuple(reversed(names))  # outermost first


class StackSampler:
    """Sample one thread's Python stack every ``interval_s`` seconds until :meth:`stop`."""

    def __init__(self, interval_s: float = 0.005, thread_id: int | None = None, depth: int = 80) -> None:
        self.interval_s = interval_s
        self.thread_id = thread_id if thread_id is not None else threading.get_ident()
        self.depth = depth
        self.stacks: Counter[tuple[str, ...]] = Counter()  # samples per stack
        self.weights: Counter[tuple[str, ...]] = Counter()  # wall seconds per stack
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = 0.0
        self.seconds = 0.0

    def start(self) -> StackSampler:
        self._t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._run, name="stack-sampler", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        # Each sample stands for the wall time since the one before: code that holds the GIL delays
        # the sampler's wake-up, and a count of samples alone would under-charge it.
        last = self._t0
        while not self._stop.wait(self.interval_s):
            frame = sys._current_frames().get(self.thread_id)
            now = time.perf_counter()
            if frame is not None:
                stack = _stack(frame, self.depth)
                self.stacks[stack] += 1
                self.weights[stack] += now - last
            last = now
            del frame

    def stop(self, top: int = 40) -> dict[str, Any]:
        """Stop sampling; the seconds per function, inclusive (anywhere on the stack) and as the leaf."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.seconds = time.perf_counter() - self._t0
        return self.summary(top)

    def summary(self, top: int = 40) -> dict[str, Any]:
        inclusive: Counter[str] = Counter()
        leaf: Counter[str] = Counter()
        for stack, w in self.weights.items():
            for name in set(stack):
                inclusive[name] += w
            if stack:
                leaf[stack[-1]] += w
        return {
            "samples": sum(self.stacks.values()),
            "seconds": round(self.seconds, 2),
            "inclusive": [[name, round(w, 2)] for name, w in inclusive.most_common(top)],
            "leaf": [[name, round(w, 2)] for name, w in leaf.most_common(top)],
        }

    def write_collapsed(self, path: str | Path) -> None:
        """The samples as collapsed stacks (``outer;inner count`` per line), the most frequent first."""
        lines = [";".join(stack) + f" {n}" for stack, n in self.stacks.most_common()]
        Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")
