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


def test_preset_texts_say_what_the_preset_changes_and_no_borrowed_numbers() -> None:
    from utils.training.batch_size import plan_micro_batch

    for preset in PRESETS.values():
        text = " ".join([preset.summary, preset.lr_why, *preset.why.values()])
        # numbers of other runs (another model's loss jumps, a tiny model's plateau) are not this preset's facts
        for borrowed in ("37.7", "6.9 -> 9.1", "2.8 plateau", "hour run"):
            assert borrowed not in text, (preset.name, borrowed)
        assert set(preset.why) == set(preset.values), preset.name  # every value it sets says why
        for key, value in preset.values.items():
            shown = f"{value:g}" if isinstance(value, float) else str(value)
            assert shown in preset.why[key], (preset.name, key)  # ... naming the value it sets
        if preset.lr_scale is not None:
            assert f"{preset.lr_scale:g}" in preset.lr_why or "twice" in preset.lr_why or "half" in preset.lr_why

    fast = PRESETS["fast"]
    effective = fast.values["batch_size"] * fast.values["grad_accum"]
    assert effective == 336 and "336" in fast.summary and "336" in fast.why["grad_accum"]
    # on a GPU the automatic micro-batch replaces the 8 and keeps the effective batch: the text says so
    assert "automatic micro-batch replaces it" in fast.why["batch_size"] and "336" in fast.why["batch_size"]
    assert "GPU does more per step" not in fast.why["batch_size"]
    plan = plan_micro_batch(84, effective)  # 84 clips fit: 84 x 4, still 336 samples per optimizer step
    assert (plan.micro_batch, plan.accumulation, plan.effective) == (84, 4, 336)
    assert f"{plan.micro_batch} x accumulation {plan.accumulation}" in fast.why["batch_size"]
    r = resolve(dataset_hours=5, preset_name="fast")
    assert (r["lr_scheduler"], r["warmup_steps"], r["lr"]) == ("cosine", 50, pytest.approx(2 * 5e-6))
    assert "cosine" in fast.summary and "warmup" in fast.summary and "twice the table's LR" in fast.summary
