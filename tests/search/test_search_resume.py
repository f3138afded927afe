"""A killed search goes on without losing a finished trial; worker processes share one study."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.search.conftest import REPO_ROOT, TINY, run_search


def _load(out: Path):
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    storage = JournalStorage(JournalFileBackend(str(out / "study.journal")))
    return optuna.load_study(study_name=out.name, storage=storage)


def _wait_for_second_trial(out: Path, proc: subprocess.Popen, timeout: float = 600) -> None:
    """Until one trial has finished and the next one is training (its run folder exists)."""
    from optuna.trial import TrialState

    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, "the search ended before it could be killed"
        if (out / "study.journal").is_file():
            try:
                trials = _load(out).get_trials(deepcopy=False)
            except KeyError:  # the study is not created yet
                trials = []
            finished = [t for t in trials if t.state.is_finished()]
            running = [t for t in trials if t.state == TrialState.RUNNING and "run_dir" in t.user_attrs]
            if finished and running:
                return
        time.sleep(1.0)
    raise AssertionError("no trial finished in time")


def test_kill_9_then_continue_keeps_every_finished_trial(tmp_path: Path, search_data: Path, tiny_base: Path) -> None:
    from optuna.trial import TrialState

    out = tmp_path / "killed"
    cmd = [sys.executable, str(REPO_ROOT / "scripts" / "search_hparams.py"), "--dataset", str(search_data)]
    cmd += ["--base-model", str(tiny_base), "--trials", "2", "--out", str(out), "--budget-epochs", "1"]
    cmd += ["--pruner", "none", "--no-progress", *TINY]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    with open(tmp_path / "search.log", "wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=str(REPO_ROOT))
        try:
            _wait_for_second_trial(out, proc)
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    before = {t.number: t for t in _load(out).get_trials() if t.state.is_finished()}
    (killed,) = [t for t in _load(out).get_trials() if t.state == TrialState.RUNNING]

    assert run_search(["--continue", str(out), "--no-progress"]) == 0  # the trial count comes from the study

    study = _load(out)
    trials = {t.number: t for t in study.get_trials()}
    for number, t in before.items():  # every finished trial kept as it was
        assert trials[number].state == t.state and trials[number].value == t.value and trials[number].params == t.params
    assert trials[killed.number].state == TrialState.FAIL
    assert study.user_attrs[f"reason_{killed.number}"].startswith("interrupted: the search stopped during this trial")
    (rerun,) = [t for t in trials.values() if t.user_attrs.get("requeued_from") == killed.number]
    assert rerun.params == killed.params and rerun.state == TrialState.COMPLETE
    finished = [t for t in trials.values() if t.state == TrialState.COMPLETE]
    assert len(finished) == 2 and (out / "best.json").is_file()
    assert "interrupted" in (out / "summary.md").read_text(encoding="utf-8")


@pytest.mark.slow  # two more processes that each import torch and coqui-tts: about a minute on 2 CPU cores
def test_two_worker_processes_share_the_study(tmp_path: Path, search_data: Path, tiny_base: Path) -> None:
    from optuna.trial import TrialState

    out = tmp_path / "workers"
    argv = ["--dataset", str(search_data), "--base-model", str(tiny_base), "--trials", "2", "--out", str(out)]
    argv += ["--budget-epochs", "1", "--pruner", "none", "--workers", "2", "--no-progress", *TINY]
    assert run_search(argv) == 0
    started = []
    for i in (0, 1):  # both joined the one study
        log = (out / "logs" / f"worker_{i}.log").read_text(encoding="utf-8")
        (line,) = [ln for ln in log.splitlines() if f"worker {i} (" in ln and "on study workers" in ln]
        started.append(line.split("(")[1].split(")")[0])
    trials = _load(out).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert {t.user_attrs["worker"] for t in trials} <= set(started)  # run by the workers, not this process
    assert (out / "best.json").is_file() and (out / "eval_curves.png").is_file()
