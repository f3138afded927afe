"""A small study end to end: pruning, best.json as a recipe layer, plots, diverged trials, bad input."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import re
import shutil
from pathlib import Path

import pytest

from tests.search.conftest import TINY, one_error_line, run_search

PNGS = ("history.png", "eval_curves.png", "lr_vs_eval_loss.png", "importance.png")


def _rows(study: Path) -> list[dict[str, str]]:
    with open(study / "summary.csv", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_study_prunes_a_trial_and_keeps_the_best(study: Path) -> None:
    rows = _rows(study)
    assert [r["trial"] for r in rows] == ["0", "1", "2", "3"]
    pruned = [r for r in rows if r["state"] == "pruned"]
    complete = [r for r in rows if r["state"] == "complete"]
    assert pruned and complete and len(pruned) + len(complete) == 4
    best = min(complete, key=lambda r: float(r["best_eval_loss"]))
    for r in pruned:  # stopped at its first evaluation, behind the others there, with its reason
        assert r["evaluations"] == "1" and r["reason"].startswith("pruned at evaluation 1")
        assert float(r["best_eval_loss"]) > float(best["best_eval_loss"])
        metrics = (Path(r["run_dir"]) / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
        assert len(metrics) == 1  # the run ended there: no second evaluation
    for r in complete:
        assert r["evaluations"] == "2" and 1e-6 <= float(r["lr"]) <= 1e-2
    data = json.loads((study / "best.json").read_text(encoding="utf-8"))
    label = f"search demo_study trial {best['trial']}, eval loss {float(best['best_eval_loss']):.4f}"
    assert {entry["source"] for entry in data["values"].values()} == {label}
    assert data["values"]["lr"]["value"] == pytest.approx(float(best["lr"]), rel=1e-3)
    assert data["values"]["batch_size"]["value"] == 2  # the fixed values belong to the measured configuration
    assert data["about"]["trial"] == int(best["trial"]) and math.isclose(
        data["about"]["eval_loss"], float(best["best_eval_loss"]), rel_tol=1e-3
    )
    assert f"best: trial {best['trial']}" in (study / "summary.md").read_text(encoding="utf-8")


def test_study_leaves_plots_and_shares_caches(study: Path) -> None:
    for name in PNGS:
        png = (study / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000, name
    trials = study / "trials"
    assert not list(trials.glob("*/*.pth"))  # trial weights are dropped (--keep-weights keeps them)
    # every trial after the first reads the DVAE codes the first one cached
    for log in sorted(trials.glob("trial_*.log"))[1:]:
        assert re.search(r"DVAE codes: 10 of 10 clips read from the cache", log.read_text(encoding="utf-8")), log


def test_best_json_is_a_recipe_layer_under_the_command_line(
    study: Path, search_data: Path, tiny_base: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from utils.gpt_train import main

    best = json.loads((study / "best.json").read_text(encoding="utf-8"))["values"]
    argv = ["--recipe", str(study / "best.json"), "--dataset", str(search_data), "--base-model", str(tiny_base)]
    capsys.readouterr()
    assert main([*argv, "--dry-run", "--lr", "3e-5"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["lr"] == 3e-5 and out["sources"]["lr"] == "cli"  # the command line still wins
    for name in ("weight_decay", "plateau_factor", "warmup_steps", "batch_size"):
        assert out[name] == pytest.approx(best[name]["value"]) and out["sources"][name] == best[name]["source"]
        assert out["sources"][name].startswith("search demo_study trial ")


def test_a_diverged_trial_is_reported_not_fatal(
    tmp_path: Path, search_data: Path, tiny_base: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "nan_study"
    argv = ["--dataset", str(search_data), "--base-model", str(tiny_base), "--trials", "1", "--out", str(out)]
    argv += ["--budget-epochs", "1", "--no-progress", *TINY, "lr=1e6"]
    assert run_search(argv) == 2
    assert "no trial finished with a finite eval loss (1 pruned or diverged, 0 failed" in one_error_line(capsys)
    (row,) = _rows(out)
    assert row["state"] == "pruned" and row["reason"].startswith("diverged") and row["best_eval_loss"] == ""
    assert not (out / "best.json").exists() and (out / "history.png").is_file()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--fix", "learning_rate=1e-5"], "--fix learning_rate: unknown parameter"),
        (["--range", "lr=1e-3:1e-5"], "--range lr=0.001:1e-05 is empty"),
        (["--storage", "sqlite:////nonexistent-folder/study.db"], "cannot reach it"),
        (["--storage", "postgresql://search:secret@127.0.0.1:1/studies"], "--storage postgresql://search:***@"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    tmp_path: Path, search_data: Path, tiny_base: Path, capsys: pytest.CaptureFixture[str], extra: list, message: str
) -> None:
    out = tmp_path / "study"
    argv = ["--dataset", str(search_data), "--base-model", str(tiny_base), "--trials", "2", "--out", str(out)]
    assert run_search([*argv, *extra]) == 2
    line = one_error_line(capsys)
    assert message in line and "secret" not in line
    assert not (out / "search.json").exists()


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_a_study_folder_of_other_data_or_settings_is_refused(
    study: Path, search_data: Path, tiny_base: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = Path(shutil.copytree(search_data, tmp_path / "other"))
    csv_path = other / "metadata_train.csv"
    csv_path.write_text("".join(csv_path.read_text(encoding="utf-8").splitlines(True)[:-1]), encoding="utf-8")
    before = _digests(study)
    argv = ["--base-model", str(tiny_base), "--trials", "4", "--out", str(study), "--budget-epochs", "2", *TINY]
    assert run_search(["--dataset", str(other), *argv, "--range", "lr=1e-6:1e-2"]) == 2
    assert "holds a study of another dataset (metadata_train.csv differ)" in one_error_line(capsys)
    assert run_search(["--dataset", str(search_data), *argv]) == 2  # same data, the default LR range
    line = one_error_line(capsys)
    assert "holds a study with other settings (space)" in line and f"--continue {study}" in line
    assert _digests(study) == before
