"""The best model is written on a worker thread from a CPU copy: training goes on meanwhile, and
the file holds the weights of its evaluation, not later ones."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import read_demo_samples
from utils.events import EventBus, EventKind
from utils.gpt_train import build_config, train
from utils.hparams import resolve
from utils.training import checkpoints
from utils.training.checkpoints import load_checkpoint


def test_best_model_written_beside_training_holds_its_evaluations_weights(
    tiny_base: Path, demo_en: Path, tmp_path: Path, monkeypatch, caplog
) -> None:
    from utils.training.best_model import BestModelWriter
    from utils.training.compat import unwrap_model

    # the first best model's write stops for 3 s after its first MiB
    monkeypatch.setenv("XTTS_TOOLKIT_TEST_SAVE_PAUSE", "best_model_5.pth:3.0")
    values = {
        "epochs": 2,
        "batch_size": 2,
        "grad_accum": 1,
        "num_loader_workers": 0,
        "lr": 5e-5,
        "save_every_steps": 10_000,
        "keep_checkpoints": 1,
        "seed": 3,
    }
    config = build_config(resolve(dataset_hours=0.01, cli=values), tiny_base, output_path=tmp_path, language="en")
    config.save_all_best = True
    at_eval: dict[int, dict[str, torch.Tensor]] = {}
    original = BestModelWriter.save_if_improved

    def remember(self, trainer, *args):  # the weights as they are when the best model is asked for
        model = unwrap_model(trainer).state_dict()
        at_eval[trainer.total_steps_done] = {k: v.detach().clone() for k, v in model.items()}
        return original(self, trainer, *args)

    monkeypatch.setattr(BestModelWriter, "save_if_improved", remember)
    steps: dict[int, float] = {}
    bus = EventBus(
        [lambda e: steps.setdefault(int(e.data["total_steps"]), time.time()) if e.kind is EventKind.PROGRESS else None]
    )
    with caplog.at_level(logging.INFO, logger="utils.training.best_model"):
        result = train(
            config,
            read_demo_samples(demo_en / "metadata_train.csv"),
            read_demo_samples(demo_en / "metadata_eval.csv"),
            progress=False,
            plots=False,
            events=bus,
        )
    run = result.run_dir
    written = [r for r in caplog.records if "best_model_5.pth (written in" in r.getMessage()]
    assert len(written) == 1 and "beside training" in written[0].getMessage()
    # training went on while the file was written: step 6 and on began before the write ended
    assert min(t for s, t in steps.items() if s > 5) < written[0].created
    # the file holds the weights of its evaluation, not those of the steps that ran during the write
    best = load_checkpoint(run / "best_model_5.pth")["model"]
    keys = [k for k, v in at_eval[5].items() if v.is_floating_point() and k.startswith("xtts.gpt.gpt.")]
    assert keys and all(torch.equal(best[k], at_eval[5][k]) for k in keys)
    assert any(not torch.equal(best[k], at_eval[10][k]) for k in keys)  # training moved on meanwhile
    assert (run / "best_model.pth").read_bytes() == (run / "best_model_10.pth").read_bytes()
    assert not list(run.glob(".*.partial"))


def test_a_failed_background_write_is_raised_at_the_next_wait() -> None:
    writer = checkpoints.BackgroundWriter("test write")
    done: list[int] = []
    writer.submit(lambda: done.append(1))
    writer.submit(lambda: (_ for _ in ()).throw(OSError("disk gone")))  # waits for the first
    assert done == [1]
    with pytest.raises(OSError, match="disk gone"):
        writer.wait()
    writer.wait()  # raised once


def test_cpu_copy_is_a_copy_and_keeps_state_dict_metadata() -> None:
    module = torch.nn.BatchNorm1d(3)
    state = {"model": module.state_dict(), "step": 4, "items": [torch.ones(2)]}
    copy = checkpoints.cpu_copy(state)
    module.weight.data.add_(1.0)
    assert torch.equal(copy["model"]["weight"], torch.ones(3)) and copy["step"] == 4
    assert copy["model"]._metadata == state["model"]._metadata
    assert copy["items"][0].data_ptr() != state["items"][0].data_ptr()
