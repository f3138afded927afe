"""One event interface for every front end: the log, the progress bar, a JSONL file, a web page.

A :class:`~utils.finetune.FineTune` emits :class:`Event` objects to its :class:`EventBus`;
front ends subscribe a callable ``fn(event)``. Nobody parses log lines. Kinds:

- ``stage``: a recipe step started or ended (``name``, ``status`` "started" | "done"; "done" has ``seconds``).
- ``run_dir``: the run folder exists (``path``); metrics.jsonl, events.jsonl, checkpoints land there.
- ``progress``: one trainer step (``stage``: "dvae", "gpt" or "decoder", ``step``,
  ``steps_in_epoch``, ``epoch``, ``epochs``, ``optimizer_step``, ``loss``, ``lr``, ``eta_s``).
- ``evaluation``: one evaluation record of a stage (``stage``), as written to its metrics.jsonl.
- ``health``: one health event of a stage (``stage``), as written to its events.jsonl.
- ``finished``: training ended (``run_dir``, ``stop_reason``, ``total_steps``, ``optimizer_steps``
  of the GPT stage; ``stages``: every stage's record, as in stages.json).
- ``error``: the run stopped on an error (``message``, ``type``).

A subscriber may end a run normally by raising :class:`StopRun` from a ``progress`` or
``evaluation`` event (a hyperparameter search prunes a trial this way); the bus passes it on.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


class EventKind(str, Enum):
    STAGE = "stage"
    RUN_DIR = "run_dir"
    PROGRESS = "progress"
    EVALUATION = "evaluation"
    HEALTH = "health"
    FINISHED = "finished"
    ERROR = "error"


@dataclass(frozen=True)
class Event:
    """One thing that happened in a run."""

    kind: EventKind
    data: Mapping[str, Any] = field(default_factory=dict)
    time: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind.value, "time": round(self.time, 3), **self.data}

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> Event:
        data = {k: v for k, v in record.items() if k not in ("kind", "time")}
        return cls(EventKind(record["kind"]), data, float(record.get("time", 0.0)))


Subscriber = Callable[[Event], None]


class StopRun(Exception):
    """Raised by a subscriber to end training normally, as early stopping does.

    The event bus passes it on instead of logging and skipping it; the trainer catches it in its
    loop, writes its final checkpoint and returns (``utils.training.health.StopTraining`` is this class).
    """


class EventBus:
    """Delivers each emitted event to every subscriber, in subscription order.

    A failing subscriber is logged and skipped: a front end must never stop training by accident
    (it may on purpose, with :class:`StopRun`).
    """

    def __init__(self, subscribers: list[Subscriber] | None = None) -> None:
        self._subscribers: list[Subscriber] = list(subscribers or [])
        self._lock = threading.Lock()

    def subscribe(self, fn: Subscriber) -> Callable[[], None]:
        """Add ``fn``; returns a function that removes it again."""
        with self._lock:
            self._subscribers.append(fn)
        return lambda: self.unsubscribe(fn)

    def unsubscribe(self, fn: Subscriber) -> None:
        with self._lock:
            if fn in self._subscribers:
                self._subscribers.remove(fn)

    def emit(self, kind: EventKind | str, **data: Any) -> Event:
        event = Event(EventKind(kind), data)
        with self._lock:
            subscribers = list(self._subscribers)
        for fn in subscribers:
            try:
                fn(event)
            except StopRun:
                raise
            except Exception as exc:  # a subscriber's bug must not end the run
                logger.warning("event subscriber %r failed on %s: %s", fn, event.kind.value, exc)
        return event


class JsonlWriter:
    """Subscriber: appends each event as one JSON line (for a front end in another process)."""

    def __init__(self, path: str | Path, kinds: set[EventKind] | None = None) -> None:
        self.path = Path(path)
        self.kinds = kinds
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, event: Event) -> None:
        if self.kinds is not None and event.kind not in self.kinds:
            return
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(event.to_dict(), default=str) + "\n")


def read_events(path: str | Path) -> list[Event]:
    """The events a :class:`JsonlWriter` wrote so far (a line being written is skipped)."""
    events: list[Event] = []
    p = Path(path)
    if not p.is_file():
        return events
    for line in p.read_text(encoding="utf-8").splitlines():
        try:
            events.append(Event.from_dict(json.loads(line)))
        except (ValueError, KeyError):
            continue
    return events


class LogSubscriber:
    """Subscriber: stages, the run folder and the end of a run to the log.

    Evaluations and health events are logged where they happen (the trainer, the monitor); an
    error is reported once, by the front end that shows it (the command line's one line).
    """

    def __call__(self, event: Event) -> None:
        if event.kind is EventKind.STAGE and event.data.get("status") == "started":
            logger.debug("step %s", event.data.get("name"))
        elif event.kind is EventKind.RUN_DIR:
            logger.info("run folder: %s", event.data.get("path"))
        elif event.kind is EventKind.FINISHED:
            logger.debug("finished: %s", event.data.get("run_dir"))


class ProgressBar:
    """Subscriber: one tqdm bar per epoch on stderr with loss, LR and the run's ETA."""

    def __init__(self) -> None:
        self._bar: Any = None
        self._stage: str | None = None

    def __call__(self, event: Event) -> None:
        if event.kind is EventKind.PROGRESS:
            self._update(event.data)
        elif event.kind in (EventKind.FINISHED, EventKind.ERROR):
            self.close()

    def _update(self, d: Mapping[str, Any]) -> None:
        from tqdm import tqdm

        step, total = int(d["step"]), int(d["steps_in_epoch"])
        # a new bar per epoch, and when the epoch's length or the stage changes (the micro-batch halved on OOM)
        if self._bar is None or step == 0 or self._bar.total != total or d.get("stage") != self._stage:
            self._stage = d.get("stage")
            self.close()
            stage = f"{d['stage']} " if d.get("stage") not in (None, "gpt") else ""  # the GPT's bar reads as before
            self._bar = tqdm(
                total=total,
                desc=f"{stage}epoch {d['epoch']}/{d['epochs']}",
                file=sys.stderr,
                dynamic_ncols=True,
                leave=True,
                initial=step,
            )
        loss = d.get("loss")
        self._bar.set_postfix_str(
            f"loss {'n/a' if loss is None else f'{loss:.4f}'}, lr {float(d.get('lr') or 0.0):.3g}, "
            f"run ETA {hms(float(d.get('eta_s') or 0.0))}",
            refresh=False,
        )
        self._bar.update(1)
        if step + 1 >= total:
            self.close()

    @classmethod
    def as_hook(cls) -> _ProgressHook:
        """A bar fed directly with the trainer's progress records (no event bus)."""
        return _ProgressHook(cls())

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def hms(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class _ProgressHook:
    def __init__(self, bar: ProgressBar) -> None:
        self.bar = bar

    def __call__(self, info: Mapping[str, Any]) -> None:
        self.bar(Event(EventKind.PROGRESS, info))

    def close(self) -> None:
        self.bar.close()
