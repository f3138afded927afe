"""utils/gpt_train.py as a command: dry run, bad input, the demo."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from utils import cli
from utils.gpt_train import main


def _run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.run(main, argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_dry_run_37_7_hours_as_a_command() -> None:
    proc = subprocess.run(
        [sys.executable, "utils/gpt_train.py", "--dataset-hours", "37.7", "--dry-run"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    cfg = json.loads(proc.stdout)
    assert cfg["lr"] == 1e-5 and cfg["weight_decay"] == 0.01 and cfg["dataset_hours"] == 37.7
    assert cfg["lr_scheduler"] == "ReduceLROnPlateau"
    assert cfg["lr_scheduler_params"]["factor"] == 0.5
    assert cfg["lr_scheduler_params"]["patience"] == 5
    assert cfg["lr_scheduler_params"]["min_lr"] == 1e-7
    assert cfg["sources"]["lr"].startswith("table row 10-40 h") and cfg["sources"]["plateau_patience"] == "default"


def test_dry_run_does_not_import_torch() -> None:
    code = (
        "import sys; from utils.gpt_train import main; "
        "main(['--dataset-hours','3','--dry-run']); print('torch' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "False"


def test_dry_run_cli_overrides_and_measured_hours(demo_copy: Path, tiny_base: Path, capsys) -> None:
    code, out, _ = _run_cli(
        [
            "--dataset",
            str(demo_copy),
            "--base-model",
            str(tiny_base),
            "--dry-run",
            "--lr",
            "3e-6",
            "--plateau-patience",
            "2",
        ],
        capsys,
    )
    assert code == 0
    cfg = json.loads(out)
    assert cfg["lr"] == 3e-6 and cfg["sources"]["lr"] == "cli"
    assert cfg["lr_scheduler_params"]["patience"] == 2
    # hours measured from the wav headers: 10 clips of 2-4 s -> row < 1 h
    assert 0.005 < cfg["dataset_hours"] < 0.02 and cfg["weight_decay"] == 0.05
    assert "measured" in cfg["sources"]["weight_decay"]


def _bad_input_cases(tmp: Path, tiny_base: Path, demo: Path) -> list[tuple[list[str], str]]:
    broken_base = tmp / "broken_base"
    shutil.copytree(tiny_base, broken_base)
    (broken_base / "mel_stats.pth").unlink()
    wrong_cols = tmp / "wrong"
    shutil.copytree(demo, wrong_cols)
    text = (
        (wrong_cols / "metadata_train.csv").read_text().replace("audio_file|text|speaker_name", "file|transcript|who")
    )
    (wrong_cols / "metadata_train.csv").write_text(text)
    out = ["--output-path", str(tmp / "runs")]
    return [
        (["--dataset", str(demo), "--base-model", str(broken_base), *out], "mel_stats.pth"),
        (["--dataset", str(tmp / "nope"), "--base-model", str(tiny_base), *out], "metadata file not found"),
        (["--train-csv", str(demo / "metadata_train.csv"), "--base-model", str(tiny_base), *out], "--eval-csv"),
        (["--dataset", str(demo), "--base-model", str(tiny_base), "--dataset-hours", "-3", *out], "positive number"),
        (["--dataset", str(demo), "--base-model", str(tiny_base), "--dataset-hours", "lots", *out], "positive number"),
        (["--dataset", str(demo), "--base-model", str(tiny_base), "--language", "english!", *out], "language"),
        (["--dataset", str(wrong_cols), "--base-model", str(tiny_base), *out], "column"),
        (["--dataset", str(demo), *out], "--base-model"),
        (["--dataset", str(demo), "--base-model", str(tiny_base), "--logger", "clearml", *out], "pip install clearml"),
    ]


def test_bad_input_one_line_exit_2_nothing_written(tmp_path: Path, tiny_base: Path, demo_copy: Path, capsys) -> None:
    for argv, needle in _bad_input_cases(tmp_path, tiny_base, demo_copy):
        code, out, err = _run_cli(argv, capsys)
        lines = [line for line in err.splitlines() if line.startswith("error: ")]
        assert code == 2, (argv, err)
        assert len(lines) == 1 and needle.lower() in lines[0].lower(), (argv, err)
        assert not (tmp_path / "runs").exists(), argv


def test_demo_trains_and_never_overwrites_a_run(tmp_path: Path, tiny_base: Path, capsys) -> None:
    argv = ["--demo", "--base-model", str(tiny_base), "--output-path", str(tmp_path), "--epochs", "2"]
    code, out, _ = _run_cli(argv, capsys)
    assert code == 0
    run_dir = Path(out.strip().splitlines()[-1])
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r.get("eval_loss") is not None]
    assert len(evals) == 2 and [r["step"] for r in evals] == [5, 10]
    assert all(r["lr"] == 5e-5 for r in evals)
    assert (run_dir / "vocab.json").is_file() and (run_dir / "preflight_report.json").is_file()
    report = json.loads((run_dir / "preflight_report.json").read_text())
    assert report["train"]["kept"] == 10 and report["eval"]["kept"] == 2
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["model_args"]["tokenizer_file"] == str(run_dir / "vocab.json")
    assert saved["toolkit"]["hparams"]["sources"]["lr"] == "recipe"
    assert list(run_dir.glob("checkpoint_*.pth"))
    checked = json.loads((tmp_path / ".clip_cache" / "preflight_audio.json").read_text())["entries"]
    assert len(checked) == 12  # every clip's audio check, for the next run on these files
    code, out2, _ = _run_cli(argv, capsys)  # same second, same name prefix: a new folder
    assert code == 0 and Path(out2.strip().splitlines()[-1]) != run_dir
    assert (run_dir / "metrics.jsonl").read_text().count("\n") == 2


def test_demo_console_shows_one_epoch_count(tmp_path: Path, tiny_base: Path) -> None:
    """What a user sees: the toolkit's bar counts epochs 1/2, 2/2; no Coqui block counts them otherwise."""
    argv = ["--demo", "--base-model", str(tiny_base), "--output-path", str(tmp_path), "--epochs", "2"]
    argv += ["--test-sentences", "0", "--no-export"]
    proc = subprocess.run(
        [sys.executable, "utils/gpt_train.py", *argv], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    console = proc.stdout + proc.stderr
    bar = set(re.findall(r"epoch (\d+)/(\d+):", console))
    assert bar == {("1", "2"), ("2", "2")}
    coqui = set(re.findall(r"EPOCH: (\d+)/(\d+)", console))
    assert coqui <= bar, f"Coqui's epoch line {sorted(coqui)} disagrees with the bar {sorted(bar)}"
    # Coqui's step and evaluation blocks (its averages) stay out of the bar's way
    assert "GLOBAL_STEP" not in console and "EVAL PERFORMANCE" not in console
