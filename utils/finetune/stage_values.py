"""Each stage's values for a run, with where each came from: what ``--dry-run`` shows and the stages use.

Pure Python (no torch): the DVAE and decoder stages' tables (``DVAEStageConfig``,
``DecoderStageConfig``) give the defaults and their reasons; on top come, in this order, the demo's
values (``--demo``), then the run's ``dvae_settings`` / ``decoder_settings`` and flat fields
(``dvae_lr``, ``decoder_epochs``, ...) as the recipe and the caller set them. The GPT stage's values
are the resolved hyperparameters (:mod:`utils.hparams`).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from utils.finetune.stage_names import DECODER_FIELDS, DVAE_FIELDS, TIME_LIMITS, StageFields
from utils.training.decoder.config import SOURCES as DECODER_SOURCES
from utils.training.decoder.config import DecoderStageConfig
from utils.training.dvae.config import DEFAULT_SOURCES as DVAE_SOURCES
from utils.training.dvae.config import DVAEStageConfig

#: The demo's stage values (a recipe layer): a random tiny base on ten short clips, trained in
#: seconds on a CPU. 32-frame crops (0.37 s) and 4-frame segments fit the 2-4 s demo clips; the LRs
#: are high because a random decoder and DVAE must move within a few steps.
DEMO_DVAE: Mapping[str, Any] = MappingProxyType(
    {
        "lr": 1e-4,
        "epochs": 2,
        "batch_size": 4,
        "eval_batch_size": 16,
        "crop_frames": 32,
        "crops_per_clip": 1,
        "heldout_clips": 2,
        "num_loader_workers": 0,
    }
)
DEMO_DECODER: Mapping[str, Any] = MappingProxyType(
    {
        "lr_gen": 1e-3,
        "epochs": 2,
        "batch_size": 2,
        "segment_frames": 4,
        "segments_per_clip": 1,
        "warm_start_steps": 4,
        "eval_max_frames": 16,
        "save_every_minutes": None,
        "tensorboard_figures": False,
    }
)


def _layered(
    config: StageFields, demo: Mapping[str, Any], settings: str, flat: Mapping[str, str]
) -> tuple[dict[str, Any], dict[str, str]]:
    """The values set above a stage's defaults and the source of each."""
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    if config.demo:
        values.update(demo)
        sources.update({name: "recipe (the demo's stage values)" for name in demo})
    for name, value in dict(getattr(config, settings)).items():
        values[name] = value
        sources[name] = config.source(f"{settings}.{name}")
    for field_name, name in flat.items():
        value = getattr(config, field_name)
        if value is not None:
            values[name] = value
            sources[name] = f"{config.source(field_name)} (--{field_name.replace('_', '-')})"
    return values, sources


def dvae_stage(config: StageFields) -> tuple[DVAEStageConfig, dict[str, str]]:
    """The run's :class:`~utils.training.dvae.config.DVAEStageConfig` and the source of each value set.

    Raises:
        ConfigError: an unknown setting or an invalid value.
    """
    values, sources = _layered(config, DEMO_DVAE, "dvae_settings", DVAE_FIELDS)
    return DVAEStageConfig.build(**values), sources


def decoder_stage(config: StageFields) -> tuple[DecoderStageConfig, dict[str, str]]:
    """The run's :class:`~utils.training.decoder.config.DecoderStageConfig` and the source of each value set.

    Raises:
        ConfigError: an unknown setting or an invalid value.
    """
    values, sources = _layered(config, DEMO_DECODER, "decoder_settings", DECODER_FIELDS)
    return DecoderStageConfig.build(**values), sources


def _with_sources(stage: Any, defaults: Mapping[str, str], sources: Mapping[str, str]) -> dict[str, Any]:
    """A stage table's values as ``{name: {value, source}}``: the run's source where the run set a
    value, else the default's reason."""
    out = {}
    for name, item in stage.describe().items():
        source = sources.get(name) or f"default: {defaults.get(name, 'the stage table')}"
        out[name] = {"value": item["value"], "source": source}
    return out


def _time_limit(config: StageFields, stage: str) -> dict[str, Any]:
    name = TIME_LIMITS[stage]
    value = getattr(config, name)
    source = "default: no limit" if value is None else f"{config.source(name)} (--{name.replace('_', '-')})"
    return {"value": value, "source": source}


def describe_stages(config: StageFields, gpt_values: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Every stage's values with their sources (``--dry-run``): ``{"order": [...], "dvae": {...}, ...}``.

    ``gpt_values``: the resolved hyperparameters' dict (``Resolved.as_dict()``), for the GPT stage's
    LR, epochs and batch.
    """
    out: dict[str, Any] = {"order": list(config.stages)}
    if "dvae" in config.stages:
        stage, sources = dvae_stage(config)
        out["dvae"] = {**_with_sources(stage, DVAE_SOURCES, sources), "max_minutes": _time_limit(config, "dvae")}
    if "gpt" in config.stages:
        gpt: dict[str, Any] = {}
        hp_sources = dict((gpt_values or {}).get("sources") or {})
        for name in ("lr", "epochs", "batch_size", "grad_accum") if gpt_values else ():
            gpt[name] = {"value": gpt_values[name], "source": hp_sources.get(name, "default")}
        out["gpt"] = {**gpt, "max_minutes": _time_limit(config, "gpt")}
    if "decoder" in config.stages:
        stage, sources = decoder_stage(config)
        out["decoder"] = {
            **_with_sources(stage, DECODER_SOURCES, sources),
            "max_minutes": _time_limit(config, "decoder"),
        }
    return out
