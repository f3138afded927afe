"""Fixtures of the DVAE stage's tests: the demo rows and settings small enough for 2 CPU cores.

The DVAE itself is full size (52 M parameters, as GPTTrainer builds it); the tests keep the work
small instead: 0.37 s crops (32 mel frames), one crop per clip, batches of 1-2 crops, one held-out
clip.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import read_demo_samples


def _tiny_stage(**values):
    """A DVAEStageConfig for tests: short crops, small batches, an LR that moves a random DVAE fast."""
    from utils.training.dvae.config import DVAEStageConfig

    base = {
        "lr": 1e-4,
        "epochs": 1,
        "batch_size": 2,
        "eval_batch_size": 8,
        "crop_frames": 32,
        "crops_per_clip": 1,
        "heldout_clips": 1,
        "num_loader_workers": 0,
    }
    return DVAEStageConfig.build(**{**base, **values})


@pytest.fixture(scope="session")
def demo_rows(demo_en: Path) -> tuple[list[dict], list[dict]]:
    """(training rows, held-out rows) of the English demo dataset; one held-out clip."""
    train = read_demo_samples(demo_en / "metadata_train.csv")
    evals = read_demo_samples(demo_en / "metadata_eval.csv")[:1]
    return train, evals


@pytest.fixture(scope="session")
def tiny_stage():
    """``tiny_stage(**overrides)`` -> a DVAEStageConfig for tests."""
    return _tiny_stage
