"""The command's schedule checks: --preview-schedule writes the PNG, --dry-run plans the steps."""

import json
from pathlib import Path

import pytest

from utils.gpt_train import main

REPO = Path(__file__).resolve().parents[2]
PNG = b"\x89PNG\r\n\x1a\n"


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
