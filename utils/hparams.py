"""Hyperparameters: the dataset-hours table, defaults and their resolution, with sources.

Pure Python on purpose: ``--dry-run`` answers without importing torch, TTS or training code.

Resolution order (later wins): defaults -> dataset-hours table row -> preset -> recipe ->
command line. Every resolved value remembers where it came from (``sources``), so a dry run, a
log line or a checkpoint can say why the LR is what it is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from utils.errors import ConfigError


@dataclass(frozen=True)
class HoursRow:
    """One row of the dataset-hours table. ``min_hours`` is inclusive, ``max_hours`` exclusive."""

    min_hours: float
    max_hours: float | None
    lr: float
    weight_decay: float

    def __post_init__(self) -> None:
        if self.max_hours is not None and self.max_hours <= self.min_hours:
            raise ValueError(f"table row {self.min_hours}-{self.max_hours}: empty range")
        if not (0 < self.lr < 1) or not (0 <= self.weight_decay < 1):
            raise ValueError(f"table row {self.min_hours}: lr/weight_decay out of range")

    @property
    def label(self) -> str:
        lo = f"{self.min_hours:g}"
        return f"table row >= {lo} h" if self.max_hours is None else f"table row {lo}-{self.max_hours:g} h"

    def contains(self, hours: float) -> bool:
        return hours >= self.min_hours and (self.max_hours is None or hours < self.max_hours)


# From the owner's analysis of their 37.7-hour Amharic fine-tune. Lower bounds inclusive.
HOURS_TABLE: tuple[HoursRow, ...] = (
    HoursRow(0.0, 1.0, lr=5e-7, weight_decay=0.05),
    HoursRow(1.0, 3.0, lr=1e-6, weight_decay=0.05),
    HoursRow(3.0, 10.0, lr=5e-6, weight_decay=0.05),
    HoursRow(10.0, 40.0, lr=1e-5, weight_decay=0.01),
    HoursRow(40.0, None, lr=2e-5, weight_decay=0.01),
)

# The same scheduler for every row: ReduceLROnPlateau on eval loss.
SCHEDULER = "ReduceLROnPlateau"

# Defaults for everything the table does not choose. Units are stated in the names or comments.
DEFAULTS: Mapping[str, Any] = {
    "lr_scheduler": SCHEDULER,
    "plateau_factor": 0.5,
    "plateau_patience": 5,  # evaluations without improvement before the LR is cut
    "plateau_threshold": 1e-4,  # relative improvement that counts (torch's default, mode "rel")
    "min_lr": 1e-7,
    "warmup_steps": 0,  # optimizer steps of linear warmup in front of the schedule
    "optimizer": "AdamW",
    "betas": (0.9, 0.96),
    "eps": 1e-8,
    "weight_decay_only_on_weights": True,  # as Coqui's XTTS recipe
    "epochs": 10,
    "batch_size": 3,  # micro-batch (samples per forward pass)
    "grad_accum": 84,  # Coqui's recipe: 3 x 84 = 252 samples per optimizer step
    "eval_every_steps": None,  # None: once per epoch (Trainer steps = micro-batches)
    "grad_clip": 1.0,
    "save_every_steps": 1000,
    "keep_checkpoints": 2,
    "seed": 1,
    "num_loader_workers": 2,
}

HYPERPARAMETERS: tuple[str, ...] = ("lr", "weight_decay", *DEFAULTS.keys())


def row_for_hours(hours: float) -> HoursRow:
    """Return the table row for ``hours`` of training audio.

    Raises:
        ConfigError: if ``hours`` is not a positive finite number.
    """
    check_hours(hours)
    for row in HOURS_TABLE:
        if row.contains(hours):
            return row
    raise AssertionError(f"HOURS_TABLE does not cover {hours}")  # the table is contiguous from 0


def check_hours(hours: Any) -> float:
    """Validate a dataset-hours value and return it as float."""
    try:
        value = float(hours)
    except (TypeError, ValueError):
        raise ConfigError(
            f"--dataset-hours must be a positive number of hours (got {hours!r}); e.g. --dataset-hours 37.7, "
            "or leave it out to measure the hours from the training metadata"
        ) from None
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(
            f"--dataset-hours must be a positive number of hours (got {hours!r}); e.g. --dataset-hours 37.7, "
            "or leave it out to measure the hours from the training metadata"
        )
    return value


@dataclass
class Resolved:
    """Resolved hyperparameters and, for each, where its value came from."""

    values: dict[str, Any]
    sources: dict[str, str]
    dataset_hours: float | None
    row: HoursRow | None = None
    notes: list[str] = field(default_factory=list)

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def scheduler_params(self) -> dict[str, Any]:
        """Parameters of the LR scheduler, as written into the GPTTrainerConfig."""
        return {
            "mode": "min",
            "factor": self.values["plateau_factor"],
            "patience": self.values["plateau_patience"],
            "threshold": self.values["plateau_threshold"],
            "min_lr": self.values["min_lr"],
            "warmup_steps": self.values["warmup_steps"],
        }

    def as_dict(self) -> dict[str, Any]:
        """The dry-run view: one flat JSON-able object."""
        order = ["lr", "weight_decay", *(k for k in self.values if k not in ("lr", "weight_decay"))]
        out = {k: (list(self.values[k]) if isinstance(self.values[k], tuple) else self.values[k]) for k in order}
        out["lr_scheduler_params"] = self.scheduler_params()
        out["dataset_hours"] = self.dataset_hours
        out["table_row"] = self.row.label if self.row else None
        out["sources"] = dict(self.sources)
        if self.notes:
            out["notes"] = list(self.notes)
        return out


def resolve(
    *,
    dataset_hours: float | None,
    hours_source: str = "cli",
    cli: Mapping[str, Any] | None = None,
    recipe: Mapping[str, Any] | None = None,
    preset: Mapping[str, Any] | None = None,
    preset_name: str | None = None,
) -> Resolved:
    """Resolve every hyperparameter: defaults, table row, preset, recipe, command line.

    Args:
        dataset_hours: hours of training audio, or None when unknown (the table is then skipped
            and lr/weight_decay must come from elsewhere).
        hours_source: where the hours came from ("cli", "measured from metadata", ...).
        cli: values the user gave on the command line (only those given; None values ignored).
        recipe: values a recipe chose.
        preset: values a named preset chose.

    Raises:
        ConfigError: on unknown keys or invalid values.
    """
    values: dict[str, Any] = dict(DEFAULTS)
    sources: dict[str, str] = {k: "default" for k in DEFAULTS}
    row = None
    if dataset_hours is not None:
        dataset_hours = check_hours(dataset_hours)
        row = row_for_hours(dataset_hours)
        values["lr"], values["weight_decay"] = row.lr, row.weight_decay
        sources["lr"] = sources["weight_decay"] = f"{row.label} ({dataset_hours:g} h, {hours_source})"
    for layer_name, layer in (
        (f"preset {preset_name}" if preset_name else "preset", preset),
        ("recipe", recipe),
        ("cli", cli),
    ):
        for key, value in (layer or {}).items():
            if value is None:
                continue
            if key not in HYPERPARAMETERS:
                raise ConfigError(f"unknown hyperparameter {key!r} in {layer_name}; known: {', '.join(HYPERPARAMETERS)}")
            values[key] = value
            sources[key] = layer_name
    if "lr" not in values:
        raise ConfigError("no learning rate: give --dataset-hours (the table picks one) or --lr")
    _validate(values)
    return Resolved(values=values, sources=sources, dataset_hours=dataset_hours, row=row)


def _validate(v: dict[str, Any]) -> None:
    def positive(key: str, allow_zero: bool = False) -> None:
        val = v[key]
        ok = isinstance(val, (int, float)) and math.isfinite(val) and (val >= 0 if allow_zero else val > 0)
        if not ok:
            raise ConfigError(f"{key} must be a {'non-negative' if allow_zero else 'positive'} number (got {val!r})")

    for key in ("lr", "min_lr", "eps"):
        positive(key)
    positive("weight_decay", allow_zero=True)
    positive("warmup_steps", allow_zero=True)
    if not 0 < v["plateau_factor"] < 1:
        raise ConfigError(f"--plateau-factor must be between 0 and 1 (got {v['plateau_factor']}); 0.5 halves the LR")
    if int(v["plateau_patience"]) != v["plateau_patience"] or v["plateau_patience"] < 0:
        raise ConfigError(f"--plateau-patience must be a whole number of evaluations >= 0 (got {v['plateau_patience']})")
    if v["min_lr"] > v["lr"]:
        raise ConfigError(f"--min-lr ({v['min_lr']:g}) is above the learning rate ({v['lr']:g}); lower --min-lr")
    for key in ("epochs", "batch_size", "grad_accum"):
        if int(v[key]) != v[key] or v[key] < 1:
            raise ConfigError(f"--{key.replace('_', '-')} must be a whole number >= 1 (got {v[key]})")
    if v["eval_every_steps"] is not None and (int(v["eval_every_steps"]) != v["eval_every_steps"] or v["eval_every_steps"] < 1):
        raise ConfigError(f"--eval-every-steps must be a whole number >= 1 (got {v['eval_every_steps']})")
