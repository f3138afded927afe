""" "Search first" from the Train screen's handlers: a study as the web UI's one job, then the training
with the study's best.json as its recipe layer; Stop during the study; continue it.

Real child processes on the tiny base and the demo data; trials of one epoch (5 optimizer steps).
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path

import pytest

from utils.webui.app import Screens, _rows
from utils.webui.engine import TINY_BASE, Engine
from utils.webui.search import read_study
from utils.webui.search_screen import SearchScreens

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def screens(tmp_path: Path) -> SearchScreens:
    engine = Engine(tmp_path / "data", tmp_path / "runs", cache_dir=REPO_ROOT / ".cache")
    s = Screens(engine)
    s.use_demo("en")
    yield SearchScreens(s)
    if engine.jobs.active() is not None:  # a failed test must not leave a search running
        job = engine.jobs.active()
        os.kill(job.pid, 15)
        engine.jobs.wait(job, 120)


def _table(ss: SearchScreens, edits: dict[str, str]) -> list[list[str]]:
    rows = _rows(ss.screens.resolve("demo_en", TINY_BASE, ""))
    return [[n, edits.get(n, v), s] for n, v, s in rows]


def _start(ss: SearchScreens, trials: int, budget: int) -> Path:
    table = _table(ss, {"epochs": "1"})  # the training after the study: 1 epoch
    message, _, _ = ss.start("demo_en", TINY_BASE, "en", "", "srch", table, ["gpt"], True, trials, budget)
    assert "search started" in message and f"{trials} trials of up to {budget} epoch(s)" in message, message
    job = ss.engine.current_job()
    assert job.spec["mode"] == "search"
    return Path(job.spec["search"]["study_dir"])


def _lock_free(engine: Engine) -> bool:
    fd = os.open(engine.jobs.lock_path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


@pytest.mark.slow  # a 2-trial study and a 1-epoch training on the tiny base: about 2 minutes on 2 busy cores
def test_search_first_then_train_with_best_json(screens: SearchScreens) -> None:
    engine = screens.engine
    study = _start(screens, trials=2, budget=1)
    assert study.parent == engine.runs_root / "studies" and study.name.startswith("srch_")
    job = engine.jobs.wait(engine.current_job(), 900)
    assert job.state == "finished", (job.status, job.log_tail())
    status, table, plots = screens.refresh("")
    rows = table.values.tolist()
    assert len(rows) == 2 and [r[0] for r in rows] == [0, 1], rows
    assert {r[1] for r in rows} <= {"complete", "pruned"} and rows[0][1] == "complete", rows
    headers = list(table.columns)
    assert headers[:3] == ["trial", "state", "reason"] and headers[-2:] == ["best eval loss", "epochs run"]
    assert "lr" in headers and all(float(r[headers.index("epochs run")]) == 1.0 for r in rows if r[1] == "complete")
    assert "2 of 2 trials done" in status and "best so far: trial" in status, status
    assert sorted(Path(p).name for p, _ in plots) == sorted(
        ["history.png", "eval_curves.png", "lr_vs_eval_loss.png", "importance.png"]
    )
    best = json.loads((study / "best.json").read_text())
    source = best["values"]["lr"]["source"]
    assert source == f"search {study.name} trial {best['about']['trial']}, eval loss {best['about']['eval_loss']:.4f}"
    # the training after the study: best.json is its recipe layer, the page's edit (1 epoch) wins over it
    config = json.loads((job.run_dir / "config.json").read_text())
    sources = config["toolkit"]["hparams"]["sources"]
    assert sources["lr"] == source and config["toolkit"]["hparams"]["lr"] == best["values"]["lr"]["value"]
    assert sources["epochs"] == "cli" and config["epochs"] == 1
    assert job.run_dir.parent == engine.runs_root and job.run_dir.name.startswith("srch_")
    lr_row = next(r for r in screens.screens.refresh_train(job.run_dir.name)[5].values.tolist() if r[0] == "lr")
    assert lr_row[2] == source  # the run's hyperparameter table shows the study as the source
    assert _lock_free(engine)


# trials of two epochs, stopped during the second trial; then continued: a user-facing flow, run in CI
def test_stop_during_search_keeps_finished_trials_and_continues(screens: SearchScreens) -> None:
    engine = screens.engine
    study = _start(screens, trials=3, budget=2)
    deadline = time.time() + 600
    rows: list = []
    while time.time() < deadline:  # the first trial finished and the second is running
        read = read_study(study)
        rows = read[1] if read else []
        if any(r.state in ("complete", "pruned") for r in rows) and any(r.state == "running" for r in rows):
            break
        assert engine.jobs.active() is not None, engine.current_job().log_tail()
        time.sleep(0.5)
    # the reports are rewritten after every trial, so the page shows the plots while the study runs
    assert (study / "history.png").is_file() and (study / "summary.csv").is_file()
    time.sleep(3)  # into the trial's training
    message = screens.screens.stop()
    assert "stop requested" in message
    job = engine.jobs.wait(engine.current_job(), 300)
    assert job.state == "stopped", (job.status, job.log_tail())
    assert _lock_free(engine)
    status, table, _ = screens.refresh("")
    states = [r[1] for r in table.values.tolist()]
    assert states[0] in ("complete", "pruned") and "interrupted" in states, states
    assert "Continue the search" in status and job.run_dir is None  # no training started
    # continue with the finished trials' count: nothing more to search, the training follows
    done = sum(s in ("complete", "pruned", "failed") for s in states)
    message, _ = screens.continue_search(study.name, done)
    assert f"continuing the search {study.name}" in message
    job = engine.jobs.wait(engine.current_job(), 600)
    assert job.state == "finished", (job.status, job.log_tail())
    config = json.loads((job.run_dir / "config.json").read_text())
    assert config["toolkit"]["hparams"]["sources"]["lr"].startswith(f"search {study.name} trial ")
    assert [r[1] for r in screens.refresh(study.name)[1].values.tolist()][: len(states)] == states
