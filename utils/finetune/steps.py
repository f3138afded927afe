"""The steps before training: base model, data, language, preflight, hyperparameters, schedule.

Each takes plain values (or a :class:`~utils.finetune.config.RunConfig`) and returns what the
next step needs; :class:`~utils.finetune.recipe.FineTune` calls them in order.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from utils.errors import ConfigError, DataError
from utils.finetune.config import DEMO_RECIPE, RunConfig
from utils.hparams import PRESETS, Resolved, check_hours, preset_table, resolve
from utils.runs import absolute, fingerprint, fingerprints

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CACHE = REPO_ROOT / ".cache"


@dataclass
class DataSplit:
    """The metadata files of a run and what the preflight kept of them."""

    train_csv: Path
    eval_csv: Path
    train_report: Any = None
    eval_report: Any = None
    train_samples: list[dict[str, Any]] = field(default_factory=list)
    eval_samples: list[dict[str, Any]] = field(default_factory=list)
    audio_cache: Any = None  # utils.data.preflight.AudioCheckCache, written once the run starts training


@dataclass(frozen=True)
class SchedulePlan:
    """The LR schedule over the planned optimizer steps and its check."""

    spec: Any  # utils.training.lr_schedule.ScheduleSpec
    total_steps: int
    check: Any  # utils.training.lr_schedule.ScheduleCheck


def has_data(config: RunConfig) -> bool:
    return bool(config.demo or config.dataset or config.train_csv or config.eval_csv)


def locate_data(config: RunConfig) -> tuple[Path, Path]:
    """The train and eval CSVs from ``dataset`` or ``train_csv``/``eval_csv`` (or the demo's)."""
    dataset = config.dataset
    if config.demo and not (dataset or config.train_csv):
        dataset = REPO_ROOT / "demo" / config.language_code
    if dataset is not None:
        if config.train_csv or config.eval_csv:
            raise ConfigError("give either --dataset DIR or --train-csv/--eval-csv, not both")
        train_csv, eval_csv = dataset / "metadata_train.csv", dataset / "metadata_eval.csv"
    else:
        if not (config.train_csv and config.eval_csv):
            raise ConfigError(
                "no data: give --dataset DIR (with metadata_train.csv and metadata_eval.csv) or both --train-csv and "
                "--eval-csv, or try --demo"
            )
        train_csv, eval_csv = config.train_csv, config.eval_csv
    for path in (train_csv, eval_csv):
        if not path.is_file():
            raise DataError(
                f"metadata file not found: {path}; check the path (prepare one with scripts/prepare_dataset.py)"
            )
    return absolute(train_csv), absolute(eval_csv)  # the run folder records them: the same from any folder


def locate_base_model(config: RunConfig, cache_dir: Path = DEFAULT_CACHE) -> Any:
    """The checked base-model files; the demo builds (once) a tiny base in ``cache_dir``."""
    from utils.base_model import check_base_model, make_tiny_base

    if config.base_model is not None:
        return check_base_model(config.base_model)
    if not config.demo:
        raise ConfigError(
            "no base model: give --base-model DIR with the XTTS v2 files (get them with "
            "`python scripts/download_xtts_v2.py DIR`), or try --demo"
        )
    tiny = cache_dir / "tiny_base"
    if not (tiny / "model.pth").is_file():
        tmp = cache_dir / f"tiny_base.tmp-{secrets.token_hex(3)}"
        logger.info("building the tiny demo base model in %s (once)", tiny)
        make_tiny_base(tmp)
        tmp.rename(tiny)
    return check_base_model(tiny)


def recorded_inputs(config: RunConfig, base: Any, data: DataSplit) -> dict[str, Any]:
    """What the run folder records of its inputs: absolute paths, and sizes and digests of the files.

    ``--continue`` from any working folder finds them again, and when they moved it tells a folder
    holding the same files from another (:class:`utils.runs.RunInputs`).
    """
    from utils.base_model import REQUIRED_FILES

    run_config = config.to_dict()
    for name in ("dataset", "train_csv", "eval_csv", "base_model", "output_path", "restore"):
        if run_config.get(name):
            run_config[name] = str(absolute(run_config[name]))
    return {
        "train_csv": str(absolute(data.train_csv)),
        "eval_csv": str(absolute(data.eval_csv)),
        "data_files": {"train_csv": fingerprint(data.train_csv), "eval_csv": fingerprint(data.eval_csv)},
        "base_model_files": fingerprints(base.root, REQUIRED_FILES),
        "run_config": run_config,
    }


def check_language(language: str) -> None:
    from utils.language import check_language as _check

    _check(language)


def prepare_language(
    language: str,
    base: Any,
    train_csv: Path,
    staging_dir: Path,
    *,
    new_tokens: int,
    warmup_steps: int = 0,
    allow_mixed_script: bool = False,
) -> tuple[Path, dict[str, Any] | None]:
    """The vocabulary to train with; extends the base one for a language XTTS lacks.

    Returns:
        (vocab path, vocab-extension record or None). The record goes into the config so the
        model grows its text embedding the same way at every start (first run and resume).
    """
    from utils.data.csv_io import read_coqui_csv
    from utils.language.registry import language_tokens
    from utils.language.vocab import extend_vocab

    if language in language_tokens(base.vocab):
        return base.vocab, None
    check_language(language)  # a well-formed code with a normaliser (or the basic one)
    staging_dir.mkdir(parents=True, exist_ok=True)
    out = staging_dir / f"vocab-{language}-{secrets.token_hex(3)}.json"
    texts = [row.text for row in read_coqui_csv(train_csv)]
    if not allow_mixed_script:  # refused before a vocabulary is learned from text in another script
        from utils.data.preflight import check_script_texts

        check_script_texts(texts, language)
    ext = extend_vocab(base.vocab, texts, language, num_new_tokens=new_tokens, out_path=out)
    logger.info(
        "vocabulary extended for %s: %d -> %d tokens (%d new characters, %d merged tokens)",
        language,
        ext.base_size,
        ext.new_size,
        len(ext.new_characters),
        len(ext.new_tokens),
    )
    record = ext.to_dict()
    record.update({"base_vocab": str(base.vocab), "warmup_steps": int(warmup_steps)})
    return out, record


def check_data(
    split: DataSplit,
    language: str,
    vocab_path: Path,
    max_excluded_share: float,
    progress: bool = True,
    cache_dir: Path | None = None,
    allow_mixed_script: bool = False,
) -> DataSplit:
    """Preflight every row of both CSVs; keep what passes, refuse unusable data.

    With ``cache_dir`` the audio check results are read from ``cache_dir/preflight_audio.json``
    and kept on ``split.audio_cache`` (saved when training starts, so refused input writes
    nothing): a second run on unchanged files reads no audio to check it.
    """
    from utils.data.preflight import AudioCheckCache, check_usable, run_preflight
    from utils.language import load_tokenizer

    tokenizer = load_tokenizer(vocab_path)
    cache = AudioCheckCache(cache_dir / "preflight_audio.json") if cache_dir is not None else None
    split.audio_cache = cache
    split.train_report = run_preflight(
        split.train_csv,
        language=language,
        tokenizer=tokenizer,
        progress=progress,
        audio_cache=cache,
        allow_mixed_script=allow_mixed_script,
    )
    # a clip in both train and eval is excluded from eval (duplicate_row): eval must be held out
    split.eval_report = run_preflight(
        split.eval_csv,
        language=language,
        tokenizer=tokenizer,
        exclude_duplicates_of=split.train_report,
        progress=progress,
        audio_cache=cache,
        allow_mixed_script=allow_mixed_script,
    )
    for name, report in (("train", split.train_report), ("eval", split.eval_report)):
        for line in report.summary_lines():
            logger.info("preflight %s: %s", name, line)
    check_usable(split.train_report, split.eval_report, max_excluded_share=max_excluded_share)
    split.train_samples = [_sample(r, language) for r in split.train_report.kept_rows]
    split.eval_samples = [_sample(r, language) for r in split.eval_report.kept_rows]
    return split


def _sample(row: Any, language: str) -> dict[str, Any]:
    return {
        "audio_file": str(row.path),
        "text": row.text,
        "speaker_name": row.speaker_name,
        "language": language,
        "root_path": str(Path(row.path).parent),
        "audio_unique_name": str(row.path),
    }


def resolve_hparams(
    config: RunConfig, measured_hours: float | None, lr_reference: tuple[float, str] | None = None
) -> Resolved:
    """Defaults -> table row -> preset -> recipe (the demo's or a recipe's) -> the caller's values."""
    if config.dataset_hours is not None:
        hours, source = check_hours(config.dataset_hours), config.source("dataset_hours")
        source = "recipe" if source == "recipe" else "cli"
    else:
        hours, source = measured_hours, "measured from the training metadata"
    preset = config.preset
    if preset and PRESETS[preset].needs_restore and not config.restore:
        raise ConfigError(
            f"preset {preset} restarts from a checkpoint: add --restore RUN_DIR (its best_model.pth) or "
            "--restore CHECKPOINT.pth"
        )
    layer = dict(DEMO_RECIPE) if config.demo else {}
    layer.update(config.recipe_hparams)
    resolved = resolve(
        dataset_hours=hours,
        hours_source=source,
        cli=dict(config.hparams),
        recipe=layer or None,
        preset_name=preset,
        lr_reference=lr_reference,
    )
    for key, label in config.recipe_sources.items():  # a recipe file says where its values came from
        if resolved.sources.get(key) == "recipe":
            resolved.sources[key] = label
    for note in resolved.notes:
        logger.info("%s", note)
    return resolved


def plan_schedule(hparams: Resolved, num_train_rows: int, num_gpus: int = 1) -> SchedulePlan:
    """The LR schedule over the planned optimizer steps, checked before training."""
    from utils.training.batch_size import plan_batch
    from utils.training.lr_schedule import ScheduleSpec, check_schedule

    v = hparams.values
    batch_plan = plan_batch(int(v["batch_size"]), int(v["grad_accum"]), num_gpus)
    per_epoch = batch_plan.optimizer_steps_per_epoch(num_train_rows)
    total = max(1, per_epoch * int(v["epochs"]))
    params = {k: val for k, val in hparams.scheduler_params().items() if k != "mode"}
    spec = ScheduleSpec(name=v["lr_scheduler"], base_lr=float(v["lr"]), total_steps=total, **params)
    check = check_schedule(
        spec,
        total,
        table_lr=hparams.row.lr if hparams.row else None,
        effective_batch=batch_plan.effective_batch,
    )
    return SchedulePlan(spec, total, check)


def report_schedule_check(check: Any) -> None:
    """Log the schedule's warnings; refuse a schedule with errors."""
    for warning in check.warnings:
        logger.warning("schedule: %s", warning)
    if check.errors:
        raise ConfigError("; ".join(check.errors))


def preview_schedule(plan: SchedulePlan, path: Path) -> Path:
    """Write the LR over the planned optimizer steps as a PNG."""
    from utils.plots import plot_schedule
    from utils.training.lr_schedule import sample_steps

    spec, total = plan.spec, plan.total_steps
    steps = sample_steps(total, spec)
    note = " (plateau cuts depend on the eval loss and are not shown)" if spec.name == "ReduceLROnPlateau" else ""
    title = f"{spec.name}, peak LR {spec.base_lr:.3g}, warmup {spec.warmup_steps}, {total} optimizer steps{note}"
    path.parent.mkdir(parents=True, exist_ok=True)
    return plot_schedule(steps, spec.lrs(steps), path, title=title)


def speed_options(config: RunConfig, num_loader_workers: int) -> dict[str, Any]:
    """The speed levers for this run (as a dict for the trainer config): preset, then switches."""
    from utils.training.speed_options import SpeedOptions

    preset = {"fast": SpeedOptions, "low-vram": SpeedOptions.low_vram, "stock": SpeedOptions.stock}[config.speed]
    opts = preset().to_dict()
    opts.update({name: bool(value) for name, value in config.speed_switches.items()})
    opts["num_workers"] = int(num_loader_workers)
    return opts


def count_rows(csv_path: Path) -> int:
    from utils.data.csv_io import read_coqui_csv

    return sum(1 for _ in read_coqui_csv(csv_path))


def measure_header_hours(csv_path: Path) -> float | None:
    """Hours of audio in a metadata CSV from the wav headers (no decoding); None if unreadable."""
    import soundfile as sf

    from utils.data.csv_io import read_coqui_csv

    seconds = 0.0
    for row in read_coqui_csv(csv_path):
        try:
            info = sf.info(str(row.path))
        except (RuntimeError, OSError, sf.LibsndfileError):
            continue
        seconds += info.frames / info.samplerate
    return seconds / 3600 if seconds else None


def describe(config: RunConfig, cache_dir: Path, lr_reference: tuple[float, str] | None = None) -> dict[str, Any]:
    """The resolved configuration as plain data (what ``--dry-run`` prints), without training.

    Reads only wav headers (hours, when not given) and row counts; imports no torch.
    ``lr_reference``: a restored run's LR, which a preset's ``lr_scale`` multiplies.
    """
    base = locate_base_model(config, cache_dir) if (config.base_model or config.demo) else None
    train_csv, eval_csv = locate_data(config) if has_data(config) else (None, None)
    check_language(config.language_code)
    hours = measure_header_hours(train_csv) if (config.dataset_hours is None and train_csv) else None
    hparams = resolve_hparams(config, hours, lr_reference)
    out = hparams.as_dict()
    out.update(
        {
            "language": config.language_code,
            "base_model": str(base.root) if base else None,
            "train_csv": str(train_csv) if train_csv else None,
            "eval_csv": str(eval_csv) if eval_csv else None,
        }
    )
    if train_csv is not None:
        plan = plan_schedule(hparams, count_rows(train_csv), config.gpus)
        out["planned_optimizer_steps"] = plan.total_steps
        out["schedule_warnings"], out["schedule_errors"] = plan.check.warnings, plan.check.errors
    from utils.training.distributed import plan_batch

    out["batch_plan"] = plan_batch(hparams["batch_size"], hparams["grad_accum"], config.gpus).as_dict()
    out["speed"] = speed_options(config, int(hparams["num_loader_workers"]))  # auto_batch: sized at the start
    out["presets"] = preset_table()
    from utils.finetune.stage_values import describe_stages

    out["stages"] = describe_stages(config, out)  # each stage's values with their sources
    return out


def preview_run_schedule(config: RunConfig, lr_reference: tuple[float, str] | None, path: Path) -> Path:
    """Write a PNG of the LR over the run's planned optimizer steps to ``path`` (checks logged).

    Raises:
        ConfigError: the run names no training rows to count the steps from.
    """
    if not has_data(config):
        raise ConfigError(
            "--preview-schedule counts the planned steps from the training rows: give --dataset or --train-csv"
        )
    train_csv, _ = locate_data(config)
    hours = measure_header_hours(train_csv) if config.dataset_hours is None else None
    hparams = resolve_hparams(config, hours, lr_reference)
    plan = plan_schedule(hparams, count_rows(train_csv), config.gpus)
    for line in plan.check.warnings + plan.check.errors:
        logger.warning("schedule: %s", line)
    return preview_schedule(plan, path)
