"""Real data-parallel fine-tunes of the tiny base through torchrun (gloo, CPU processes).

One 2-process run (``torchrun --nproc-per-node 2 utils/gpt_train.py``, through tests/training/
ddp_entry.py, which records each rank) is checked for averaged gradients, sharded batches and
rank 0's run folder; it is then resumed on 1 process, and back on 2 by two torchrun agents on
loopback (``--nnodes 2``, the rehearsal of a two-machine run).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, read_demo_samples

ENTRY = REPO_ROOT / "tests" / "training" / "ddp_entry.py"
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
# 10 train rows, micro-batch 2: 5 batches per epoch, 3 per rank (one padded); grad_accum 2 over
# 2 ranks = 1 per rank, so 3 optimizer steps (and evaluations) per epoch.
OPTIONS = [
    "--batch-size",
    "2",
    "--grad-accum",
    "2",
    "--eval-every-steps",
    "1",
    "--num-workers",
    "0",
    "--save-every-steps",
    "10000",
    "--keep-checkpoints",
    "1",
    "--lr",
    "1e-5",
    "--test-sentences",
    "0",
    "--no-export",
    "--no-progress",
    "--no-plots",
]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}


def _torchrun(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*TORCHRUN, *args], cwd=REPO_ROOT, env=_env(), capture_output=True, text=True, timeout=timeout
    )


def _ranks(out: Path, n: int = 2) -> list[dict]:
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(n)]


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def ddp_run(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("ddp")
    out, runs = root / "ranks", root / "runs"
    started = time.monotonic()
    proc = _torchrun(
        [
            "--standalone",
            "--nproc-per-node",
            "2",
            str(ENTRY),
            str(out),
            "--demo",
            "--base-model",
            str(tiny_base),
            "--output-path",
            str(runs),
            "--epochs",
            "2",
            *OPTIONS,
        ]
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    run_dir = Path(proc.stdout.strip().splitlines()[-1])
    return {
        "ranks": _ranks(out),
        "runs": runs,
        "run_dir": run_dir,
        "stdout": proc.stdout,
        "stderr": proc.stderr,
        "seconds": time.monotonic() - started,
    }


def test_ranks_end_bit_identical_after_training(ddp_run: dict) -> None:
    r0, r1 = ddp_run["ranks"]
    assert (r0["world"], r1["world"], r0["rank"], r1["rank"]) == (2, 2, 0, 1)
    assert r0["optimizer_steps"] == r1["optimizer_steps"] == 6
    assert r0["after"] != r0["before"]  # the weights moved ...
    assert r1["max_diff_to_rank0"] == 0.0 and r0["after"] == r1["after"]  # ... identically: gradients averaged
    for key in ("eval_loss", "lr", "lr_reduced", "train_loss", "optimizer_step", "best_eval_loss"):
        assert [x[key] for x in r0["records"]] == [x[key] for x in r1["records"]], key
    assert r0["grad_accum_steps"] == r1["grad_accum_steps"] == 1  # grad_accum 2 over 2 ranks


def test_sampler_shards_are_disjoint_and_cover_each_epoch(ddp_run: dict, demo_en: Path) -> None:
    train_files = {Path(r["audio_file"]).name for r in read_demo_samples(demo_en / "metadata_train.csv")}
    p0, p1 = (r["passes"] for r in ddp_run["ranks"])
    assert [p["epoch"] for p in p0] == [p["epoch"] for p in p1] == [0, 1]  # set_epoch: the ranks agree
    for a, b in zip(p0, p1):
        assert len(a["batches"]) == len(b["batches"]) == 3  # same count per rank: collectives stay in step
        clips0 = [c for batch in a["batches"] for c in batch]
        clips1 = [c for batch in b["batches"] for c in batch]
        assert set(clips0) | set(clips1) == train_files
        assert len(clips0) + len(clips1) == 12 and len(set(clips0) & set(clips1)) == 2  # only the padding batch repeats
    assert p0[0]["batches"] != p0[1]["batches"]  # a new shuffle in epoch 2


def test_only_rank_zero_writes_the_run_folder(ddp_run: dict) -> None:
    run_dir, r0, r1 = ddp_run["run_dir"], *ddp_run["ranks"]
    assert [p.name for p in ddp_run["runs"].iterdir() if not p.name.startswith(".")] == [run_dir.name]
    assert r0["output_path"] == r1["output_path"] == str(run_dir)  # rank 1 follows rank 0's folder
    names = {p.name for p in run_dir.iterdir()}
    assert "trainer_0_log.txt" in names and not any("_1_" in n or "rank1" in n for n in names), names
    assert [x["optimizer_step"] for x in _metrics(run_dir)] == [1, 2, 3, 4, 5, 6]
    saved = json.loads((run_dir / "config.json").read_text())["toolkit"]
    assert saved["distributed"]["world_size"] == 2 and saved["distributed"]["effective_batch"] == 4
    assert "cache_dvae_codes" in saved["speed_applied"] and "bucket_lengths" in saved["speed_applied"]
    assert ddp_run["stdout"].strip().splitlines()[-1] == str(run_dir)  # printed once, by rank 0


def test_resume_two_then_one_then_two_machines(ddp_run: dict, tiny_base: Path, tmp_path: Path) -> None:
    """2 -> 1 process (this one) -> 2 torchrun agents with --nnodes 2 on loopback, one process each."""
    from utils import cli
    from utils.gpt_train import main

    run_dir = ddp_run["run_dir"]
    assert cli.run(main, ["--continue", str(run_dir), "--epochs", "3", "--no-progress"]) == 0
    one = _metrics(run_dir)
    # one rank now accumulates what two did: 10 rows / micro-batch 2 / accumulation 2 = 3 steps
    assert [x["optimizer_step"] for x in one] == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert json.loads((run_dir / "config.json").read_text())["toolkit"]["distributed"]["world_size"] == 1
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "ranks"
    agent = [
        *TORCHRUN,
        "--nnodes",
        "2",
        "--nproc-per-node",
        "1",
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        f"127.0.0.1:{port}",
        "--rdzv-id",
        "rehearsal",
        str(ENTRY),
        str(out),
        "--continue",
        str(run_dir),
        "--epochs",
        "4",
        "--no-progress",
    ]
    agents = [
        subprocess.Popen(agent, cwd=REPO_ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = [p.communicate(timeout=300) for p in agents]
    assert [p.returncode for p in agents] == [0, 0], results[0][1][-3000:] + results[1][1][-3000:]
    r0, r1 = _ranks(out)
    assert (r0["local_rank"], r1["local_rank"], r0["world"]) == (0, 0, 2)  # two "machines", one process each
    assert r1["max_diff_to_rank0"] == 0.0 and r0["after"] == r1["after"]
    assert r0["grad_accum_steps"] == r1["grad_accum_steps"] == 1
    assert r1["output_path"] == str(run_dir)
    assert [x["optimizer_step"] for x in _metrics(run_dir)] == list(range(1, 13))  # 9 + 3 more, none twice
    assert json.loads((run_dir / "config.json").read_text())["toolkit"]["distributed"]["world_size"] == 2
    assert not any("_1_" in p.name for p in run_dir.iterdir())


def test_one_rank_failing_stops_both_with_its_error_once(tiny_base: Path, tmp_path: Path) -> None:
    started = time.monotonic()
    proc = subprocess.run(
        [
            *TORCHRUN,
            "--standalone",
            "--nproc-per-node",
            "2",
            str(ENTRY),
            str(tmp_path / "ranks"),
            "--demo",
            "--base-model",
            str(tiny_base),
            "--output-path",
            str(tmp_path / "runs"),
            "--epochs",
            "1",
            *OPTIONS,
        ],
        cwd=REPO_ROOT,
        env={**_env(), "XTTS_TEST_FAIL_RANK": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    seconds = time.monotonic() - started
    assert proc.returncode != 0
    assert proc.stderr.count("rank-specific bad row; fix the CSV") == 1, proc.stderr[-4000:]
    assert "error: rank-specific bad row; fix the CSV" in proc.stderr
    # rank 0 was stopped quietly: the only traceback is torchrun's own report, with no frame of ours
    assert not re.search(r'File ".*/(utils|tests)/', proc.stderr), proc.stderr[-4000:]
    root_cause = proc.stderr.split("Root Cause (first observed failure)")[1]
    assert "rank      : 1 (local_rank: 1)" in root_cause and "exitcode  : 2" in root_cause
    assert seconds < 120 and not (tmp_path / "ranks").exists()


def test_gpus_option_reports_a_workers_error_as_one_line(
    tmp_path: Path, tiny_base: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """--gpus 2 runs torch.distributed.run in this process; rank 0's preparation fails."""
    import signal

    from utils import cli
    from utils.gpt_train import main

    missing = tmp_path / "no_such_dataset"
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    code = cli.run(
        main,
        [
            "--gpus",
            "2",
            "--dataset",
            str(missing),
            "--base-model",
            str(tiny_base),
            "--output-path",
            str(tmp_path / "runs"),
            "--no-progress",
        ],
    )
    err = capfd.readouterr().err
    assert code == 2
    # the elastic agent's signal handlers do not outlive the launch (Ctrl-C keeps its meaning here)
    assert {sig: signal.getsignal(sig) for sig in before} == before
    lines = [x for x in err.splitlines() if str(missing) in x and x.startswith("error:")]
    assert len(lines) == 1, err[-3000:]
    assert "Traceback (most recent call last)" not in err


@pytest.mark.slow
def test_gpt_train_demo_with_gpus_2_on_cpu(tmp_path: Path, tiny_base: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """The --gpus convenience end to end (the same workers as torchrun's)."""
    from utils import cli
    from utils.gpt_train import main

    argv = [
        "--demo",
        "--gpus",
        "2",
        "--base-model",
        str(tiny_base),
        "--output-path",
        str(tmp_path),
        "--epochs",
        "2",
        "--no-progress",
        "--test-sentences",
        "0",
    ]
    assert cli.run(main, argv) == 0
    run_dir = Path(capfd.readouterr().out.strip().splitlines()[-1])
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == [run_dir.name]
    assert (run_dir / "vocab.json").is_file() and (run_dir / "preflight_report.json").is_file()
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["model_args"]["tokenizer_file"] == str(run_dir / "vocab.json")
    assert saved["toolkit"]["distributed"]["world_size"] == 2
    assert not (run_dir / "trainer_1_log.txt").exists()
