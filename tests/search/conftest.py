"""Fixtures for the search tests: the search command, a copy of the demo data, one small study."""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

# Tiny trials: the demo's 10 training clips at micro-batch 2 (5 optimizer steps an epoch), no loader processes.
TINY = ["--fix", "batch_size=2", "grad_accum=1", "num_loader_workers=0"]


def search_main() -> Callable[[list[str] | None], int]:
    """``scripts/search_hparams.py``'s main."""
    spec = importlib.util.spec_from_file_location("_search_hparams", REPO_ROOT / "scripts" / "search_hparams.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def run_search(argv: list[str]) -> int:
    """The command as a user runs it: a ToolkitError becomes one line and exit code 2."""
    from utils import cli

    return cli.run(search_main(), argv)


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.replace("\r", "\n").splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def search_data(tmp_path_factory: pytest.TempPathFactory, demo_en: Path) -> Path:
    return Path(shutil.copytree(demo_en, tmp_path_factory.mktemp("search_data") / "demo_en"))


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory, search_data: Path, tiny_base: Path) -> Path:
    """A 4-trial study of at most 2 epochs each; the seeded sampler draws one LR far below the others,
    which the successive-halving pruner stops at its first evaluation."""
    out = tmp_path_factory.mktemp("study") / "demo_study"
    argv = ["--dataset", str(search_data), "--base-model", str(tiny_base), "--trials", "4", "--out", str(out)]
    argv += ["--budget-epochs", "2", "--range", "lr=1e-6:1e-2", "--no-progress", *TINY]
    assert run_search(argv) == 0
    return out
