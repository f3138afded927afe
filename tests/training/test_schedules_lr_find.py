"""The LR range test: the exponential schedule in the real loop, the suggestion rule, the PNG."""

import importlib.util
import json
import math
from pathlib import Path

import pytest

from utils.training.lr_find import smooth, suggest_lr

REPO = Path(__file__).resolve().parents[2]


def test_suggestion_is_steepest_descent_before_the_minimum() -> None:
    lrs = [10 ** (-8 + i * 0.5) for i in range(14)]  # 1e-8 .. 3e-2
    losses = [7.0, 7.0, 7.0, 6.99, 6.9, 6.5, 5.0, 3.0, 2.5, 2.4, 2.35, 3.0, 6.0, 9.0]
    best, at_min = suggest_lr(lrs, losses)
    assert best == lrs[6]  # central difference around it (6.5 -> 3.0) is the steepest fall
    assert at_min == pytest.approx(lrs[10] / 10)


def test_smoothing_is_bias_corrected() -> None:
    assert smooth([4.0, 4.0, 4.0]) == pytest.approx([4.0, 4.0, 4.0])


def test_lr_find_cli_on_the_tiny_model(tiny_base, tmp_path, capsys) -> None:
    spec = importlib.util.spec_from_file_location("lr_find_cli", REPO / "scripts" / "lr_find.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    code = cli.main(
        [
            "--base-model",
            str(tiny_base),
            "--dataset",
            str(REPO / "demo" / "en"),
            "--output-path",
            str(tmp_path),
            "--steps",
            "16",
            "--start-lr",
            "1e-7",
            "--end-lr",
            "1e-1",
            "--batch-size",
            "2",
            "--grad-accum",
            "1",
            "--num-workers",
            "0",
            "--no-progress",
        ]
    )
    assert code == 0
    suggested = float(capsys.readouterr().out.strip().splitlines()[-1])
    (run_dir,) = list(tmp_path.glob("lr_find_*"))
    data = json.loads((run_dir / "lr_find.json").read_text())
    lrs = data["lrs"]
    assert len(lrs) == 16 and lrs[0] == pytest.approx(1e-7)
    ratios = [b / a for a, b in zip(lrs, lrs[1:])]
    assert ratios == pytest.approx([10 ** (6 / 16)] * 15)  # one decade every 16/6 optimizer steps
    assert 1e-7 < suggested < 1e-1 and math.isclose(suggested, data["suggestion"], rel_tol=1e-2)
    assert (run_dir / "lr_find.png").stat().st_size > 10_000
    assert not list(run_dir.glob("*.pth"))  # nothing checkpointed
