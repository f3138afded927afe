"""The dataset-hours table and hyperparameter resolution."""

import math

import pytest

from utils.errors import ConfigError
from utils.hparams import HOURS_TABLE, resolve, row_for_hours


@pytest.mark.parametrize(
    ("hours", "lr", "wd"),
    [
        (0.001, 5e-7, 0.05),
        (0.999, 5e-7, 0.05),
        (1.0, 1e-6, 0.05),
        (2.999, 1e-6, 0.05),
        (3.0, 5e-6, 0.05),
        (9.999, 5e-6, 0.05),
        (10.0, 1e-5, 0.01),
        (37.7, 1e-5, 0.01),
        (39.999, 1e-5, 0.01),
        (40.0, 2e-5, 0.01),
        (1000.0, 2e-5, 0.01),
    ],
)
def test_every_row_and_boundary(hours: float, lr: float, wd: float) -> None:
    row = row_for_hours(hours)
    assert (row.lr, row.weight_decay) == (lr, wd)
    resolved = resolve(dataset_hours=hours)
    assert resolved["lr"] == lr and resolved["weight_decay"] == wd
    assert resolved.sources["lr"].startswith("table row")


def test_table_is_contiguous_from_zero() -> None:
    assert HOURS_TABLE[0].min_hours == 0
    for a, b in zip(HOURS_TABLE, HOURS_TABLE[1:]):
        assert a.max_hours == b.min_hours
    assert HOURS_TABLE[-1].max_hours is None


def test_scheduler_defaults_for_every_row() -> None:
    for hours in (0.5, 2, 5, 20, 50):
        params = resolve(dataset_hours=hours).scheduler_params()
        assert params["factor"] == 0.5 and params["patience"] == 5 and params["min_lr"] == 1e-7
        assert params["mode"] == "min"


def test_cli_overrides_table_and_records_source() -> None:
    resolved = resolve(dataset_hours=37.7, cli={"lr": 3e-6, "plateau_patience": 2, "epochs": None})
    assert resolved["lr"] == 3e-6 and resolved.sources["lr"] == "cli"
    assert resolved["weight_decay"] == 0.01 and resolved.sources["weight_decay"].startswith("table row 10-40 h")
    assert resolved["plateau_patience"] == 2 and resolved["epochs"] == 10  # None means "not given"


def test_order_recipe_then_cli() -> None:
    resolved = resolve(dataset_hours=5, recipe={"lr": 1e-4, "epochs": 3}, cli={"epochs": 7})
    assert (resolved["lr"], resolved.sources["lr"]) == (1e-4, "recipe")
    assert (resolved["epochs"], resolved.sources["epochs"]) == (7, "cli")


@pytest.mark.parametrize("bad", [0, -1, "abc", math.nan, math.inf, ""])
def test_bad_hours_rejected(bad: object) -> None:
    with pytest.raises(ConfigError, match="positive number of hours"):
        resolve(dataset_hours=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("cli", "msg"),
    [
        ({"plateau_factor": 1.5}, "plateau-factor"),
        ({"min_lr": 1.0}, "min-lr"),
        ({"batch_size": 0}, "batch-size"),
        ({"eval_every_steps": 0}, "eval-every-steps"),
        ({"lr": -1.0}, "lr must be"),
    ],
)
def test_bad_values_rejected(cli: dict, msg: str) -> None:
    with pytest.raises(ConfigError, match=msg):
        resolve(dataset_hours=5, cli=cli)
