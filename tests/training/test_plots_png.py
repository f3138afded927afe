"""Plots: training curves from metrics.jsonl/events.jsonl and --preview-schedule."""

import json
from pathlib import Path

import pytest

from utils.gpt_train import main
from utils.training.plots import plot_training

REPO = Path(__file__).resolve().parents[2]
PNG = b"\x89PNG\r\n\x1a\n"


def test_training_curves_png(tmp_path) -> None:
    assert plot_training(tmp_path) is None  # nothing to plot yet
    recs = [
        {
            "optimizer_step": s,
            "train_loss": 7 - s / 10,
            "eval_loss": 7.1 - s / 12,
            "lr": 1e-5,
            "grad_norm": 2.0,
            "train_loss_mel_ce": 6.9,
            "eval_loss_mel_ce": 7.0,
            "train_loss_text_ce": 0.1,
            "eval_loss_text_ce": None,
        }
        for s in (5, 10, 15)
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (tmp_path / "events.jsonl").write_text(json.dumps({"event": "plateau", "optimizer_step": 10}) + "\n")
    path = plot_training(tmp_path)
    assert path == tmp_path / "training_curves.png"
    assert path.read_bytes()[:8] == PNG and path.stat().st_size > 20_000
    assert not list(tmp_path.glob(".*partial"))


def test_preview_schedule_writes_png_and_exits(tmp_path, capsys) -> None:
    dest = tmp_path / "lr.png"
    code = main(
        [
            "--dataset",
            str(REPO / "demo" / "en"),
            "--dataset-hours",
            "20",
            "--lr-scheduler",
            "cosine",
            "--warmup-steps",
            "2",
            "--epochs",
            "30",
            "--batch-size",
            "2",
            "--grad-accum",
            "1",
            "--preview-schedule",
            str(dest),
        ]
    )
    assert code == 0
    assert Path(capsys.readouterr().out.strip()) == dest
    assert dest.read_bytes()[:8] == PNG
    assert not list(tmp_path.glob("xtts_ft_*"))  # no run started


def test_dry_run_reports_planned_steps_and_milestones_that_never_fire(capsys) -> None:
    code = main(
        [
            "--dataset",
            str(REPO / "demo" / "en"),
            "--dataset-hours",
            "20",
            "--lr-scheduler",
            "MultiStepLR",
            "--milestones",
            "10,500",
            "--epochs",
            "4",
            "--batch-size",
            "2",
            "--grad-accum",
            "1",
            "--dry-run",
        ]
    )
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["planned_optimizer_steps"] == 20  # 10 rows / batch 2 = 5 optimizer steps x 4 epochs
    assert out["lr_scheduler_params"]["milestones"] == [10, 500]
    assert any("[500]" in w and "never fire" in w for w in out["schedule_warnings"])


def test_schedule_that_gives_zero_lr_is_refused_before_training(tiny_base, tmp_path) -> None:
    from utils.errors import ConfigError

    with pytest.raises(ConfigError, match="LR 1e-300 at optimizer step 1 "):
        main(
            [
                "--base-model",
                str(tiny_base),
                "--dataset",
                str(REPO / "demo" / "en"),
                "--output-path",
                str(tmp_path),
                "--lr-scheduler",
                "MultiStepLR",
                "--milestones",
                "1,2,3,4,5,6,7,8,9",
                "--gamma",
                "1e-300",
                "--min-lr",
                "1e-300",
                "--lr",
                "1e-5",
                "--batch-size",
                "2",
                "--grad-accum",
                "1",
            ]
        )
    assert not list(tmp_path.glob("xtts_ft_*"))
