"""The study's storage and folder without training: interrupted trials, the subset, URLs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from utils.search import storage as st
from utils.search.settings import StudyFolder, _subset_csv


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_trials_of_gone_workers_are_failed_and_queued_again(tmp_path: Path) -> None:
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=st.open_storage(None, StudyFolder(tmp_path)), study_name="s")
    here = socket.gethostname()
    workers = {
        "dead process here": (f"{here}:{_dead_pid()}", time.time()),
        "this process": (f"{here}:{os.getpid()}", time.time() - 3600),  # alive: an old heartbeat does not matter
        "silent machine": ("elsewhere:1", time.time() - st.STALE_AFTER_S - 60),
        "beating machine": ("elsewhere:2", time.time()),
    }
    numbers = {}
    for name, (worker, beat) in workers.items():
        trial = study.ask()
        trial.suggest_float("lr", 1e-6, 1e-4, log=True)
        trial.set_user_attr("worker", worker)
        trial.set_user_attr("heartbeat", beat)
        numbers[name] = trial.number
    marked = st.recover_interrupted(study)
    assert sorted(marked) == sorted([numbers["dead process here"], numbers["silent machine"]])
    trials = study.get_trials()
    for name in ("dead process here", "silent machine"):
        assert trials[numbers[name]].state == TrialState.FAIL
        assert study.user_attrs[f"reason_{numbers[name]}"].startswith(st.INTERRUPTED)
    for name in ("this process", "beating machine"):
        assert trials[numbers[name]].state == TrialState.RUNNING
    counts = st.count_trials(study)
    assert (counts.interrupted, counts.running, counts.waiting, counts.done) == (2, 2, 2, 0)
    queued = study.ask()  # the queued values come back first
    assert queued.user_attrs["requeued_from"] == numbers["dead process here"]
    assert queued.suggest_float("lr", 1e-6, 1e-4, log=True) == trials[numbers["dead process here"]].params["lr"]


def test_subset_links_a_seeded_share_of_the_clips_beside_its_csv(demo_copy: Path, tmp_path: Path) -> None:
    from utils.data.csv_io import read_coqui_csv

    train = demo_copy / "metadata_train.csv"
    path = _subset_csv(train, 0.5, 0, tmp_path / "data")
    rows = list(read_coqui_csv(path))
    assert len(rows) == 5 and path.parent == tmp_path / "data"
    for row in rows:  # inside the subset's folder (the preflight's rule), the same file as the original
        assert row.path.is_relative_to(path.parent.resolve())
        assert row.path.stat().st_ino == (demo_copy / row.audio_file).stat().st_ino
    assert _subset_csv(train, 0.5, 0, tmp_path / "again").read_text() == path.read_text()
    other = [r.audio_file for r in read_coqui_csv(_subset_csv(train, 0.5, 1, tmp_path / "seed1"))]
    assert other != [r.audio_file for r in rows]
    assert _subset_csv(train, 1.0, 0, tmp_path / "whole") == train


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://search:s3cret@db:5432/studies", "postgresql://search:***@db:5432/studies"),
        ("postgresql://search@db/studies", "postgresql://search@db/studies"),
        (None, "journal file in the study folder"),
    ],
)
def test_storage_urls_are_shown_without_their_password(url: str | None, shown: str) -> None:
    assert st.masked(url) == shown
