"""--continue resumes exactly, --restore starts fresh from weights, and a kill -9 mid-save is survivable.

These back the statements of RESTART_TRAINING_GUIDE.md.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from utils.gpt_train import main
from utils.training.checkpoints import load_checkpoint

REPO = Path(__file__).resolve().parents[2]
COMMON = [
    "--lr",
    "5e-5",
    "--batch-size",
    "2",
    "--grad-accum",
    "1",
    "--num-workers",
    "0",
    "--save-every-steps",
    "4",
    "--keep-checkpoints",
    "1",
    "--no-progress",
    "--no-plots",
    "--test-sentences",
    "0",
]


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _last_line(capsys) -> Path:
    return Path(capsys.readouterr().out.strip().splitlines()[-1])


def test_amharic_continue_keeps_step_lr_and_extended_vocabulary(tiny_base, tmp_path, capsys):
    # warmup 8 optimizer steps: the LR depends on the step, so a reset would show
    args = [
        "--base-model",
        str(tiny_base),
        "--dataset",
        str(REPO / "demo" / "am"),
        "--language",
        "am",
        "--output-path",
        str(tmp_path),
        "--epochs",
        "1",
        "--warmup-steps",
        "8",
        *COMMON,
    ]
    assert main(args) == 0
    run_dir = _last_line(capsys)
    first = _records(run_dir)
    assert [(r["step"], r["lr"]) for r in first] == [(4, pytest.approx(5e-5 * 5 / 8))]
    config = json.loads((run_dir / "config.json").read_text())
    new_size = config["toolkit"]["vocab_extension"]["new_size"]
    assert config["model_args"]["tokenizer_file"] == str(run_dir / "vocab.json")

    assert main(["--continue", str(run_dir), "--epochs", "3", "--no-progress", "--no-plots"]) == 0
    assert _last_line(capsys) == run_dir
    records = _records(run_dir)
    # the step counter and the warmup went on: steps 8 and 12, LR 5e-5 (warmup ended at step 8)
    assert [(r["step"], r["optimizer_step"], r["epoch"]) for r in records] == [(4, 4, 0), (8, 8, 1), (12, 12, 2)]
    assert [r["lr"] for r in records] == pytest.approx([5e-5 * 5 / 8, 5e-5, 5e-5])
    state = load_checkpoint(run_dir / "checkpoint_12.pth", mmap=True)
    assert state["model"]["xtts.gpt.text_embedding.weight"].shape[0] == new_size > 400  # tiny base: 400 tokens
    assert state["scheduler"][0]["optimizer_steps"] == 12
    assert json.loads((run_dir / "config.json").read_text())["epochs"] == 3


def test_continue_refuses_changed_hyperparameters(tmp_path):
    from utils.errors import ConfigError

    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="--restore"):
        main(["--continue", str(tmp_path), "--lr", "1e-5"])


@pytest.fixture(scope="module")
def killed_and_continued(tiny_base, tmp_path_factory):
    """An English run killed with SIGKILL in the middle of writing checkpoint_8.pth, then --continue'd."""
    out = tmp_path_factory.mktemp("killed")
    cmd = [
        sys.executable,
        str(REPO / "utils" / "gpt_train.py"),
        "--base-model",
        str(tiny_base),
        "--dataset",
        str(REPO / "demo" / "en"),
        "--output-path",
        str(out),
        "--epochs",
        "2",
        *COMMON,
    ]
    env = {**os.environ, "XTTS_TOOLKIT_TEST_SAVE_PAUSE": "checkpoint_8.pth:120"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=REPO)
    deadline, partial = time.time() + 180, None
    while time.time() < deadline and partial is None and proc.poll() is None:
        found = [p for p in out.glob("*/.checkpoint_8.pth.partial") if p.stat().st_size >= 1 << 20]
        partial = found[0] if found else None
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    log = proc.communicate()[0].decode(errors="replace")
    assert partial is not None, log[-3000:]
    run_dir = partial.parent
    before = sorted(p.name for p in run_dir.glob("*.pth"))
    resumed = subprocess.run(
        [
            sys.executable,
            str(REPO / "utils" / "gpt_train.py"),
            "--continue",
            str(run_dir),
            "--no-progress",
            "--no-plots",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    return run_dir, before, resumed


def test_kill_during_checkpoint_write_then_continue(killed_and_continued):
    run_dir, before, resumed = killed_and_continued
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # at the kill: the half-written file was only a temporary; the previous checkpoints were whole
    assert "checkpoint_8.pth" not in before and {"checkpoint_4.pth", "best_model_5.pth"} <= set(before)
    assert "removed 1 incomplete checkpoint" in resumed.stderr
    # checkpoint_4 (full state, every 4 steps) was written before epoch 1's last step and its
    # evaluation; best_model_5 (after the evaluation) holds weights only. The resume redoes step 5
    # and that evaluation, and replaces its record.
    assert "continuing at trainer step 4, optimizer step 4, epoch 0" in resumed.stderr
    assert "metrics.jsonl: 1 record(s) after the checkpoint removed" in resumed.stderr
    assert not list(run_dir.glob(".*.partial"))
    records = _records(run_dir)
    assert [(r["step"], r["epoch"]) for r in records] == [(5, 0), (10, 1)]  # no step lost or repeated
    state = load_checkpoint(run_dir / "checkpoint_10.pth", mmap=True)
    assert state["toolkit_state"]["steps_done"] == 10 and state["toolkit_state"]["epochs_done"] == 2
    # the optimizer state went on: AdamW counts 10 steps per parameter (4 before the kill + 6), not 6
    assert {float(p["step"]) for p in state["optimizer"][0]["state"].values()} == {10.0}
    # the health monitor's state went on too: it has seen more steps than the resumed part holds
    assert state["toolkit_state"]["health"]["steps_seen"] > 6


def test_restore_resets_step_and_lr_and_keeps_weights(killed_and_continued, tmp_path, capsys):
    run_dir, _, _ = killed_and_continued
    original = _records(run_dir)
    # plateau-breaker: 0.3 x the LR the restored run had reached (5e-5), 20 warmup steps, clip 0.3
    assert (
        main(
            [
                "--restore",
                str(run_dir),
                "--preset",
                "plateau-breaker",
                "--epochs",
                "1",
                "--output-path",
                str(tmp_path),
                "--batch-size",
                "2",
                "--grad-accum",
                "1",
                "--num-workers",
                "0",
                "--no-progress",
                "--no-plots",
            ]
        )
        == 0
    )
    new_dir = _last_line(capsys)
    assert new_dir != run_dir
    config = json.loads((new_dir / "config.json").read_text())
    assert config["lr"] == pytest.approx(1.5e-5) and config["grad_clip"] == 0.3
    assert "best_model.pth" in config["toolkit"]["hparams"]["sources"]["lr"]
    assert config["toolkit"]["restored_from"] == str(run_dir / "best_model.pth")
    (rec,) = _records(new_dir)
    assert rec["step"] == 5 and rec["optimizer_step"] == 5  # the step counter starts again
    state = load_checkpoint(new_dir / "checkpoint_5.pth", mmap=True)
    # new optimizer state (AdamW counts only the new run's 5 steps) and a fresh health monitor
    assert {float(p["step"]) for p in state["optimizer"][0]["state"].values()} == {5.0}
    assert state["toolkit_state"]["health"]["steps_seen"] <= 5
    assert rec["lr"] == pytest.approx(1.5e-5 * 6 / 20)  # the new schedule from its start (warmup)
    # the weights came from the restored run: better than the base model after 5 steps
    assert rec["eval_loss"] < original[0]["eval_loss"]
