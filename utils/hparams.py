"""Hyperparameters: the dataset-hours table, defaults and their resolution, with sources.

Pure Python on purpose: ``--dry-run`` answers without importing torch, TTS or training code.

Resolution order (later wins): defaults -> dataset-hours table row -> preset -> recipe ->
command line. Every resolved value remembers where it came from (``sources``), so a dry run, a
log line or a checkpoint can say why the LR is what it is.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

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


# From the analysis of a 37.7-hour Amharic fine-tune. Lower bounds inclusive.
HOURS_TABLE: tuple[HoursRow, ...] = (
    HoursRow(0.0, 1.0, lr=5e-7, weight_decay=0.05),
    HoursRow(1.0, 3.0, lr=1e-6, weight_decay=0.05),
    HoursRow(3.0, 10.0, lr=5e-6, weight_decay=0.05),
    HoursRow(10.0, 40.0, lr=1e-5, weight_decay=0.01),
    HoursRow(40.0, None, lr=2e-5, weight_decay=0.01),
)

# The same scheduler for every row: ReduceLROnPlateau on eval loss.
SCHEDULER = "ReduceLROnPlateau"
# Every schedule the LR bridge knows (utils/training/lr_schedule.py); all count optimizer steps.
SCHEDULERS = ("ReduceLROnPlateau", "cosine", "inverse_sqrt", "MultiStepLR")

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
    "save_every_steps": None,  # checkpoint every N trainer steps (None: by time only, below)
    "save_every_minutes": 15.0,  # checkpoint (full training state) at the first optimizer step after this
    "keep_checkpoints": 2,
    "seed": 1,
    "num_loader_workers": 2,
    # other schedules (units: optimizer steps)
    "milestones": (),  # MultiStepLR: multiply the LR by gamma at each of these optimizer steps
    "gamma": 0.1,
    "anneal_steps": (),  # inverse_sqrt: multiply the LR by anneal_rate at each of these optimizer steps
    "anneal_rate": 0.3,
    # early stopping on eval loss (None: off)
    "early_stop_patience": None,  # evaluations without an improvement of early_stop_min_delta
    "early_stop_min_delta": 0.0,  # absolute eval-loss improvement that counts
    # health monitor thresholds (utils/training/health.py)
    "divergence_max_recoveries": 3,  # non-finite loss/gradient: reload + LR cut at most this often, then stop
    "divergence_lr_factor": 0.5,  # LR multiplier after each recovery
    "spike_ratio": 0.3,  # smoothed train loss this much (relative) above its running minimum ...
    "spike_window": 20,  # ... for this many optimizer steps in a row: a loss spike
    "plateau_window": 5,  # evaluations over which the best eval loss must improve ...
    "plateau_min_improvement": 0.01,  # ... by this much (relative), else a plateau
    "overfit_window": 3,  # evaluations in a row with eval loss rising while train loss falls
    "clip_window": 50,  # optimizer steps over which the share of clipped steps is measured
    "clip_share": 0.5,  # share of clipped steps that counts as saturation
    "update_ratio_every": 100,  # optimizer steps between update-to-weight ratio measurements (0: off)
    "update_ratio_low": 1e-6,  # ||update|| / ||weights|| per step below this: LR too small
    "update_ratio_high": 5e-3,  # above this: LR too large
}


@dataclass(frozen=True)
class Preset:
    """A named "optimization level": values it sets, why, and an optional LR multiplier.

    ``lr_scale`` multiplies the LR of the layers below the preset (the table row, or with
    ``--restore`` the LR the restored run had reached); a command-line ``--lr`` still wins.
    """

    name: str
    summary: str
    values: Mapping[str, Any]
    why: Mapping[str, str]
    lr_scale: float | None = None
    lr_why: str = ""
    needs_restore: bool = False

    def rows(self) -> list[tuple[str, str, str]]:
        """(setting, value, why) rows for the --dry-run table."""
        out = []
        if self.lr_scale is not None:
            out.append(("lr", f"x{self.lr_scale:g}", self.lr_why))
        out += [(k, _show(v), self.why.get(k, "")) for k, v in self.values.items()]
        return out


# Each preset's texts say what it changes and why, nothing more: --dry-run prints them.
PRESETS: Mapping[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "stable",
            "for runs that spike or diverge: smaller, clipped, closely watched steps",
            values={"grad_clip": 0.5, "eval_every_steps": 100, "save_every_minutes": 5.0, "warmup_steps": 100},
            why={
                "grad_clip": "clip the gradient norm at 0.5 (default 1.0): one bad batch cannot throw the weights far",
                "eval_every_steps": "evaluate every 100 optimizer steps (default: once per epoch): the plateau "
                "rule and the health checks see the eval loss sooner",
                "save_every_minutes": "a checkpoint every 5 minutes (default 15): a crash, or a divergence "
                "recovery that reloads the newest checkpoint, loses about 5 minutes of training at most",
                "warmup_steps": "100 optimizer steps of linear warmup (default 0): AdamW's moment estimates "
                "settle before full-size steps",
            },
            lr_scale=0.5,
            lr_why="half the table's LR: smaller steps for a run whose loss spiked or diverged at the table's LR",
        ),
        Preset(
            "fast",
            "for a first result sooner: warmup + cosine decay, a larger effective batch (336 samples per "
            "optimizer step instead of 252), twice the table's LR at the peak",
            values={"lr_scheduler": "cosine", "warmup_steps": 50, "batch_size": 8, "grad_accum": 42},
            why={
                "lr_scheduler": "cosine decay to min_lr over the planned optimizer steps (default "
                "ReduceLROnPlateau): the LR falls on a fixed plan, without waiting for plateau cuts",
                "warmup_steps": "50 optimizer steps of linear warmup in front of the cosine (default 0)",
                "batch_size": "micro-batch 8 (default 3) where the micro-batch is not sized automatically (the "
                "CPU, --no-auto-batch); on a GPU the automatic micro-batch replaces it with the largest divisor of "
                "336 that fits in memory (84 x accumulation 4, say) and keeps the effective batch of 336",
                "grad_accum": "8 x 42 = 336 samples per optimizer step (default 3 x 84 = 252): a third more samples "
                "per step, so fewer optimizer steps per epoch, each averaging more samples",
            },
            lr_scale=2.0,
            lr_why="twice the table's LR at the peak, reached after the warmup; the cosine brings it down to min_lr "
            "by the end of the planned steps",
        ),
        Preset(
            "plateau-breaker",
            "restart from the best checkpoint (--restore) with a cut LR and tighter clipping",
            values={"grad_clip": 0.3, "warmup_steps": 20, "plateau_patience": 3},
            why={
                "grad_clip": "clip the gradient norm at 0.3 (default 1.0): small steps from the restored weights",
                "warmup_steps": "20 optimizer steps of linear warmup: the restored run's AdamW state is not "
                "taken, the optimizer starts fresh",
                "plateau_patience": "cut the LR after 3 evaluations without improvement (default 5)",
            },
            lr_scale=0.3,
            lr_why="0.3 x the LR the restored run had reached at that checkpoint (plateau and divergence cuts "
            "included): a run that stopped improving gets smaller steps",
            needs_restore=True,
        ),
    )
}


def _show(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def preset_table(names: Sequence[str] | None = None) -> list[dict[str, str]]:
    """Rows (preset, setting, value, why) of the named presets (default all), for --dry-run."""
    rows = []
    for name in names or PRESETS:
        preset = get_preset(name)
        for key, value, why in preset.rows():
            rows.append({"preset": name, "setting": key, "value": value, "why": why})
    return rows


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}") from None


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
    preset: str | None = None

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def scheduler_params(self) -> dict[str, Any]:
        """Parameters of the LR scheduler, as written into the GPTTrainerConfig."""
        v = self.values
        params = {
            "mode": "min",
            "factor": v["plateau_factor"],
            "patience": v["plateau_patience"],
            "threshold": v["plateau_threshold"],
            "min_lr": v["min_lr"],
            "warmup_steps": v["warmup_steps"],
        }
        if v["lr_scheduler"] == "MultiStepLR":
            params.update(milestones=list(v["milestones"]), gamma=v["gamma"])
        if v["lr_scheduler"] == "inverse_sqrt":
            params.update(anneal_steps=list(v["anneal_steps"]), anneal_rate=v["anneal_rate"])
        return params

    def as_dict(self) -> dict[str, Any]:
        """The dry-run view: one flat JSON-able object."""
        order = ["lr", "weight_decay", *(k for k in self.values if k not in ("lr", "weight_decay"))]
        out = {k: (list(self.values[k]) if isinstance(self.values[k], tuple) else self.values[k]) for k in order}
        if self.preset:
            out["preset"] = self.preset
            out["preset_table"] = preset_table([self.preset])
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
    lr_reference: tuple[float, str] | None = None,
) -> Resolved:
    """Resolve every hyperparameter: defaults, table row, preset, recipe, command line.

    Args:
        dataset_hours: hours of training audio, or None when unknown (the table is then skipped
            and lr/weight_decay must come from elsewhere).
        hours_source: where the hours came from ("cli", "measured from metadata", ...).
        cli: values the user gave on the command line (only those given; None values ignored).
        recipe: values a recipe chose.
        preset: values a preset chose (a mapping), or leave it None and name one of
            :data:`PRESETS` with ``preset_name``.
        lr_reference: (LR, source) that replaces the table's LR as the base a preset's
            ``lr_scale`` multiplies (``--restore``: the LR the restored run had reached).

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
    notes: list[str] = []
    scale = None
    if preset is None and preset_name:
        preset, scale = _named_preset(preset_name, lr_reference or (values.get("lr"), sources.get("lr")))
    explicit = {k for k, v in (cli or {}).items() if v is not None}
    for key in sorted(explicit & set(preset or {})):
        notes.append(
            f"preset {preset_name}: {key} {_show(preset[key])} not applied; the command line's {_show(cli[key])} wins"
        )
    preset_label = f"preset {preset_name}" if preset_name else "preset"
    _apply_layer(values, sources, preset_label, preset, lr_note=scale if isinstance(scale, str) else None)
    _apply_layer(values, sources, "recipe", recipe)
    _apply_layer(values, sources, "cli", cli)
    if "lr" not in values:
        raise ConfigError("no learning rate: give --dataset-hours (the table picks one) or --lr")
    _validate(values)
    return Resolved(
        values=values, sources=sources, dataset_hours=dataset_hours, row=row, notes=notes, preset=preset_name
    )


