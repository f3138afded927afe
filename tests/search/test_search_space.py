"""The search space, its options and the recipe file: pure Python, no training."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from utils.errors import ConfigError
from utils.finetune.recipe_file import read_recipe_file, write_recipe_file
from utils.search.space import SearchSpace, parse_fixes, parse_ranges, parse_value


class _Trial:
    """Stands in for an Optuna trial: returns each range's low end and records the ranges asked for."""

    def __init__(self) -> None:
        self.asked: dict[str, tuple] = {}

    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False) -> float:
        self.asked[name] = (low, high, log)
        return low

    def suggest_int(self, name: str, low: int, high: int, *, log: bool = False) -> int:
        self.asked[name] = (low, high, log)
        return low


def test_default_space_sits_around_the_table_row() -> None:
    space = SearchSpace.around(1e-5, planned_steps=200)
    trial = _Trial()
    drawn = space.suggest(trial)
    low, high, log = trial.asked["lr"]
    assert (low, high, log) == (pytest.approx(1e-6), pytest.approx(1e-4), True)
    assert set(trial.asked) == {"lr", "weight_decay", "warmup_steps", "plateau_patience", "plateau_factor"}
    assert trial.asked["warmup_steps"][:2] == (0, 50)  # up to a quarter of the trial's optimizer steps
    values = space.trial_values(drawn)
    assert values["early_stop_patience"] == values["plateau_patience"] + 1 == 2
    assert values["min_lr"] == pytest.approx(1e-7)  # the default floor: 1e-6 / 10 is not below it


def test_fix_takes_a_name_out_and_range_widens_or_adds_one() -> None:
    space = SearchSpace.around(
        5e-7, 40, fix={"weight_decay": 0.02, "batch_size": 4}, ranges={"lr": (1e-8, 1e-3), "grad_clip": (0.3, 3)}
    )
    trial = _Trial()
    values = space.trial_values(space.suggest(trial))
    assert "weight_decay" not in trial.asked and values["weight_decay"] == 0.02 and values["batch_size"] == 4
    assert trial.asked["lr"] == (1e-8, 1e-3, True) and trial.asked["grad_clip"] == (0.3, 3.0, True)
    assert values["min_lr"] == pytest.approx(1e-9)  # an LR under the 1e-7 floor gets a floor a tenth of it


def test_the_table_values_are_a_trial_only_inside_the_ranges() -> None:
    assert SearchSpace.around(5e-6, 100).table_trial(5e-6, 0.05) == {
        "lr": 5e-6,
        "weight_decay": 0.05,
        "warmup_steps": 0,
        "plateau_patience": 5,
        "plateau_factor": 0.5,
    }
    assert SearchSpace.around(5e-6, 100, ranges={"lr": (1e-5, 1e-3)}).table_trial(5e-6, 0.05) is None


@pytest.mark.parametrize(
    ("fix", "ranges", "message"),
    [
        ({"learning_rate": 1e-5}, {}, "--fix learning_rate: unknown parameter"),
        ({}, {"batch_size": (1, 8)}, "--range batch_size: unknown parameter"),
        ({}, {"lr": (1e-3, 1e-5)}, "--range lr=0.001:1e-05 is empty"),
        ({}, {"plateau_factor": (0.5, 0.5)}, "is empty"),
        ({}, {"weight_decay": (0.0, 0.1)}, "LO must be above 0"),
        ({}, {"warmup_steps": (0.5, 10)}, "whole numbers only"),
        ({"epochs": 3}, {}, "--budget-epochs"),
        ({"lr": 1e-5}, {"lr": (1e-6, 1e-4)}, "both fixed (--fix) and searched"),
    ],
)
def test_bad_names_and_ranges_are_one_line(fix: dict, ranges: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        SearchSpace.around(1e-5, 100, fix=fix, ranges=ranges)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_option_parsing() -> None:
    assert parse_fixes(["lr=1e-5", "batch-size=4", "lr_scheduler=cosine", "milestones=100,200"]) == {
        "lr": 1e-5,
        "batch_size": 4,
        "lr_scheduler": "cosine",
        "milestones": (100, 200),
    }
    assert parse_ranges(["lr=1e-6:1e-4"]) == {"lr": (1e-6, 1e-4)}
    assert parse_value("true") is True and parse_value("none") is None and math.isclose(parse_value("0.5"), 0.5)
    for bad in (["lr"], ["=3"], ["lr="]):
        with pytest.raises(ConfigError, match="expected NAME=VALUE"):
            parse_fixes(bad)
    with pytest.raises(ConfigError, match="expected NAME=LO:HI"):
        parse_ranges(["lr=1e-6"])


def test_space_survives_search_json() -> None:
    space = SearchSpace.around(1e-5, 100, fix={"milestones": (10, 20)}, ranges={"grad_clip": (0.5, 2)})
    again = SearchSpace.from_dict(json.loads(json.dumps(space.to_dict())))
    assert again == space


def test_recipe_file_round_trip_and_plain_values(tmp_path: Path) -> None:
    path = write_recipe_file(
        tmp_path / "best.json",
        {"lr": 2e-5, "milestones": (10, 20)},
        {"lr": "search s trial 3, eval loss 1.2345", "milestones": "search s trial 3, eval loss 1.2345"},
        {"trial": 3},
    )
    loaded = read_recipe_file(path)
    assert loaded.values == {"lr": 2e-5, "milestones": (10, 20)} and loaded.about == {"trial": 3}
    assert loaded.sources["lr"] == "search s trial 3, eval loss 1.2345"
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({"values": {"epochs": 4}}), encoding="utf-8")
    assert read_recipe_file(plain).sources == {"epochs": "recipe plain.json"}
    for text, message in (("{", "cannot read it as JSON"), ("[]", 'no "values"'), ('{"values": {"lr": {}}}', "has no")):
        plain.write_text(text, encoding="utf-8")
        with pytest.raises(ConfigError, match=message):
            read_recipe_file(plain)
