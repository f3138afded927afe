"""A real 2-process (gloo, CPU) fine-tune of the tiny base, then a 1-process resume of it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import read_demo_samples
from tests.training.ddp_targets import run_train
from utils.gpt_train import build_config
from utils.hparams import resolve
from utils.training.launch import launch_train

# An LR this small leaves the eval loss flat (< 1 % moves): with patience 1 the plateau rule cuts
# the LR at the third evaluation, to min_lr. 10 train rows / 2 ranks = 5 per rank = 3 micro-batches
# of 2 per epoch; grad_accum 2 over 2 ranks = 1 per rank: 3 optimizer steps (and evaluations) per epoch.
VALUES = {"epochs": 2, "batch_size": 2, "grad_accum": 2, "eval_every_steps": 1, "num_loader_workers": 0,
          "save_every_steps": 10_000, "keep_checkpoints": 1, "lr": 8e-7, "min_lr": 4e-7,
          "plateau_threshold": 0.01, "plateau_patience": 1}  # fmt: skip
LRS = [8e-7, 8e-7, 4e-7, 4e-7, 4e-7, 4e-7]


@pytest.fixture(scope="module")
def ddp_run(tiny_base: Path, demo_en: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("ddp")
    out, runs, staging = root / "ranks", root / "runs", root / "staging"
    out.mkdir()
    result = launch_train(
        2, "tests.training.ddp_targets:tiny_run", str(out), str(tiny_base), str(demo_en), str(runs), VALUES, True,
        backend="gloo", staging_dir=staging, timeout_s=300,
    )  # fmt: skip
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    return {"result": result, "ranks": ranks, "runs": runs, "staging": staging, "run_dir": Path(result["run_dir"])}


def test_each_rank_trains_on_its_own_shard_reshuffled_every_epoch(ddp_run: dict, demo_en: Path) -> None:
    train_files = {Path(r["audio_file"]).name for r in read_demo_samples(demo_en / "metadata_train.csv")}
    r0, r1 = (r["seen"] for r in ddp_run["ranks"])
    assert len(r0) == len(r1) == 10  # 5 rows per rank per epoch, 2 epochs
    for epoch in range(2):
        a, b = set(r0[5 * epoch : 5 * epoch + 5]), set(r1[5 * epoch : 5 * epoch + 5])
        assert not a & b, f"epoch {epoch}: both ranks loaded {a & b}"
        assert a | b == train_files
    assert set(r0[:5]) != set(r0[5:])  # set_epoch: new shards in epoch 2, not the same rows again


def test_ranks_keep_identical_weights_and_decisions(ddp_run: dict) -> None:
    r0, r1 = ddp_run["ranks"]
    assert r0["weight_sum"] == pytest.approx(r1["weight_sum"], rel=1e-12, abs=1e-9)
    assert r0["weight_abs"] == pytest.approx(r1["weight_abs"], rel=1e-12)
    # Each rank evaluated a different eval row: only the shared mean keeps the records equal.
    for key in ("eval_loss", "lr", "lr_reduced", "train_loss", "optimizer_step", "best_eval_loss"):
        assert [x[key] for x in r0["records"]] == [x[key] for x in r1["records"]], key
    assert [x["lr"] for x in r0["records"]] == pytest.approx(LRS, rel=1e-9)
    assert r0["grad_accum_steps"] == r1["grad_accum_steps"] == 1  # grad_accum 2 over 2 ranks


def test_only_rank_zero_writes_the_run_folder(ddp_run: dict) -> None:
    run_dir, r0, r1 = ddp_run["run_dir"], *ddp_run["ranks"]
    assert [p.name for p in ddp_run["runs"].iterdir()] == [run_dir.name]  # one run folder, rank 0's
    assert r1["output_path"] == str(run_dir)  # rank 1 follows rank 0's folder after start-up
    names = {p.name for p in run_dir.iterdir()}
    assert "trainer_0_log.txt" in names and not any("_1_" in n or "rank1" in n for n in names), names
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 6 and [x["step"] for x in lines] == [x["step"] for x in r0["records"]]
    assert [x["lr"] for x in lines] == pytest.approx(LRS, rel=1e-9)
    saved = json.loads((run_dir / "config.json").read_text())["toolkit"]["distributed"]
    assert saved["world_size"] == 2 and saved["effective_batch"] == 4 and saved["per_rank_grad_accum"] == 1
    assert not ddp_run["staging"].exists() or not any(ddp_run["staging"].iterdir())  # scratch removed


def test_checkpoint_bridge_state_matches_metrics_and_resume_across_world_sizes(
    ddp_run: dict, tiny_base: Path, demo_en: Path, tmp_path: Path
) -> None:
    run_dir = ddp_run["run_dir"]
    ckpt = max(run_dir.glob("checkpoint_*.pth"), key=lambda p: int(p.stem.split("_")[1]))
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["scheduler"][0]
    assert state["optimizer_steps"] == 6 and state["evaluations"] == 6 and state["reductions"] == 1
    assert 8e-7 * state["plateau_scale"] == pytest.approx(LRS[-1])
    # Continue the 2-rank run in this single process (world size 1) for one more epoch.
    _set_epochs(run_dir, 3)
    config = build_config(resolve(dataset_hours=0.01, cli=VALUES), tiny_base, output_path=run_dir.parent, language="en")
    rows = read_demo_samples(demo_en / "metadata_train.csv")
    result, trainer = run_train(config, rows, read_demo_samples(demo_en / "metadata_eval.csv"), continue_path=str(run_dir))
    assert trainer.grad_accum_steps == 2  # one rank now accumulates what two did: 4 samples per step still
    first = result["records"][0]
    assert first["optimizer_step"] == 7  # continues after the 6 steps of the 2-rank run
    assert first["lr"] == pytest.approx(4e-7)  # the cut LR, not the configured 8e-7
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 6 + len(result["records"])
    # ... and back to 2 processes (rank 1 resumes from a mirror of the folder, writes nothing there).
    _set_epochs(run_dir, 4)
    before = {p.name for p in run_dir.iterdir()}
    last_step = result["records"][-1]["optimizer_step"]
    launch_train(
        2, "tests.training.ddp_targets:tiny_run", str(tmp_path), str(tiny_base), str(demo_en), str(run_dir.parent),
        VALUES, False, str(run_dir), backend="gloo", staging_dir=tmp_path / "staging", timeout_s=300,
    )  # fmt: skip
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    assert r0["records"][0]["optimizer_step"] == last_step + 1 and r0["records"][0]["lr"] == pytest.approx(4e-7)
    assert [x["lr"] for x in r0["records"]] == [x["lr"] for x in r1["records"]]
    assert r0["weight_sum"] == pytest.approx(r1["weight_sum"], rel=1e-12, abs=1e-9)
    assert r0["grad_accum_steps"] == r1["grad_accum_steps"] == 1
    assert r1["output_path"] == str(run_dir)
    new = {p.name for p in run_dir.iterdir()} - before
    assert not any("_1_" in n for n in new) and [p.name for p in run_dir.parent.iterdir()] == [run_dir.name], new
    assert len(r0["seen"]) == len(r1["seen"]) and not set(r0["seen"][:5]) & set(r1["seen"][:5])
    saved = json.loads((run_dir / "config.json").read_text())["toolkit"]["distributed"]
    assert saved["world_size"] == 2


def _set_epochs(run_dir: Path, epochs: int) -> None:
    cfg = json.loads((run_dir / "config.json").read_text())
    cfg["epochs"] = epochs
    (run_dir / "config.json").write_text(json.dumps(cfg))


@pytest.mark.slow
def test_gpt_train_demo_with_gpus_2_on_cpu(tmp_path: Path, tiny_base: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The command line end to end: needs the --gpus hooks in utils/gpt_train.py."""
    from utils import cli
    from utils.gpt_train import main, parse_args

    try:
        parse_args(["--demo", "--gpus", "2"])
    except SystemExit:
        pytest.skip("utils/gpt_train.py has no --gpus option yet")
    argv = ["--demo", "--gpus", "2", "--base-model", str(tiny_base), "--output-path", str(tmp_path), "--epochs", "2"]
    assert cli.run(main, argv) == 0
    run_dir = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == [run_dir.name]
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [x["optimizer_step"] for x in lines] == [3, 6]  # 5 rows per rank, micro-batch 2, 1 step each
    assert (run_dir / "vocab.json").is_file() and (run_dir / "preflight_report.json").is_file()
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["model_args"]["tokenizer_file"] == str(run_dir / "vocab.json")
    assert saved["toolkit"]["distributed"]["world_size"] == 2
    assert not (run_dir / "trainer_1_log.txt").exists()
