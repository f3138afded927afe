"""Where a study lives, and what happens to trials a stopped search left behind.

- One machine (default): Optuna's journal file ``STUDY_DIR/study.journal``. Worker processes on
  the same machine share it (file locks); an append-only log keeps every finished trial through
  a ``kill -9``.
- Several machines: ``--storage postgresql://USER:PASSWORD@HOST/DB`` (or ``mysql://``,
  ``sqlite:///FILE``), Optuna's RDB storage; every machine runs the same command.

A trial left RUNNING by a search that was killed is marked failed with the reason and its
values are queued again, so the study loses no finished trial and repeats the lost one. A trial
counts as left behind when the worker that ran it is gone: on this machine its process no longer
exists; on another machine its heartbeat (written every 30 s) is older than 5 minutes.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

from utils.errors import ConfigError
from utils.search.settings import SearchSettings, StudyFolder

logger = logging.getLogger(__name__)

JOURNAL = "study.journal"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0
STARTUP_TRIALS = 4
INTERRUPTED = "interrupted"  # a failed trial whose reason starts so is queued again, not counted


def worker_id() -> str:
    """``host:pid`` of this process, recorded on each trial it runs."""
    return f"{socket.gethostname()}:{os.getpid()}"


def masked(url: str | None) -> str:
    """A storage URL with its password hidden (for logs and search.json)."""
    return "journal file in the study folder" if url is None else re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def open_storage(url: str | None, folder: StudyFolder) -> Any:
    """The study's storage: the journal file in ``folder``, or the database at ``url``.

    Raises:
        ConfigError: the URL's database cannot be reached or its driver is missing (one line).
    """
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    if url is None:
        folder.root.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(folder.root / JOURNAL)))
    if "://" not in url:
        raise ConfigError(
            f"--storage {masked(url)}: not a database URL; give postgresql://USER:PASSWORD@HOST/DB, "
            "mysql://... or sqlite:///FILE (or leave --storage out: the study folder keeps a journal file)"
        )
    engine: dict[str, Any] = {}
    if url.startswith("postgresql"):
        engine["connect_args"] = {"connect_timeout": 10}  # an unreachable host: one line after 10 s, not minutes
    import sqlalchemy.exc

    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine)
    except ImportError:
        raise ConfigError(
            f"--storage {masked(url)}: the database driver is not installed (PostgreSQL: "
            "pip install psycopg2-binary; MySQL: pip install PyMySQL)"
        ) from None
    except (sqlalchemy.exc.SQLAlchemyError, ValueError) as exc:
        reason = str(exc).splitlines()[0][:200]
        raise ConfigError(
            f"--storage {masked(url)}: cannot reach it ({reason}); check the host, port, database name and password"
        ) from None


def open_study(storage: Any, settings: SearchSettings, *, worker_index: int = 0) -> Any:
    """The study in ``storage`` (created if new): TPE sampler, the settings' pruner, minimising.

    The sampler's seed depends on the study's trial count and the worker, so a resumed search
    or a second worker does not draw the same values again.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the search logs each trial itself
    study = optuna.create_study(storage=storage, study_name=settings.name, direction="minimize", load_if_exists=True)
    seed = settings.seed + 1000 * worker_index + len(study.trials)
    # random draws for the first few trials (TPE's default of 10 would leave a 12-trial study random)
    study.sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=STARTUP_TRIALS)
    study.pruner = make_pruner(settings.pruner)
    return study


def make_pruner(name: str) -> Any:
    """Successive halving (default), Hyperband or none, over the evaluations of each trial."""
    import optuna

    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, reduction_factor=3)
    return optuna.pruners.NopPruner()


@dataclass(frozen=True)
class Counts:
    """Trials of a study by state; ``done`` counts toward ``--trials`` (interrupted ones do not)."""

    complete: int = 0
    pruned: int = 0
    failed: int = 0
    interrupted: int = 0
    running: int = 0
    waiting: int = 0

    @property
    def done(self) -> int:
        return self.complete + self.pruned + self.failed


def count_trials(study: Any) -> Counts:
    from optuna.trial import TrialState

    reasons = study.user_attrs
    n = {"complete": 0, "pruned": 0, "failed": 0, "interrupted": 0, "running": 0, "waiting": 0}
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.FAIL:
            reason = str(t.user_attrs.get("reason") or reasons.get(f"reason_{t.number}") or "")
            n["interrupted" if reason.startswith(INTERRUPTED) else "failed"] += 1
        else:
            key = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.RUNNING: "running"}
            n[key.get(t.state, "waiting")] += 1
    return Counts(**n)


def recover_interrupted(study: Any) -> list[int]:
    """Mark trials whose worker is gone as failed (reason: interrupted) and queue their values again.

    Returns:
        The numbers of the trials marked.
    """
    from optuna.trial import TrialState

    marked = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        beat = float(t.user_attrs.get("heartbeat") or (t.datetime_start.timestamp() if t.datetime_start else 0.0))
        if not _worker_gone(str(t.user_attrs.get("worker") or ""), beat):
            continue
        requeue(
            study,
            t.number,
            t.params,
            f"{INTERRUPTED}: the search stopped during this trial; its values were queued again",
        )
        marked.append(t.number)
    if marked:
        logger.info("trials %s were left running by a stopped search: marked failed and queued again", marked)
    return marked


def requeue(study: Any, number: int, params: dict[str, Any], reason: str) -> None:
    """Fail trial ``number`` with ``reason`` (kept in the study's attributes) and queue its values again."""
    import optuna
    from optuna.trial import TrialState

    study.set_user_attr(f"reason_{number}", reason)
    try:
        study.tell(number, state=TrialState.FAIL)
    except (optuna.exceptions.UpdateFinishedTrialError, ValueError, RuntimeError):
        return  # another process finished or failed it first
    study.enqueue_trial(dict(params), user_attrs={"requeued_from": number})


def _worker_gone(worker: str, heartbeat: float) -> bool:
    host, _, pid = worker.rpartition(":")
    if host == socket.gethostname() and pid.isdigit():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, another user's
            return False
        return False  # alive: its heartbeat may lag behind a long step
    return time.time() - heartbeat > STALE_AFTER_S


class Heartbeat:
    """Writes the time into a running trial every :data:`HEARTBEAT_S` seconds (a daemon thread)."""

    def __init__(self, trial: Any) -> None:
        self.trial = trial
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{trial.number}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self.trial.set_user_attr("worker", worker_id())
        self.trial.set_user_attr("heartbeat", time.time())
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self.trial.set_user_attr("heartbeat", time.time())
            except Exception as exc:  # a storage hiccup must not end the trial; the next beat retries
                logger.debug("heartbeat of trial %d not written: %s", self.trial.number, exc)
