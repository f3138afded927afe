"""Where the GPU waits: idle gaps between kernels in a torch profiler trace, by the host op around them.

The bench's profile reports a GPU busy share (kernel time over wall time); this says what the host
was doing while the GPU had nothing to run. Input: the ``traceEvents`` of a Chrome trace written by
``torch.profiler.profile(...).export_chrome_trace`` (Kineto's format: complete events, ``"ph": "X"``,
with ``ts`` and ``dur`` in microseconds and a ``cat`` such as ``kernel``, ``gpu_memcpy``,
``gpu_memset``, ``cpu_op``, ``user_annotation`` or ``cuda_runtime``).

Each gap is charged to the host ops that were open when the GPU's next work was launched: the
launch is found through the kernel's ``correlation`` id (its ``cuda_runtime`` / ``cuda_driver``
call, on whichever thread made it: autograd runs backward on a thread of its own), and the chain is
the ``cpu_op`` / ``user_annotation`` events of that thread covering the launch, outermost first.
Without a launch record, the step's busiest thread at the gap's end is used. A gap with no op open
("(Python between ops)") is time the step spent in plain Python: the trainer's loop, callbacks,
logging.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

GPU_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")
HOST_CATEGORIES = ("cpu_op", "user_annotation")
LAUNCH_CATEGORIES = ("cuda_runtime", "cuda_driver")
NO_OP = "(Python between ops)"


def _complete(events: Iterable[dict[str, Any]], categories: Sequence[str]) -> list[dict[str, Any]]:
    return [e for e in events if e.get("ph") == "X" and e.get("cat") in categories and "ts" in e and "dur" in e]


def gpu_idle_gaps(
    events: Sequence[dict[str, Any]], *, min_gap_us: float = 20.0, depth: int = 3, top: int = 12
) -> dict[str, Any]:
    """The GPU's idle time between its first and last kernel, and the host ops it is charged to.

    Args:
        events: a trace's ``traceEvents``.
        min_gap_us: shorter gaps (launch latency between back-to-back kernels) are counted in
            ``idle_us`` but not charged to an op.
        depth: the innermost ``depth`` names of each chain are kept (``a > b > c``).
        top: chains listed, the longest total first.

    Returns:
        ``{"span_us", "busy_us", "idle_us", "gaps", "charged_us", "by_host_op": [[chain, us, count], ...]}``.
    """
    gpu = sorted(_complete(events, GPU_CATEGORIES), key=lambda e: float(e["ts"]))
    if not gpu:
        return {"span_us": 0.0, "busy_us": 0.0, "idle_us": 0.0, "gaps": 0, "charged_us": 0.0, "by_host_op": []}
    by_thread: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for e in _complete(events, HOST_CATEGORIES):
        by_thread[(e.get("pid"), e.get("tid"))].append(e)
    for ops in by_thread.values():
        ops.sort(key=lambda e: (float(e["ts"]), -float(e["dur"])))  # outermost first at equal starts
    main = max(by_thread, key=lambda k: len(by_thread[k])) if by_thread else None  # the step's thread
    launches = {
        e["args"]["correlation"]: e
        for e in _complete(events, LAUNCH_CATEGORIES)
        if isinstance(e.get("args"), dict) and "correlation" in e["args"]
    }

    busy = 0.0
    gaps: list[tuple[float, float, dict[str, Any]]] = []  # (idle from, idle to, the work that ended it)
    end = float(gpu[0]["ts"])
    for e in gpu:
        start, stop = float(e["ts"]), float(e["ts"]) + float(e["dur"])
        if start > end:
            gaps.append((end, start, e))
        busy += max(0.0, stop - max(start, end))
        end = max(end, stop)
    span = end - float(gpu[0]["ts"])

    charged: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for g0, g1, work in gaps:
        if g1 - g0 < min_gap_us:
            continue
        launch = launches.get((work.get("args") or {}).get("correlation"))
        thread, at = ((launch.get("pid"), launch.get("tid")), float(launch["ts"])) if launch else (main, g1)
        chain = [
            e["name"] for e in by_thread.get(thread, []) if float(e["ts"]) <= at <= float(e["ts"]) + float(e["dur"])
        ]
        key = " > ".join(chain[-depth:]) if chain else NO_OP
        charged[key][0] += g1 - g0
        charged[key][1] += 1
    ranked = sorted(charged.items(), key=lambda kv: -kv[1][0])[:top]
    return {
        "span_us": round(span, 1),
        "busy_us": round(busy, 1),
        "idle_us": round(span - busy, 1),
        "gaps": len(gaps),
        "charged_us": round(sum(v[0] for v in charged.values()), 1),
        "by_host_op": [[k, round(v[0], 1), int(v[1])] for k, v in ranked],
    }
