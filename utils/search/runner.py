"""Running a study: trials in this process, or one worker process per GPU sharing the storage.

    from utils.search import SearchRequest, RunOptions, start_search
    outcome = start_search(SearchRequest(out=Path("studies/my_voice"), dataset=..., base_model=...),
                           RunOptions(trials=12))

:func:`start_search` plans a new study (or joins the same one in that folder); :func:`continue_search`
goes on with a study folder after a stop (Ctrl-C, ``kill -9``, a lost machine). Both run trials
until ``trials`` have finished (complete, pruned or failed; interrupted ones are run again), then
write best.json, the summary and the plots (:mod:`utils.search.report`).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from utils.errors import ConfigError
from utils.search import storage as st
from utils.search.report import SearchOutcome, write_reports
from utils.search.settings import SearchRequest, SearchSettings, StudyFolder, plan_search
from utils.search.trial import TrialOutcome, run_trial

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
STORAGE_ENV = "XTTS_SEARCH_STORAGE"  # a worker's storage URL (kept out of argv: it may hold a password)


@dataclass(frozen=True)
class RunOptions:
    """How to run a study now (not part of its definition)."""

    trials: int | None = None  # None: as many as the study was last run with
    workers: int = 1
    gpus: int = 0  # one worker per GPU (CUDA_VISIBLE_DEVICES), 0: no pinning
    storage: str | None = None
    keep_weights: bool = False
    progress: bool = True
    reports_each_trial: bool = False  # best.json, summary and plots after every trial (a page showing it live)

    def __post_init__(self) -> None:
        if self.trials is not None and int(self.trials) < 1:
            raise ConfigError(f"--trials must be a whole number >= 1 (got {self.trials})")
        if int(self.workers) < 1 or int(self.gpus) < 0:
            raise ConfigError("--workers must be >= 1 and --gpus >= 0")

    @property
    def processes(self) -> int:
        return max(int(self.workers), int(self.gpus))


def start_search(request: SearchRequest, options: RunOptions) -> SearchOutcome:
    """Plan a study in ``request.out`` (or join the same study there) and run it."""
    folder = StudyFolder(request.out)
    database = st.open_storage(options.storage, folder) if options.storage else None  # unreachable: at once
    settings = plan_search(request)  # refuses a folder of another dataset before writing there
    storage = database if database is not None else st.open_storage(None, folder)
    return _run(folder.claim(settings), folder, storage, options)


def continue_search(study_dir: str | Path, options: RunOptions) -> SearchOutcome:
    """Go on with the study in ``study_dir`` (its settings and data as when it started).

    Raises:
        ConfigError: the folder holds no study.
        DataError: its data changed since (the CSVs' digests differ).
    """
    from utils.search.settings import dataset_identity

    folder = StudyFolder(study_dir)
    settings = folder.read_settings()
    if settings is None:
        raise ConfigError(f"--continue {study_dir}: no study there (no search.json); start one with --out")
    now = dataset_identity(
        Path(settings.train_csv), Path(settings.eval_csv), settings.language, Path(settings.base_model)
    )
    folder.check_identity(now)
    return _run(settings, folder, st.open_storage(options.storage, folder), options)


def _run(settings: SearchSettings, folder: StudyFolder, storage: Any, options: RunOptions) -> SearchOutcome:
    study = st.open_study(storage, settings)
    options = _with_trial_count(options, study)
    st.recover_interrupted(study)
    table = settings.space.table_trial(settings.row_lr, settings.row_weight_decay)
    if table is not None:  # the table's own values are a trial too, so the search measures them
        study.enqueue_trial(table, user_attrs={"table_row": settings.table_row}, skip_if_exists=True)
    logger.info(
        "study %s in %s: %d trials of up to %d epochs, table row %s (%.3g h, lr %.3g); storage: %s",
        settings.name,
        folder.root,
        options.trials,
        settings.budget_epochs,
        settings.table_row,
        settings.dataset_hours,
        settings.row_lr,
        st.masked(options.storage),
    )
    bar = _TrialBar(options.trials, st.count_trials(study).done, enabled=options.progress)
    try:
        if options.processes > 1:
            run_workers(folder, options, bar)
        else:
            work(study, settings, folder, options, on_trial=_on_trial(bar, settings, folder, options))
    finally:
        bar.close()
        outcome = write_reports(study, settings, folder)
    return outcome


def _on_trial(
    bar: _TrialBar, settings: SearchSettings, folder: StudyFolder, options: RunOptions
) -> Callable[[Any, TrialOutcome, st.Counts], None]:
    """After each trial: the bar, and (``reports_each_trial``) the reports so far."""

    def done(study: Any, outcome: TrialOutcome, counts: st.Counts) -> None:
        bar.trial_done(study, outcome, counts)
        if options.reports_each_trial:
            write_reports(study, settings, folder)

    return done


def _with_trial_count(options: RunOptions, study: Any) -> RunOptions:
    """The trial count given now (kept in the study for a later --continue), or the kept one."""
    import dataclasses

    if options.trials is None:
        kept = study.user_attrs.get("trials")
        if kept is None:
            raise ConfigError("give --trials N: the study does not say how many trials it was started with")
        return dataclasses.replace(options, trials=int(kept))
    study.set_user_attr("trials", int(options.trials))
    return options


def work(
    study: Any,
    settings: SearchSettings,
    folder: StudyFolder,
    options: RunOptions,
    on_trial: Callable[[Any, TrialOutcome, st.Counts], None] | None = None,
) -> None:
    """Run trials in this process until the study has ``options.trials`` finished trials."""
    from optuna.trial import TrialState

    states = {"complete": TrialState.COMPLETE, "pruned": TrialState.PRUNED, "failed": TrialState.FAIL}
    while True:
        counts = st.count_trials(study)
        if counts.done + counts.running >= options.trials:
            return
        trial = study.ask()
        try:
            with st.Heartbeat(trial):
                outcome = run_trial(trial, settings, folder, keep_weights=options.keep_weights)
        except KeyboardInterrupt:
            st.requeue(study, trial.number, trial.params, f"{st.INTERRUPTED}: Ctrl-C during this trial; queued again")
            raise
        except Exception as exc:  # fatal for the search (unusable data): the trial says why, then it stops
            trial.set_user_attr("reason", f"{type(exc).__name__}: {exc}")
            study.tell(trial, state=TrialState.FAIL)
            raise
        _record(trial, outcome)
        if outcome.state == "complete":
            study.tell(trial, outcome.value)
        else:
            study.tell(trial, state=states[outcome.state])
        _log_trial(trial.number, outcome)
        if on_trial is not None:
            on_trial(study, outcome, st.count_trials(study))


def _record(trial: Any, outcome: TrialOutcome) -> None:
    trial.set_user_attr("reason", outcome.reason)
    trial.set_user_attr("evaluations", [[s, v] for s, v in outcome.evaluations])
    trial.set_user_attr("seconds", outcome.seconds)


def _log_trial(number: int, outcome: TrialOutcome) -> None:
    value = "n/a" if outcome.value is None else f"{outcome.value:.4f}"
    why = f" ({outcome.reason})" if outcome.reason else ""
    logger.info("trial %d %s: best eval loss %s in %.0f s%s", number, outcome.state, value, outcome.seconds, why)


def run_workers(folder: StudyFolder, options: RunOptions, bar: _TrialBar) -> None:
    """One worker process per GPU (or ``--workers N`` on this machine), all on the same storage.

    Each worker's output goes to ``STUDY_DIR/logs/worker_I.log``; this process shows the bar and
    writes the reports when they are done. Ctrl-C is passed on: each worker fails its running
    trial as interrupted (queued again) and stops.
    """
    logs = folder.root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    procs = [_start_worker(folder, options, i, logs) for i in range(options.processes)]
    logger.info("%d workers started (logs: %s)", len(procs), logs)
    storage = st.open_storage(options.storage, folder)
    settings = folder.read_settings()
    assert settings is not None
    study = st.open_study(storage, settings)
    try:
        while any(p.poll() is None for p in procs):
            bar.show(st.count_trials(study))
            time.sleep(2.0)
    except KeyboardInterrupt:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in procs:
            p.wait()
        raise
    bar.show(st.count_trials(study))
    for i, p in enumerate(procs):
        if p.returncode != 0:
            logger.warning("worker %d exited with code %d; see %s", i, p.returncode, logs / f"worker_{i}.log")


def _start_worker(folder: StudyFolder, options: RunOptions, index: int, logs: Path) -> subprocess.Popen:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    if options.storage:
        env[STORAGE_ENV] = options.storage
    if options.gpus:
        visible = [d for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
        env["CUDA_VISIBLE_DEVICES"] = visible[index % len(visible)] if visible else str(index)
    job = {
        "study_dir": str(folder.root),
        "trials": options.trials,
        "index": index,
        "keep_weights": options.keep_weights,
    }
    cmd = [sys.executable, "-m", "utils.search.worker", json.dumps(job)]
    with open(logs / f"worker_{index}.log", "ab") as log:
        return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=str(REPO_ROOT))


class _TrialBar:
    """One tqdm bar over the study's trials (stderr), with the best eval loss so far."""

    def __init__(self, total: int, done: int, *, enabled: bool) -> None:
        self._bar: Any = None
        if enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=min(done, total), desc="trials", file=sys.stderr, dynamic_ncols=True)

    def trial_done(self, study: Any, outcome: TrialOutcome, counts: st.Counts) -> None:
        self.show(counts, last=outcome.state)

    def show(self, counts: st.Counts, last: str | None = None) -> None:
        if self._bar is None:
            return
        self._bar.n = min(counts.done, self._bar.total)
        text = f"{counts.complete} complete, {counts.pruned} pruned, {counts.failed} failed"
        self._bar.set_postfix_str(text + (f", last {last}" if last else ""), refresh=False)
        self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
