"""The run configuration: every choice of a fine-tune as plain, frozen values, with sources.

Pure Python (no torch, no TTS), so a front end builds and shows it instantly. Values come in
layers, each later one winning: defaults, a recipe (``recipe=``), then the caller's own values
(the command line, a notebook cell, a web form). ``RunConfig.sources`` says for each field which
layer set it; hyperparameters keep their layers apart (``recipe_hparams`` under ``hparams``) so
that :func:`utils.hparams.resolve` can name the source of each resolved value.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any

from utils.errors import ConfigError
from utils.finetune.stage_names import DECODER_FIELDS, DVAE_FIELDS, STAGES, TIME_LIMITS
from utils.hparams import PRESETS

SPEED_PRESETS = ("fast", "low-vram", "stock")
# Where a run's numbers are shown besides metrics.jsonl (utils/training/dashboard.py); "none": nowhere.
LOGGERS = ("tensorboard", "wandb", "mlflow", "clearml", "aim", "none")

# Health-monitor thresholds a run may set: (name, type, meaning). The defaults are utils.hparams.DEFAULTS.
HEALTH_OPTIONS: tuple[tuple[str, type, str], ...] = (
    ("divergence_max_recoveries", int, "non-finite loss/gradient: checkpoint reloads with an LR cut before stopping"),
    ("divergence_lr_factor", float, "LR multiplier after each divergence recovery"),
    ("spike_ratio", float, "loss spike: smoothed train loss this much (relative) above its minimum"),
    ("spike_window", int, "loss spike: for this many optimizer steps"),
    ("plateau_window", int, "plateau: evaluations over which the best eval loss must improve"),
    ("plateau_min_improvement", float, "plateau: relative improvement needed over that window"),
    ("overfit_window", int, "overfitting: evaluations in a row with eval rising and train falling"),
    ("clip_window", int, "clipping saturation: optimizer steps in the window"),
    ("clip_share", float, "clipping saturation: share of clipped steps that triggers it"),
    ("update_ratio_every", int, "LR scale check: optimizer steps between update/weight ratio measurements (0 off)"),
    ("update_ratio_low", float, "LR too small below this update/weight norm ratio"),
    ("update_ratio_high", float, "LR too large above this update/weight norm ratio"),
)

# The hyperparameters a run may override (the "cli" and "recipe" layers of utils.hparams.resolve).
RUN_HPARAMS: tuple[str, ...] = (
    "epochs",
    "batch_size",
    "grad_accum",
    "lr",
    "weight_decay",
    "plateau_factor",
    "plateau_patience",
    "min_lr",
    "warmup_steps",
    "eval_every_steps",
    "save_every_steps",
    "save_every_minutes",
    "grad_clip",
    "seed",
    "num_loader_workers",
    "lr_scheduler",
    "milestones",
    "gamma",
    "anneal_steps",
    "anneal_rate",
    "keep_checkpoints",
    "early_stop_patience",
    "early_stop_min_delta",
    *(name for name, _, _ in HEALTH_OPTIONS),
)

# SpeedOptions switches a run may turn off (``speed_switches={"compile": False}``); compile may also be turned on.
SPEED_SWITCHES: tuple[str, ...] = (
    "bf16",
    "tf32",
    "fused_adamw",
    "fast_gelu",
    "sdpa_conditioning",
    "fast_heads",
    "packed_attention",
    "round_lengths",
    "cudnn_attention",
    "host_lengths",
    "no_kv_cache",
    "cache_dvae_codes",
    "bucket_lengths",
    "pin_memory",
    "compile",
    "compile_conditioning",
    "grad_checkpointing",
    "optimizer_8bit",
    "offload_frozen",
    "expandable_segments",
    "auto_batch",
    "oom_backoff",
)

# The demo's values: a recipe layer, so a dry run of the demo shows them with source "recipe".
DEMO_RECIPE: Mapping[str, Any] = MappingProxyType(
    {
        "epochs": 4,
        "batch_size": 2,
        "grad_accum": 1,
        "lr": 5e-5,  # the table's < 1 h row (5e-7) would not move a random tiny model in 20 steps
        "plateau_patience": 1,
        "save_every_steps": 10_000,
        "keep_checkpoints": 1,
        "num_loader_workers": 0,
    }
)

_PATHS = ("dataset", "train_csv", "eval_csv", "base_model", "output_path", "restore")
_MAPPINGS = (
    "hparams",
    "recipe_hparams",
    "speed_switches",
    "dvae_settings",
    "decoder_settings",
    "sources",
    "recipe_sources",
)
_LAYERED = ("speed_switches", "dvae_settings", "decoder_settings")  # merged layer by layer, each key its source


@dataclass(frozen=True)
class RunConfig:
    """Everything a fine-tune needs to know, as plain values (build it with :meth:`build`).

    Data: ``dataset`` (a folder with metadata_train.csv and metadata_eval.csv) or both
    ``train_csv`` and ``eval_csv``; ``demo`` uses the bundled demo data and the tiny base.
    ``dataset_hours`` picks the table row (None: measured from the rows the preflight keeps).
    ``hparams`` are the caller's hyperparameter overrides, ``recipe_hparams`` a recipe's (names
    as in :data:`RUN_HPARAMS`). ``restore``: start a new run from this checkpoint's weights
    (a ``.pth`` or a run folder). ``speed`` is a preset of :data:`SPEED_PRESETS`;
    ``speed_switches`` turn single levers on or off. ``logger`` is the dashboard of
    :data:`LOGGERS`. ``sources`` maps each field a layer set to "recipe" or "cli" (unset fields are
    "default"). ``recipe_sources`` names where a recipe file's values came from (``--recipe
    STUDY_DIR/best.json``: "search STUDY trial K, eval loss X"), shown instead of "recipe".

    Stages: ``stages`` names what to train, in the order of :data:`STAGES` (a subset, default the
    GPT only; a string "dvae,gpt,decoder" is split). Each stage's own values: ``dvae_lr``,
    ``dvae_epochs``, ``dvae_batch_size``; ``decoder_lr`` (generator), ``decoder_disc_lr``,
    ``decoder_epochs``, ``decoder_batch_size``, ``decoder_warmup_steps`` (mel-loss-only steps
    before the discriminator joins); any other setting of the stages' tables through
    ``dvae_settings`` / ``decoder_settings`` (names of :class:`utils.training.dvae.config.DVAEStageConfig`
    and :class:`utils.training.decoder.config.DecoderStageConfig`). None: the stage's default (see
    ``--dry-run``). Wall-time limits in minutes: ``max_minutes`` (GPT), ``dvae_max_minutes``,
    ``decoder_max_minutes``; past it a stage stops cleanly after the current step (evaluation,
    checkpoint, best model) and the next stage starts.
    """

    dataset: Path | None = None
    train_csv: Path | None = None
    eval_csv: Path | None = None
    language: str | None = None
    dataset_hours: float | str | None = None
    new_tokens: int = 2000
    new_token_warmup_steps: int = 0
    max_excluded_share: float = 0.2
    allow_mixed_script: bool = False  # keep transcripts mostly outside the language's script (preflight)
    base_model: Path | None = None
    output_path: Path = Path("runs")
    run_name: str = "xtts_ft"
    hparams: Mapping[str, Any] = field(default_factory=dict)
    recipe_hparams: Mapping[str, Any] = field(default_factory=dict)
    preset: str | None = None
    restore: Path | None = None
    speed: str = "fast"
    speed_switches: Mapping[str, bool] = field(default_factory=dict)
    test_sentences: int = 3
    quality_eval: bool | None = None  # objective scores at each save into metrics.jsonl; None: on with CUDA
    export: bool = True
    progress: bool = True
    plots: bool = True
    logger: str = "tensorboard"
    gpus: int = 1
    demo: bool = False
    stages: tuple[str, ...] = ("gpt",)
    max_minutes: float | None = None
    dvae_lr: float | None = None
    dvae_epochs: int | None = None
    dvae_batch_size: int | None = None
    dvae_max_minutes: float | None = None
    decoder_lr: float | None = None
    decoder_disc_lr: float | None = None
    decoder_epochs: int | None = None
    decoder_batch_size: int | None = None
    decoder_warmup_steps: int | None = None
    decoder_max_minutes: float | None = None
    dvae_settings: Mapping[str, Any] = field(default_factory=dict)
    decoder_settings: Mapping[str, Any] = field(default_factory=dict)
    sources: Mapping[str, str] = field(default_factory=dict)
    recipe_sources: Mapping[str, str] = field(default_factory=dict)  # a recipe file's own labels

    def __post_init__(self) -> None:
        for name in _PATHS:
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))
        for name in _MAPPINGS:
            object.__setattr__(self, name, MappingProxyType(dict(getattr(self, name) or {})))
        for layer in ("hparams", "recipe_hparams"):
            unknown = sorted(set(getattr(self, layer)) - set(RUN_HPARAMS))
            if unknown:
                raise ConfigError(f"unknown hyperparameter(s) {', '.join(unknown)}; known: {', '.join(RUN_HPARAMS)}")
        bad = sorted(set(self.speed_switches) - set(SPEED_SWITCHES))
        if bad:
            raise ConfigError(f"unknown speed switch(es) {', '.join(bad)}; known: {', '.join(SPEED_SWITCHES)}")
        if self.speed not in SPEED_PRESETS:
            raise ConfigError(f"speed {self.speed!r}: choose one of {', '.join(SPEED_PRESETS)}")
        if self.logger not in LOGGERS:
            raise ConfigError(f"logger {self.logger!r}: choose one of {', '.join(LOGGERS)}")
        if self.preset is not None and self.preset not in PRESETS:
            raise ConfigError(f"preset {self.preset!r}: choose one of {', '.join(PRESETS)}")
        if int(self.gpus) < 1:
            raise ConfigError(f"--gpus must be a whole number >= 1 (got {self.gpus})")
        object.__setattr__(self, "stages", parse_stages(self.stages))
        self._check_stages()

    def _check_stages(self) -> None:
        """The stage values are valid, and the stages can run with the rest of the run's options."""
        from utils.finetune.stage_values import decoder_stage, dvae_stage

        for name in (*TIME_LIMITS.values(), *DVAE_FIELDS, *DECODER_FIELDS):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and value > 0):
                raise ConfigError(f"--{name.replace('_', '-')} must be a number > 0 (got {value!r})")
        dvae_stage(self)  # unknown names and invalid values are refused now, not when the stage starts
        decoder_stage(self)
        others = [s for s in self.stages if s != "gpt"]
        if others and int(self.gpus) > 1:
            raise ConfigError(
                f"--gpus {self.gpus}: the {' and '.join(others)} stage(s) train on one GPU; run --stages gpt with "
                "--gpus N, or these stages without --gpus"
            )
        if "decoder" in self.stages and "gpt" in self.stages and not self.export:
            raise ConfigError(
                "--no-export with the decoder stage: the decoder trains on the GPT stage's export; drop --no-export"
            )

    # --- construction -------------------------------------------------------------------------

    @classmethod
    def build(
        cls, recipe: Mapping[str, Any] | None = None, recipe_sources: Mapping[str, str] | None = None, **values: Any
    ) -> RunConfig:
        """Layer defaults, a recipe and the caller's values (None means "not given").

        Both ``recipe`` and ``values`` take field names and hyperparameter names side by side
        (``{"language": "am", "epochs": 10}``); hyperparameters go to their own layers.
        ``recipe_sources`` labels recipe values (a recipe file's sources).

        Raises:
            ConfigError: an unknown name or an invalid value.
        """
        kwargs: dict[str, Any] = {"hparams": {}, "recipe_hparams": {}, **{name: {} for name in _LAYERED}}
        sources: dict[str, str] = {}
        names = {f.name for f in fields(cls)} - set(_MAPPINGS)
        for layer_name, layer, hp_key in (("recipe", recipe or {}, "recipe_hparams"), ("cli", values, "hparams")):
            for key, value in layer.items():
                if value is None:
                    continue
                if key in RUN_HPARAMS:
                    kwargs[hp_key][key] = value
                elif key in _LAYERED:
                    kwargs.setdefault(key, {}).update(value)
                    sources[key] = layer_name
                    if key != "speed_switches":  # a stage setting's source is shown per setting (--dry-run)
                        sources.update({f"{key}.{name}": layer_name for name in value})
                elif key in names:
                    kwargs[key] = value
                    sources[key] = layer_name
                else:
                    raise ConfigError(
                        f"unknown run option {key!r} in the {layer_name}; known: {', '.join(sorted(names))}"
                    )
        return cls(**kwargs, sources=sources, recipe_sources=dict(recipe_sources or {}))

    def replace(self, **changes: Any) -> RunConfig:
        """A copy with ``changes`` applied as the caller's values (hyperparameters into ``hparams``)."""
        hp = dict(self.hparams)
        direct: dict[str, Any] = {}
        sources = dict(self.sources)
        for key, value in changes.items():
            if key in RUN_HPARAMS:
                if value is None:
                    hp.pop(key, None)
                else:
                    hp[key] = value
            else:
                direct[key] = value
                sources[key] = "cli"
        return dataclasses.replace(self, hparams=hp, sources=sources, **direct)

    # --- views --------------------------------------------------------------------------------

    def source(self, name: str) -> str:
        """Which layer set field ``name``: "default", "recipe" or "cli"."""
        return self.sources.get(name, "default")

    @property
    def language_code(self) -> str:
        return self.language or "en"

    def to_dict(self) -> dict[str, Any]:
        """JSON-able values (paths as strings); :meth:`from_dict` reads it back."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, Mapping):
                value = {k: (list(v) if isinstance(v, tuple) else v) for k, v in value.items()}
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown run configuration key(s) {', '.join(unknown)}")
        data = dict(data)
        for layer in ("hparams", "recipe_hparams"):
            if layer in data:
                data[layer] = {k: (tuple(v) if isinstance(v, list) else v) for k, v in dict(data[layer]).items()}
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def parse_stages(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"dvae,gpt"`` or ``["dvae", "gpt"]`` as a tuple of stage names, checked.

    Raises:
        ConfigError: an unknown name, a repeated one, none at all, or another order than :data:`STAGES`.
    """
    names = value.split(",") if isinstance(value, str) else list(value or [])
    stages = tuple(str(n).strip().lower() for n in names if str(n).strip())
    text = ",".join(stages) or repr(value)
    unknown = [n for n in stages if n not in STAGES]
    if unknown or not stages:
        raise ConfigError(
            f"--stages {text}: unknown stage(s) {', '.join(unknown) or '(none given)'}; choose from "
            f"{', '.join(STAGES)} (e.g. --stages dvae,gpt,decoder)"
        )
    if list(stages) != sorted(set(stages), key=STAGES.index):
        ordered = ",".join(sorted(set(stages), key=STAGES.index))
        raise ConfigError(f"--stages {text}: stages train in the order {', '.join(STAGES)}, each once; use {ordered}")
    return stages
