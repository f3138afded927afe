"""Shared fixtures: a tiny XTTS base in the real on-disk layout and the bundled demo data."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    skip_slow = pytest.mark.skip(reason="slow: pass --runslow")
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "slow" in item.keywords and not config.getoption("--runslow"):
            item.add_marker(skip_slow)
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random XTTS v2 base (vocab.json, mel_stats.pth, dvae.pth, model.pth, config.json)."""
    from utils.base_model import make_tiny_base

    return make_tiny_base(tmp_path_factory.mktemp("tiny") / "base")


@pytest.fixture(scope="session")
def demo_en() -> Path:
    return REPO_ROOT / "demo" / "en"


@pytest.fixture()
def demo_copy(tmp_path: Path, demo_en: Path) -> Path:
    """A writable copy of the English demo dataset."""
    return Path(shutil.copytree(demo_en, tmp_path / "demo_en"))


def read_demo_samples(csv_path: Path, language: str = "en") -> list[dict]:
    """Rows of a coqui CSV as Trainer samples (the demo data is known to be clean)."""
    rows = []
    for line in csv_path.read_text(encoding="utf-8").splitlines()[1:]:
        audio, text, speaker = line.split("|")
        path = str(csv_path.parent / audio)
        rows.append(
            {
                "audio_file": path,
                "text": text,
                "speaker_name": speaker,
                "language": language,
                "root_path": str(csv_path.parent),
                "audio_unique_name": path,
            }
        )
    return rows
