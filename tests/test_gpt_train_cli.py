"""utils/gpt_train.py as a command: dry run, bad input, the demo."""

from __future__ import annotations

import json
import os
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


# --- a run started with relative paths, continued from another folder ---------------------------

RUN_ARGS = [
    "--epochs",
    "1",
    "--batch-size",
    "1",
    "--grad-accum",
    "1",
    "--num-workers",
    "0",
    "--lr",
    "5e-5",
    "--save-every-steps",
    "3",
    "--keep-checkpoints",
    "10",
    "--test-sentences",
    "0",
    "--no-export",
    "--no-plots",
    "--no-progress",
]


def _command(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    script = str(REPO_ROOT / "utils" / "gpt_train.py")
    return subprocess.run([sys.executable, script, *args], cwd=cwd, capture_output=True, text=True, timeout=900)


def _steps(run_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def relative_run(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """``--base-model base --dataset data --output-path runs`` in a project folder: 10 rows, batch 1, 1 epoch."""
    project = tmp_path_factory.mktemp("voice") / "project"
    project.mkdir()
    (project / "base").symlink_to(tiny_base)  # a folder the test can move (the link) without copying 300 MB
    shutil.copytree(REPO_ROOT / "demo" / "en", project / "data")
    proc = _command(project, "--base-model", "base", "--dataset", "data", "--output-path", "runs", *RUN_ARGS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = Path(proc.stdout.strip().splitlines()[-1])
    return {
        "project": project,
        "run_dir": run_dir,
        "checkpoints": sorted(p.name for p in run_dir.glob("checkpoint_*.pth")),  # as training left them
        "events": (run_dir / "events.jsonl").read_text() if (run_dir / "events.jsonl").is_file() else None,
    }


def test_checkpoints_are_named_by_the_trainer_steps_they_hold(relative_run: dict) -> None:
    from utils.runs import checkpoint_step, load_checkpoint

    # --save-every-steps 3 over 10 steps: after 3, 6 and 9 steps, and the final one after 10
    assert sorted(relative_run["checkpoints"], key=checkpoint_step) == [f"checkpoint_{n}.pth" for n in (3, 6, 9, 10)]
    state = load_checkpoint(relative_run["run_dir"] / "checkpoint_3.pth", mmap=True)
    assert state["toolkit_state"]["steps_done"] == 3
    assert {float(p["step"]) for p in state["optimizer"][0]["state"].values()} == {3.0}  # 3 AdamW steps in it


def test_events_jsonl_is_in_the_run_folder_from_the_start(relative_run: dict) -> None:
    assert relative_run["events"] == ""  # no health event in this short run, and the file is there


def test_the_run_folder_name_has_one_time_stamp(relative_run: dict) -> None:
    assert re.fullmatch(r"xtts_ft_\d{8}-\d{6}_[0-9a-f]{6}", relative_run["run_dir"].name), relative_run["run_dir"]
    assert relative_run["run_dir"].parent == relative_run["project"] / "runs"


def test_continue_from_another_folder_and_after_the_base_model_moved(relative_run: dict, tmp_path: Path) -> None:
    project, run_dir = relative_run["project"], relative_run["run_dir"]
    config = json.loads((run_dir / "config.json").read_text())
    tk, args = config["toolkit"], config["model_args"]
    # every path the run records is absolute
    assert tk["base_model"] == str(project / "base") and args["xtts_checkpoint"] == str(project / "base" / "model.pth")
    assert tk["train_csv"] == str(project / "data" / "metadata_train.csv")
    assert args["tokenizer_file"] == str(run_dir / "vocab.json") and config["output_path"] == str(project / "runs")
    report = json.loads((run_dir / "preflight_report.json").read_text())
    assert report["train"]["csv"] == str(project / "data" / "metadata_train.csv")

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    resumed = _command(elsewhere, "--continue", str(run_dir), "--epochs", "2", "--no-progress", "--no-plots")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert Path(resumed.stdout.strip().splitlines()[-1]) == run_dir and _steps(run_dir) == [10, 20]

    (project / "models").mkdir()
    (project / "base").rename(project / "models" / "xtts")
    refused = _command(elsewhere, "--continue", str(run_dir), "--epochs", "3")
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error: ")]
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr[-3000:]
    assert errors == [
        f"error: --continue {run_dir}: the base model this run trained from is gone ({project / 'base'}); if it "
        f"moved, say where: --continue {run_dir} --base-model DIR (the same files, checked by size and digest)"
    ]
    new_place = os.path.relpath(project / "models" / "xtts", elsewhere)  # relative to the working folder
    moved = _command(elsewhere, "--continue", str(run_dir), "--epochs", "3", "--base-model", new_place)
    assert moved.returncode == 0, moved.stderr[-3000:]
    assert _steps(run_dir) == [10, 20, 30]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["toolkit"]["base_model"] == str(project / "models" / "xtts")
    assert config["model_args"]["dvae_checkpoint"] == str(project / "models" / "xtts" / "dvae.pth")
