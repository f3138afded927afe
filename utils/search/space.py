"""The search space: which hyperparameters a search tries, over which ranges, and what it fixes.

The default space sits around the hours table's row for the dataset (utils/hparams.py): the LR
on a log scale from a tenth to ten times the row's, weight decay, warmup, and the plateau
scheduler's patience and factor. The number of epochs is not drawn: every trial runs up to the
search's epoch budget with early stopping, and the epoch of the best trial's best evaluation is
what the search reports. ``--fix NAME=VALUE`` takes a name out of the search (or sets any other
run hyperparameter for every trial); ``--range NAME=LO:HI`` widens, narrows or adds one.

Pure Python: no torch, no Optuna at import (a trial object is passed in).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from utils.errors import ConfigError
from utils.finetune import RUN_HPARAMS
from utils.hparams import DEFAULTS

# What a range may be given for: name -> (whole numbers, log scale)
SEARCHABLE: Mapping[str, tuple[bool, bool]] = {
    "lr": (False, True),
    "weight_decay": (False, True),
    "warmup_steps": (True, False),
    "plateau_patience": (True, False),
    "plateau_factor": (False, False),
    "early_stop_patience": (True, False),
    "grad_clip": (False, True),
    "min_lr": (False, True),
}
# Searched unless fixed; the others in SEARCHABLE only when a --range names them.
DEFAULT_SEARCHED = ("lr", "weight_decay", "warmup_steps", "plateau_patience", "plateau_factor")


@dataclass(frozen=True)
class Param:
    """One searched hyperparameter: a range, whole numbers or not, log scale or not."""

    name: str
    low: float
    high: float
    integer: bool = False
    log: bool = False

    def __post_init__(self) -> None:
        if not (math.isfinite(self.low) and math.isfinite(self.high)) or self.low >= self.high:
            raise ConfigError(
                f"--range {self.name}={_show(self.low)}:{_show(self.high)} is empty: give LO < HI, "
                f"e.g. --range {self.name}={_show(self.low)}:{_show(self.low * 10 if self.low > 0 else 1)}"
            )
        if self.log and self.low <= 0:
            raise ConfigError(
                f"--range {self.name}: searched on a log scale, so LO must be above 0 (got {_show(self.low)})"
            )
        if self.integer and (self.low != int(self.low) or self.high != int(self.high)):
            raise ConfigError(f"--range {self.name}: whole numbers only (got {_show(self.low)}:{_show(self.high)})")

    def suggest(self, trial: Any) -> float | int:
        """Draw this parameter's value for an Optuna trial."""
        if self.integer:
            return int(trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log))
        return float(trial.suggest_float(self.name, self.low, self.high, log=self.log))

    def to_dict(self) -> dict[str, Any]:
        return {"low": self.low, "high": self.high, "integer": self.integer, "log": self.log}