def _apply_layer(
    values: dict[str, Any],
    sources: dict[str, str],
    name: str,
    layer: Mapping[str, Any] | None,
    lr_note: str | None = None,
) -> None:
    """Set the layer's values (None: not given) over ``values``, naming ``name`` as their source.

    Raises:
        ConfigError: a name that is not a hyperparameter.
    """
    for key, value in (layer or {}).items():
        if value is None:
            continue
        if key not in HYPERPARAMETERS:
            raise ConfigError(f"unknown hyperparameter {key!r} in {name}; known: {', '.join(HYPERPARAMETERS)}")
        values[key] = value
        sources[key] = f"{name} ({lr_note})" if key == "lr" and lr_note else name


def _named_preset(name: str, lr_base: tuple[Any, Any]) -> tuple[dict[str, Any], Any]:
    """A preset's values, its ``lr_scale`` applied to ``(base LR, its source)``; and the LR's source note."""
    named = get_preset(name)
    preset, scale = dict(named.values), named.lr_scale
    if named.lr_scale is not None:
        base_lr, base_src = lr_base
        if base_lr is not None:
            preset["lr"] = base_lr * named.lr_scale
            scale = f"{base_src} x{named.lr_scale:g}"
    return preset, scale


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
        raise ConfigError(
            f"--plateau-patience must be a whole number of evaluations >= 0 (got {v['plateau_patience']})"
        )
    if v["min_lr"] > v["lr"]:
        raise ConfigError(f"--min-lr ({v['min_lr']:g}) is above the learning rate ({v['lr']:g}); lower --min-lr")
    for key in ("epochs", "batch_size", "grad_accum"):
        if int(v[key]) != v[key] or v[key] < 1:
            raise ConfigError(f"--{key.replace('_', '-')} must be a whole number >= 1 (got {v[key]})")
    if v["lr_scheduler"] not in SCHEDULERS:
        raise ConfigError(f"--lr-scheduler must be one of {', '.join(SCHEDULERS)} (got {v['lr_scheduler']!r})")
    for key in ("milestones", "anneal_steps"):
        steps = v[key]
        if (
            not isinstance(steps, (list, tuple))
            or any(int(s) != s or s < 1 for s in steps)
            or list(steps) != sorted(steps)
        ):
            raise ConfigError(
                f"--{key.replace('_', '-')} must be increasing whole optimizer steps >= 1 (got {steps!r})"
            )
    for key in ("gamma", "anneal_rate", "divergence_lr_factor"):
        if not 0 < v[key] < 1:
            raise ConfigError(f"--{key.replace('_', '-')} must be between 0 and 1 (got {v[key]})")
    if v["early_stop_patience"] is not None and (
        int(v["early_stop_patience"]) != v["early_stop_patience"] or v["early_stop_patience"] < 1
    ):
        raise ConfigError(
            f"--early-stop-patience must be a whole number of evaluations >= 1 (got {v['early_stop_patience']})"
        )
    if v["eval_every_steps"] is not None and (
        int(v["eval_every_steps"]) != v["eval_every_steps"] or v["eval_every_steps"] < 1
    ):
        raise ConfigError(f"--eval-every-steps must be a whole number >= 1 (got {v['eval_every_steps']})")
