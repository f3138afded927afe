"""What users meet at the worst moment: unwritable outputs, a full disk, Ctrl-C during a save, a
truncated checkpoint, divergence before the first checkpoint, a resume right before an evaluation.
Each failure gives one line with the way forward and exit code 2, and loses nothing."""

from __future__ import annotations

import importlib.util
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from tests.training.test_health_injection import _run
from utils import cli
from utils.training import checkpoints
from utils.training.gpt.model import ToolkitGPTTrainer
from utils.training.health import DivergenceError

REPO_ROOT = Path(__file__).resolve().parents[2]


def _script_main(name: str):
    spec = importlib.util.spec_from_file_location(f"_fp_{name}", REPO_ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [ln[ln.index("error:") :] for ln in err.replace("\r", "\n").splitlines() if "error:" in ln]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _tmpfs(path: Path, options: str):
    """Mount a tmpfs at ``path`` (needs root), yield it, unmount it."""
    path.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)]).returncode:
        pytest.skip("needs root to mount a tmpfs")
    yield path
    subprocess.run(["umount", str(path)], check=True)


@pytest.fixture()
def read_only_dir(tmp_path: Path):
    """A real read-only folder: a tmpfs mounted ro (root ignores permission bits, not a ro mount)."""
    yield from _tmpfs(tmp_path / "ro", "ro,size=1m")


@pytest.fixture()
def small_disk(tmp_path: Path):
    """A 6 MB file system, to fill up for real."""
    yield from _tmpfs(tmp_path / "small", "size=6m")


# --- unwritable outputs: refused before any slow work ------------------------------------------


def test_unwritable_outputs_refused_at_once(tmp_path, read_only_dir, demo_en, capsys) -> None:
    a_file = tmp_path / "plain.txt"
    a_file.write_text("x")
    wav = demo_en / "wavs" / "en_001.wav"
    srt = tmp_path / "a.srt"
    srt.write_text("1\n00:00:00,000 --> 00:00:01,000\nhello\n")
    cases = [
        # a Whisper model that does not exist: the output check must come first
        ("prepare_dataset", [str(wav), "--out", str(a_file), "--whisper-model", "/nope"], "--out"),
        ("prepare_dataset", [str(wav), "--out", str(read_only_dir / "ds"), "--whisper-model", "/nope"], "--out"),
        ("import_srt", [str(wav), str(srt), "--out", str(a_file)], "--out"),
        ("merge_datasets", [str(demo_en), str(demo_en), "--out", str(read_only_dir / "m")], "--out"),
        (
            "validate_dataset",
            [str(demo_en / "metadata_train.csv"), "--report", str(read_only_dir / "r.json")],
            "--report",
        ),
        # the model folders do not exist: the output check comes first
        ("export_model", [str(tmp_path / "no_run"), "--out", str(read_only_dir / "e")], "--out"),
        (
            "synthesize",
            ["--model", str(tmp_path / "no_run"), "--text", "Hi.", "--out", str(read_only_dir / "a.wav")],
            "--out",
        ),
        ("synthesize", ["--model", str(tmp_path / "no_run"), "--text", "Hi.", "--out", str(a_file)], "--out"),
        ("evaluate", [str(tmp_path / "no_run"), "--out", str(a_file)], "--out"),
    ]
    for name, argv, option in cases:
        started = time.time()
        assert cli.run(_script_main(name), argv) == 2, name
        line = _one_error_line(capsys)
        assert option in line and ("is a file" in line or "cannot write" in line), (name, line)
        assert time.time() - started < 10, name
    assert a_file.read_text() == "x"


def test_gpt_train_unwritable_output_path(tmp_path, read_only_dir, tiny_base, demo_copy, capsys) -> None:
    from utils.gpt_train import main

    common = ["--base-model", str(tiny_base), "--dataset", str(demo_copy), "--language", "en", "--epochs", "1"]
    a_file = tmp_path / "f"
    a_file.write_text("x")
    for out, says in ((a_file, "is a file"), (read_only_dir / "runs", "cannot write")):
        assert cli.run(main, [*common, "--output-path", str(out)]) == 2
        line = _one_error_line(capsys)
        assert "--output-path" in line and says in line, line


# --- a full disk -------------------------------------------------------------------------------


