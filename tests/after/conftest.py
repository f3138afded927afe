"""Fixtures for the after-training tests: tiny demo runs (English, Amharic), exports, espeak clips."""

from __future__ import annotations

from pathlib import Path

import pytest


def _demo_run(out: Path, *extra: str) -> Path:
    """A finished --demo run (1 epoch) on the tiny base; returns its run folder."""
    from utils.gpt_train import main

    assert main(["--demo", "--epochs", "1", "--output-path", str(out), *extra]) == 0
    (run,) = [p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return run


@pytest.fixture(scope="session")
def en_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _demo_run(tmp_path_factory.mktemp("en_runs"))


@pytest.fixture(scope="session")
def am_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _demo_run(tmp_path_factory.mktemp("am_runs"), "--language", "am")


@pytest.fixture(scope="session")
def en_export(en_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from utils.after.export import export_run

    return export_run(en_run, tmp_path_factory.mktemp("en_export") / "model")


@pytest.fixture(scope="session")
def am_export(am_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from utils.after.export import export_run

    return export_run(am_run, tmp_path_factory.mktemp("am_export") / "model")
