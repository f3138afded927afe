"""An evaluation's loss is the plain mean over its batches, weighted by their clips.

Coqui's ``KeepAverage`` gives its first value weight 0: with three eval batches of losses 1, 2 and
6 it reports 4, leaving the first batch out of the eval loss that drives the plateau rule, early
stopping and the best model. The toolkit reports 3.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from trainer import TrainerArgs

from tests.training.tiny_runs import TinyConfig, TinyRegression, samples
from utils.training.trainer import ToolkitTrainer


class KnownEvalLosses(TinyRegression):
    """Trains like the tiny regression; an eval batch's loss is the mean of its rows' ``v``."""

    def eval_step(self, batch: dict[str, Any], criterion: Any) -> tuple[dict[str, Any], dict[str, Any]]:  # type: ignore[override]
        v = batch["v"].float().mean()
        return {"model_outputs": batch["x"]}, {"loss": v, "recon_loss": 2 * v, "commitment_loss": v - 1}


def _eval_rows(values: list[float]) -> list[dict[str, torch.Tensor]]:
    rows = samples(len(values), seed=3)
    return [{**row, "v": torch.tensor(v)} for row, v in zip(rows, values)]


def _eval_losses(out: Path, values: list[float]) -> dict[str, Any]:
    """One epoch of 2 steps, one evaluation over ``values`` in eval batches of 2; its metrics.jsonl row."""
    config = TinyConfig(output_path=str(out), epochs=1)
    trainer = ToolkitTrainer(
        TrainerArgs(),
        config,
        output_path=str(out),
        model=KnownEvalLosses(config),
        train_samples=samples(4, seed=1),
        eval_samples=_eval_rows(values),
    )
    trainer.fit()
    [row] = [json.loads(line) for line in (Path(trainer.output_path) / "metrics.jsonl").read_text().splitlines()]
    return row


def test_three_eval_batches_count_alike(tmp_path: Path) -> None:
    # batches (1, 1), (2, 2), (6, 6): losses 1, 2, 6; Coqui's average says (2 + 6) / 2 = 4
    row = _eval_losses(tmp_path, [1, 1, 2, 2, 6, 6])
    assert row["eval_loss"] == pytest.approx(3.0)
    assert row["eval_recon_loss"] == pytest.approx(6.0)
    assert row["eval_commitment_loss"] == pytest.approx(2.0)
    assert row["best_eval_loss"] == pytest.approx(3.0)  # what the plateau rule compared


def test_a_smaller_last_batch_counts_by_its_clips(tmp_path: Path) -> None:
    # batches (1, 1), (2, 2), (6): 2 x 1 + 2 x 2 + 1 x 6 over 5 clips = 2.4 (Coqui: 4, unweighted: 3)
    row = _eval_losses(tmp_path, [1, 1, 2, 2, 6])
    assert row["eval_loss"] == pytest.approx(2.4)