def test_disk_full_removes_partial_and_names_the_way_on(small_disk: Path) -> None:
    good = checkpoints.atomic_torch_save(
        {"model": {"w": torch.ones(1000)}, "optimizer": [{"x": 1}]}, small_disk / "checkpoint_2.pth"
    )
    before = good.read_bytes()
    big = {"model": {"w": torch.ones(4_000_000)}, "optimizer": [{}]}  # 16 MB into a 6 MB disk
    with pytest.raises(checkpoints.DiskFullError) as info:
        checkpoints.atomic_torch_save(big, small_disk / "checkpoint_4.pth")
    msg = str(info.value)
    assert msg.startswith(f"no space left on {small_disk} while writing checkpoint_4.pth")
    assert f"the last complete checkpoint is {good}" in msg and f"--continue {small_disk}" in msg
    gb = float(msg.split("free ")[1].split(" GB")[0])
    assert 0.01 <= gb <= 0.1  # 16 MB needed, about 6 MB there
    assert sorted(p.name for p in small_disk.iterdir()) == ["checkpoint_2.pth"]  # no .partial left
    assert good.read_bytes() == before


def test_low_free_space_warning() -> None:
    assert checkpoints.free_space_warning("/", 1) is None
    warning = checkpoints.free_space_warning("/", 10**18)
    assert warning.startswith("only ") and "1000000000.0 GB" in warning and "--output-path" in warning


# --- Ctrl-C while a checkpoint is written ---------------------------------------------------------


