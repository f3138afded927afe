"""Presets ("optimization levels"): what they change, their order, and the --dry-run table."""

import json

import pytest

from utils.errors import ConfigError
from utils.gpt_train import main
from utils.hparams import PRESETS, preset_table, resolve


def test_stable_halves_the_table_lr_and_tightens_clipping() -> None:
    r = resolve(dataset_hours=37.7, preset_name="stable")
    assert r["lr"] == pytest.approx(5e-6)  # table row 10-40 h: 1e-5, x0.5
    assert r.sources["lr"].startswith("preset stable (table row 10-40 h")
    assert (r["grad_clip"], r["eval_every_steps"], r["save_every_minutes"], r["save_every_steps"]) == (
        0.5,
        100,
        5.0,
        None,
    )
    assert r.sources["grad_clip"] == "preset stable"


def test_fast_is_warmup_plus_cosine_with_larger_effective_batch() -> None:
    r = resolve(dataset_hours=5, preset_name="fast")
    assert r["lr_scheduler"] == "cosine" and r["warmup_steps"] == 50
    assert r["batch_size"] * r["grad_accum"] > 3 * 84
    assert r["lr"] == pytest.approx(1e-5)  # 5e-6 x2


def test_command_line_wins_over_preset_and_says_so() -> None:
    r = resolve(dataset_hours=37.7, preset_name="stable", cli={"grad_clip": 0.8, "lr": 2e-5})
    assert (r["grad_clip"], r.sources["grad_clip"]) == (0.8, "cli")
    assert (r["lr"], r.sources["lr"]) == (2e-5, "cli")
    assert any("grad_clip 0.5 not applied" in n for n in r.notes)
    assert any(n.startswith("preset stable: lr") for n in r.notes)


def test_recipe_layer_still_wins_over_preset() -> None:
    r = resolve(dataset_hours=5, preset_name="stable", recipe={"grad_clip": 2.0})
    assert r["grad_clip"] == 2.0 and r.sources["grad_clip"] == "recipe"


def test_plateau_breaker_scales_the_restored_lr() -> None:
    r = resolve(
        dataset_hours=37.7, preset_name="plateau-breaker", lr_reference=(4e-6, "LR reached at best_model_900.pth")
    )
    assert r["lr"] == pytest.approx(1.2e-6)
    assert "best_model_900.pth x0.3" in r.sources["lr"]
    assert r["grad_clip"] == 0.3


def test_plateau_breaker_needs_restore(capsys) -> None:
    with pytest.raises(ConfigError, match="--restore"):
        main(["--dataset-hours", "5", "--dry-run", "--preset", "plateau-breaker"])


def test_unknown_preset_is_refused() -> None:
    with pytest.raises(ConfigError, match="unknown preset"):
        resolve(dataset_hours=5, preset_name="turbo")


def test_dry_run_prints_the_preset_table(capsys) -> None:
    assert main(["--dataset-hours", "37.7", "--dry-run", "--preset", "stable"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["preset"] == "stable" and out["lr"] == pytest.approx(5e-6)
    rows = out["presets"]
    assert {r["preset"] for r in rows} == set(PRESETS)
    for row in rows:
        assert row["why"], row  # every change says why
    stable = {r["setting"]: r for r in rows if r["preset"] == "stable"}
    assert stable["lr"]["value"] == "x0.5" and stable["grad_clip"]["value"] == "0.5"
    assert preset_table(["fast"])[0]["preset"] == "fast"