@dataclass(frozen=True)
class SearchSpace:
    """Searched parameters and the values every trial shares (``fixed``)."""

    params: Mapping[str, Param]
    fixed: Mapping[str, Any]

    @classmethod
    def around(
        cls,
        row_lr: float,
        planned_steps: int,
        *,
        fix: Mapping[str, Any] | None = None,
        ranges: Mapping[str, tuple[float, float]] | None = None,
    ) -> SearchSpace:
        """The default space around a table row's LR, with the user's fixes and ranges applied.

        Args:
            row_lr: the LR of the table's row for the dataset's hours.
            planned_steps: optimizer steps one trial plans (warmup goes up to a quarter of them).
            fix: values every trial uses (names from :data:`utils.finetune.RUN_HPARAMS`).
            ranges: ``name -> (low, high)`` for names in :data:`SEARCHABLE`.

        Raises:
            ConfigError: an unknown name, an empty range, a name both fixed and ranged.
        """
        fix, ranges = dict(fix or {}), dict(ranges or {})
        check_names(fix, ranges)
        defaults = {
            "lr": (row_lr / 10, row_lr * 10),
            "weight_decay": (1e-3, 1e-1),
            "warmup_steps": (0, max(1, planned_steps // 4)),
            "plateau_patience": (1, 6),
            "plateau_factor": (0.2, 0.8),
        }
        params: dict[str, Param] = {}
        for name in (*DEFAULT_SEARCHED, *(n for n in ranges if n not in DEFAULT_SEARCHED)):
            if name in fix:
                continue
            integer, log = SEARCHABLE[name]
            low, high = ranges.get(name, defaults.get(name, (0.0, 0.0)))
            params[name] = Param(name, float(low), float(high), integer=integer, log=log)
        return cls(params, fix)

    def suggest(self, trial: Any) -> dict[str, Any]:
        """Draw every searched parameter for ``trial``."""
        return {name: param.suggest(trial) for name, param in self.params.items()}

    def trial_values(self, drawn: Mapping[str, Any]) -> dict[str, Any]:
        """Everything a trial sets: the fixed values, the drawn ones, and two that follow from them.

        - ``early_stop_patience`` (unless fixed or searched): one evaluation more than the plateau
          patience, so a trial gets one LR cut before early stopping ends it.
        - ``min_lr`` (unless fixed or searched): the default floor, or a tenth of the LR when the
          LR is below that floor (a low row's range reaches under it).
        """
        values = {**self.fixed, **drawn}
        if "early_stop_patience" not in values:
            patience = values.get("plateau_patience", DEFAULTS["plateau_patience"])
            values["early_stop_patience"] = int(patience) + 1
        if "min_lr" not in values and "lr" in values:
            values["min_lr"] = min(float(DEFAULTS["min_lr"]), float(values["lr"]) / 10)
        return values

    def table_trial(self, row_lr: float, row_weight_decay: float) -> dict[str, Any] | None:
        """The table's own values as a trial (the search's first, so it measures the table too).

        None when one of them lies outside its range (the user moved the range away from the table).
        """
        table = {"lr": row_lr, "weight_decay": row_weight_decay, **DEFAULTS}
        values = {name: table[name] for name in self.params if table.get(name) is not None}
        if any(not self.params[name].low <= float(v) <= self.params[name].high for name, v in values.items()):
            return None
        return values

    def to_dict(self) -> dict[str, Any]:
        return {
            "params": {name: p.to_dict() for name, p in self.params.items()},
            "fixed": {k: list(v) if isinstance(v, tuple) else v for k, v in self.fixed.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SearchSpace:
        params = {name: Param(name, **spec) for name, spec in dict(data["params"]).items()}
        fixed = {k: tuple(v) if isinstance(v, list) else v for k, v in dict(data.get("fixed") or {}).items()}
        return cls(params, fixed)


def check_names(fix: Mapping[str, Any], ranges: Mapping[str, Any]) -> None:
    """Refuse unknown names, ``epochs`` and a name both fixed and ranged (one line each)."""
    for name in fix:
        if name == "epochs":
            raise ConfigError("--fix epochs: give --budget-epochs N instead (trials stop early on their own)")
        if name not in RUN_HPARAMS:
            raise ConfigError(f"--fix {name}: unknown parameter; known: {', '.join(RUN_HPARAMS)}")
    for name in ranges:
        if name not in SEARCHABLE:
            raise ConfigError(f"--range {name}: unknown parameter; a range may be given for {', '.join(SEARCHABLE)}")
        if name in fix:
            raise ConfigError(f"{name} is both fixed (--fix) and searched (--range); give one of them")


def parse_fixes(items: Iterable[str]) -> dict[str, Any]:
    """``["lr=1e-5", "milestones=100,200", "lr_scheduler=cosine"]`` -> values (numbers parsed)."""
    out: dict[str, Any] = {}
    for item in items:
        name, value = _split(item, "--fix", "NAME=VALUE, e.g. --fix batch_size=4")
        out[name] = parse_value(value)
    return out


def parse_ranges(items: Iterable[str]) -> dict[str, tuple[float, float]]:
    """``["lr=1e-6:1e-4"]`` -> ``{"lr": (1e-6, 1e-4)}``."""
    out: dict[str, tuple[float, float]] = {}
    for item in items:
        name, text = _split(item, "--range", "NAME=LO:HI, e.g. --range lr=1e-6:1e-4")
        lo, sep, hi = text.partition(":")
        try:
            if not sep:
                raise ValueError(text)
            out[name] = (float(lo), float(hi))
        except ValueError:
            raise ConfigError(f"--range {item}: expected NAME=LO:HI with numbers, e.g. --range lr=1e-6:1e-4") from None
    return out


def parse_value(text: str) -> Any:
    """A --fix value: a whole number, a number, true/false/none, whole numbers with commas, or text."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    if "," in text:
        try:
            return tuple(int(x) for x in text.split(",") if x.strip())
        except ValueError:
            pass
    return text


def _split(item: str, option: str, example: str) -> tuple[str, str]:
    name, sep, value = item.partition("=")
    name = name.strip().replace("-", "_")
    if not sep or not name or not value.strip():
        raise ConfigError(f"{option} {item!r}: expected {example}")
    return name, value.strip()


def _show(value: float) -> str:
    return f"{value:g}"