def test_ctrl_c_during_a_save_finishes_the_file_first(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "checkpoint_3.pth"
    monkeypatch.setenv("XTTS_TOOLKIT_TEST_SAVE_PAUSE", f"{path.name}:1.0")  # pause after the first MiB
    state = {"model": {"w": torch.arange(1_000_000, dtype=torch.float32)}}
    timer = threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        checkpoints.atomic_torch_save(state, path)  # the Ctrl-C lands in the pause
    timer.join()
    assert torch.equal(checkpoints.load_checkpoint(path)["model"]["w"], state["model"]["w"])
    assert not list(tmp_path.glob(".*.partial"))
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_twice_in_a_real_run_saves_and_prints_the_continue_command(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [
        sys.executable,
        str(REPO_ROOT / "utils" / "gpt_train.py"),
        "--demo",
        "--epochs",
        "50",
        "--no-progress",
        "--output-path",
        str(out),
        "--test-sentences",
        "0",
        "--no-export",
    ]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and not list(out.glob("*/metrics.jsonl")):
        time.sleep(0.5)
    assert list(out.glob("*/metrics.jsonl")), "training did not reach its first evaluation"
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)  # the second one lands while the interrupt checkpoint is written
    _, err = proc.communicate(timeout=240)
    (run,) = [p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert proc.returncode == 130, err[-2000:]
    assert f"to go on: python utils/gpt_train.py --continue {run}" in err, err[-2000:]
    assert "Traceback" not in err, err[-3000:]
    last = checkpoints.last_checkpoint(run)
    assert last is not None and checkpoints.has_training_state(last)
    assert not list(run.glob(".*.partial"))


# --- a truncated checkpoint not written by the toolkit --------------------------------------------


def test_truncated_newest_checkpoint_is_skipped_with_the_reason(tmp_path, caplog) -> None:
    from utils.runs import resume_checkpoint

    run = tmp_path / "run"
    run.mkdir()
    good = checkpoints.atomic_torch_save(
        {"model": {"w": torch.ones(10_000)}, "optimizer": [{"s": 1}]}, run / "checkpoint_20.pth"
    )
    (run / "checkpoint_25.pth").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with caplog.at_level("WARNING"):
        assert resume_checkpoint(run) == good
    assert any("checkpoint_25.pth" in r.getMessage() and "skipping" in r.getMessage() for r in caplog.records)


# --- divergence before the first checkpoint -----------------------------------------------------


def _poison_weights_at(monkeypatch, calls_to_poison) -> None:
    """Before the n-th training forward pass, fill one GPT weight with NaN (a diverged update)."""
    original = ToolkitGPTTrainer.train_step
    seen = {"n": 0}

    def wrapped(self, batch, criterion, optimizer_idx=None):
        if torch.is_grad_enabled():
            if seen["n"] in calls_to_poison:
                with torch.no_grad():
                    next(p for n, p in self.xtts.gpt.named_parameters() if p.requires_grad).fill_(math.nan)
            seen["n"] += 1
        return original(self, batch, criterion)

    monkeypatch.setattr(ToolkitGPTTrainer, "train_step", wrapped)


def test_divergence_before_any_checkpoint_goes_back_to_the_starting_weights(tiny_base, demo_en, tmp_path, monkeypatch):
    _poison_weights_at(monkeypatch, {1})  # step 2, before the first evaluation or checkpoint
    result = _run(tiny_base, demo_en, tmp_path)
    (event,) = [e for e in result.events if e["event"] == "divergence"]
    assert "went back to the starting weights" in event["action"] and event["step"] == 2  # trainer steps done
    assert all(math.isfinite(r["eval_loss"]) for r in result.records)  # it trained on after recovering
    state = checkpoints.load_checkpoint(result.run_dir / "best_model.pth")
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_unrecoverable_divergence_without_checkpoint_recommends_a_command_that_works(
    tiny_base, demo_en, tmp_path, monkeypatch
):
    _poison_weights_at(monkeypatch, set(range(100)))  # every step diverges
    with pytest.raises(DivergenceError) as info:
        _run(tiny_base, demo_en, tmp_path, divergence_max_recoveries=2)
    msg = str(info.value)
    assert "No checkpoint was written before it diverged" in msg and "--restore" not in msg
    assert "--lr 5e-06" in msg  # a tenth of the run's starting LR


# --- a resume keeps the health monitor's count and the train loss of the interrupted period -------


def test_resume_keeps_health_steps_and_train_loss(tiny_base, demo_en, tmp_path) -> None:
    from utils.gpt_train import main

    out = tmp_path / "runs"
    common = [
        "--base-model",
        str(tiny_base),
        "--dataset",
        str(demo_en),
        "--language",
        "en",
        "--no-progress",
        "--test-sentences",
        "0",
        "--no-export",
        "--batch-size",
        "2",
        "--grad-accum",
        "1",
    ]
    # 10 train rows, batch 2: 5 steps per epoch; saves after 2 and 4 steps done and the final one
    # after 5 (the newest 2 are kept): checkpoint_4.pth holds the state after 4 steps
    assert main([*common, "--epochs", "1", "--save-every-steps", "2", "--output-path", str(out)]) == 0
    (run,) = [p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert sorted(p.name for p in run.glob("checkpoint_*.pth")) == ["checkpoint_4.pth", "checkpoint_5.pth"]
    state = checkpoints.load_checkpoint(run / "checkpoint_4.pth")
    assert state["toolkit_state"]["health"]["steps_seen"] == 4  # the save came after the step's checks
    assert state["toolkit_state"]["train_count"] == 4 and state["toolkit_state"]["train_sums"]["loss"] > 0


def test_no_progress_prints_no_bars(tiny_base, demo_en, tmp_path, capfd) -> None:
    from utils.gpt_train import main

    argv = [
        "--base-model",
        str(tiny_base),
        "--dataset",
        str(demo_en),
        "--language",
        "en",
        "--epochs",
        "1",
        "--no-progress",
        "--test-sentences",
        "0",
        "--no-export",
        "--output-path",
        str(tmp_path / "runs"),
    ]
    assert main(argv) == 0
    err = capfd.readouterr().err
    assert "%|" not in err and "clip/s" not in err, [ln for ln in err.splitlines() if "%|" in ln][:3]


# --- inputs that were accepted but wrong -----------------------------------------------------------


def test_language_zh_and_a_base_model_file_get_the_fix(tiny_base, demo_copy, tmp_path, capsys) -> None:
    from utils.gpt_train import main

    common = ["--dataset", str(demo_copy), "--epochs", "1", "--output-path", str(tmp_path / "runs")]
    assert cli.run(main, [*common, "--base-model", str(tiny_base), "--language", "zh"]) == 2
    assert (
        _one_error_line(capsys) == "error: 'zh': XTTS v2's code for Mandarin Chinese is 'zh-cn'; use --language zh-cn"
    )
    assert cli.run(main, [*common, "--base-model", str(tiny_base / "model.pth"), "--language", "en"]) == 2
    line = _one_error_line(capsys)
    assert "is a file" in line and f"--base-model {tiny_base}" in line, line


def test_run_names_are_claimed_exclusively(tmp_path, monkeypatch) -> None:
    from utils.finetune import training

    tokens = iter(["aaaaaa", "aaaaaa", "bbbbbb", "cccccc"])
    monkeypatch.setattr(training.secrets, "token_hex", lambda n: next(tokens))
    monkeypatch.setattr(training.time, "strftime", lambda fmt: "20260101-000000")
    first = training.unique_run_name(tmp_path, "xtts_ft")
    second = training.unique_run_name(tmp_path, "xtts_ft")  # the same random part comes up again: retried
    assert (first, second) == ("xtts_ft_20260101-000000_aaaaaa", "xtts_ft_20260101-000000_bbbbbb")
    # claims older than an hour are removed at the next claim; recent ones and anything not empty stay
    claims = tmp_path / ".run_names"
    old, kept = claims / first, claims / "not_empty"
    (kept / "x").mkdir(parents=True)
    for path in (old, kept):
        os.utime(path, (time.time() - 7200, time.time() - 7200))
    third = training.unique_run_name(tmp_path, "xtts_ft")
    assert sorted(p.name for p in claims.iterdir()) == sorted([second, third, "not_empty"])


def test_a_path_outside_the_dataset_names_the_way_out(tmp_path, demo_en) -> None:
    from utils.data.preflight import run_preflight

    ds = tmp_path / "ds"
    ds.mkdir()
    shutil.copy(demo_en / "wavs" / "en_001.wav", tmp_path / "outside.wav")
    (ds / "metadata.csv").write_text("audio_file|text|speaker_name\n../outside.wav|The quick brown fox.|demo\n")
    (row,) = run_preflight(ds / "metadata.csv", language="en", progress=False).excluded
    assert (
        row["reason"] == "path_outside_dataset"
        and "--dataset-root" in row["detail"]
        and "move the file" in row["detail"]
    )


def test_the_starting_weights_are_copied_beside_the_first_step_and_complete_before_it_changes_them(
    tiny_base, demo_en, tmp_path, monkeypatch
):
    """The start copy (for divergence before any checkpoint) runs on a thread while the first step
    computes; the first optimizer step waits for it, so it holds the weights from before that step."""
    times: dict[str, float] = {}
    real_copy = checkpoints.cpu_copy
    seen: dict[str, torch.Tensor] = {}

    def slow_copy(state):
        if isinstance(state, dict) and not times:  # the start copy (the first call, a dict of parameters)
            times["copy_started"] = time.monotonic()
            seen.update({n: p.detach().clone() for n, p in state.items()})  # the weights it was given
            time.sleep(1.5)
            out = real_copy(state)
            times["copy_done"] = time.monotonic()
            return out
        return real_copy(state)

    monkeypatch.setattr(checkpoints, "cpu_copy", slow_copy)
    original = ToolkitGPTTrainer.train_step

    def step(self, batch, criterion, optimizer_idx=None):
        times.setdefault("first_forward", time.monotonic())
        return original(self, batch, criterion)

    monkeypatch.setattr(ToolkitGPTTrainer, "train_step", step)
    from utils.training.trainer import ToolkitTrainer

    real_hook = ToolkitTrainer._before_optimizer_step
    kept: dict[str, dict] = {}

    def before(self, optimizer, *args):
        real_hook(self, optimizer, *args)
        times.setdefault("first_optimizer_step", time.monotonic())
        kept.setdefault("start", self.recovery.start_weights)

    monkeypatch.setattr(ToolkitTrainer, "_before_optimizer_step", before)
    result = _run(tiny_base, demo_en, tmp_path)
    assert result.records
    assert times["copy_started"] < times["first_forward"] < times["copy_done"]  # the step did not wait for it
    assert times["copy_done"] <= times["first_optimizer_step"]  # the weights changed only after the copy
    start = kept["start"]
    assert set(start) == set(seen) and all(torch.equal(start[n], seen[n]) for n in seen)
    assert all(t.device.type == "cpu" for t in start.values())


def test_a_background_copy_hands_its_error_to_the_caller(monkeypatch) -> None:
    def broken(state):
        raise MemoryError("no host memory for the copy")

    monkeypatch.setattr(checkpoints, "cpu_copy", broken)
    with pytest.raises(MemoryError, match="no host memory"):
        checkpoints.BackgroundCopy({"w": torch.ones(3)}).result()
