"""Training with Coqui's Trainer through the toolkit's subclasses, and what runs around it.

:func:`build_config` turns resolved hyperparameters into the Coqui config; :func:`train` builds
the model and Trainer, fits, and returns a :class:`TrainResult`. Progress, evaluations and health
events go out through an :class:`~utils.events.EventBus`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from utils.errors import DataError
from utils.events import EventBus, EventKind, LogSubscriber, ProgressBar
from utils.hparams import Resolved

logger = logging.getLogger(__name__)

PLOT_MIN_INTERVAL_S = (
    10.0  # evaluations closer than this (tiny runs) skip the refresh; the end of training plots anyway
)


def build_config(
    hparams: Resolved,
    base_model: Any,
    *,
    output_path: str | Path = "runs",
    language: str = "en",
    run_name: str = "xtts_ft",
    vocab_path: str | Path | None = None,
    vocab_extension: dict[str, Any] | None = None,
) -> Any:
    """Return the GPTTrainerConfig for a fine-tune (see :func:`utils.training.gpt.config.build_config`).

    ``base_model`` is a folder path or :class:`utils.base_model.BaseModelFiles`;
    ``vocab_path``/``vocab_extension`` come from the language step for a new language.
    """
    from utils.base_model import BaseModelFiles, check_base_model
    from utils.training.gpt.config import build_config as _build

    base = base_model if isinstance(base_model, BaseModelFiles) else check_base_model(base_model)
    config = _build(hparams, base, output_path=output_path, language=language, run_name=run_name, vocab_path=vocab_path)
    if vocab_extension:
        config.toolkit["vocab_extension"] = dict(vocab_extension)
    return config


@dataclass
class TrainResult:
    """What a training run produced."""

    run_dir: Path
    records: list[dict[str, Any]]
    total_steps: int
    optimizer_steps: int
    runtime_exclusions: list[dict[str, Any]]
    events: list[dict[str, Any]] = field(default_factory=list)
    stop_reason: str | None = None
    export_dir: Path | None = None
    stages: list[dict[str, Any]] = field(default_factory=list)  # stages.json's records (utils.runs.StageState)


def train(
    config: Any,
    train_samples: list[dict[str, Any]],
    eval_samples: list[dict[str, Any]],
    *,
    preflight_reports: dict[str, Any] | None = None,
    continue_path: str | Path | None = None,
    restore_path: str | Path | None = None,
    progress: bool = True,
    plots: bool = True,
    events: EventBus | None = None,
    run_folder: str | Path | None = None,
    deadline: float | None = None,
) -> TrainResult:
    """Fine-tune the GPT with Coqui's Trainer (through the toolkit's subclasses) and return the result.

    Args:
        config: a config from :func:`build_config` (for ``continue_path``: the run's config.json).
        train_samples / eval_samples: rows as dicts (audio_file, text, speaker_name, language).
        preflight_reports: {"train": report, "eval": report} to save as preflight_report.json.
        continue_path: resume this run folder from its last complete checkpoint.
        restore_path: start a new run from this checkpoint's weights (step, LR, optimizer reset).
        progress: a tqdm bar per epoch instead of Coqui's console prints (when ``events`` is None;
            with a bus, subscribe :class:`~utils.events.ProgressBar` to it instead).
        plots: refresh training_curves.png in the run folder at each evaluation.
        events: the bus that receives run_dir, progress, evaluation and health events (``stage`` "gpt").
        run_folder: train in this existing run folder (:func:`utils.finetune.pipeline.start_new_run`
            made it); None: Coqui makes one in ``config.output_path``.
        deadline: stop cleanly at the first optimizer step after this ``time.time()`` (None: no limit).
    """
    from utils.training import distributed

    if not eval_samples:
        raise DataError("the eval set is empty; put at least one clip in metadata_eval.csv")
    bus = events if events is not None else EventBus([LogSubscriber(), *([ProgressBar()] if progress else [])])
    trainer, health = _build_trainer(
        config,
        train_samples,
        eval_samples,
        continue_path=continue_path,
        restore_path=restore_path,
        progress=progress,
        plots=plots,
        bus=bus,
        run_folder=run_folder,
        deadline=deadline,
    )
    run_dir = Path(trainer.output_path)
    if distributed.is_rank_zero():
        start_run_folder(config, run_dir, preflight_reports)
        if run_folder is None:  # else the recipe made the folder and named it
            bus.emit(EventKind.RUN_DIR, path=str(run_dir))  # the log subscriber names it
    _size_micro_batch(trainer, config, continuing=continue_path is not None)
    try:
        trainer.fit()
    finally:
        _final_plots(trainer, plots)
        distributed.remove_scratch()
    return _result(trainer, health, run_dir)


def start_run_folder(config: Any, run_dir: Path, preflight_reports: dict[str, Any] | None) -> None:
    """Rank 0, before the first step: the vocabulary, the preflight reports and config.json go into the run folder."""
    _keep_vocab_with_run(config, run_dir)
    if preflight_reports:
        merged = {name: report.to_dict() for name, report in preflight_reports.items()}
        (run_dir / "preflight_report.json").write_text(json.dumps(merged, indent=2), encoding="utf-8")


def _result(trainer: Any, health: Any, run_dir: Path) -> TrainResult:
    """What the fit produced; rows that failed to load during training are named in the log."""
    from utils.training.gpt.dataset import read_runtime_exclusions

    exclusions = read_runtime_exclusions(run_dir)
    if exclusions:
        logger.warning(
            "%d rows failed to load during training; see %s", len(exclusions), run_dir / "runtime_exclusions.jsonl"
        )
    return TrainResult(
        run_dir=run_dir,
        records=list(trainer.evaluation_records),
        total_steps=trainer.total_steps_done,
        optimizer_steps=trainer.optimizer_steps,
        runtime_exclusions=exclusions,
        events=list(health.events),
        stop_reason=trainer.stop_reason,
    )


def _build_trainer(
    config: Any,
    train_samples: list,
    eval_samples: list,
    *,
    continue_path: Any,
    restore_path: Any,
    progress: bool,
    plots: bool,
    bus: EventBus,
    run_folder: Any = None,
    deadline: float | None = None,
) -> tuple[Any, Any]:
    """The model (speed levers applied) and the ToolkitTrainer, wired to the event bus."""
    from trainer import TrainerArgs

    from utils.training import compat, distributed
    from utils.training.gpt.model import ToolkitGPTTrainer
    from utils.training.trainer import ToolkitTrainer

    toolkit = config.toolkit
    hp = dict(toolkit.get("hparams") or {})
    health, early = _health(config, hp, bus)
    base_name = config.run_name
    if continue_path is None and run_folder is None:
        config.run_name = unique_run_name(config.output_path, base_name)
    args = TrainerArgs(grad_accum_steps=int(toolkit.get("grad_accum", 1)))
    if continue_path is not None:
        args.continue_path = str(continue_path)
    elif restore_path is not None:
        args.restore_path = str(restore_path)
    model = ToolkitGPTTrainer(config)
    model.show_progress = bool(progress)  # the clip-cache bars follow the run's progress setting
    _apply_speed(model, config)
    to_bus = [lambda _t, record: bus.emit(EventKind.EVALUATION, stage="gpt", **record)]
    hooks = [*_evaluation_hooks(config, plots=plots), *to_bus] if distributed.is_rank_zero() else []
    with compat.exact_run_folder():  # a folder Coqui makes is the claimed name: one time stamp, one id
        trainer = distributed.build_trainer(
            ToolkitTrainer,
            args,
            config,
            output_path=config.output_path,
            model=model,
            train_samples=train_samples,
            eval_samples=eval_samples,
            eval_every_steps=toolkit.get("eval_every_steps"),
            on_evaluation=hooks,
            on_progress=[lambda info: bus.emit(EventKind.PROGRESS, stage="gpt", **info)],
            health=health,
            early_stopping=early,
            progress=progress,
            save_every_minutes=hp.get("save_every_minutes"),
            run_folder=run_folder,
            deadline=deadline,
        )
    config.run_name = base_name
    model.run_dir = Path(trainer.output_path)
    return trainer, health


def _health(config: Any, hp: dict[str, Any], bus: EventBus) -> tuple[Any, Any]:
    """The GPT stage's health monitor (its events to the bus) and early stopping (None: off)."""
    from utils.training.health import EarlyStopping, HealthConfig, HealthMonitor

    health = HealthMonitor(HealthConfig.from_values(hp), grad_clip=float(config.grad_clip or 0.0))
    health.on_event = lambda record: bus.emit(EventKind.HEALTH, stage="gpt", **record)
    early = None
    if hp.get("early_stop_patience"):
        early = EarlyStopping(int(hp["early_stop_patience"]), float(hp.get("early_stop_min_delta") or 0.0))
    return health, early


def unique_run_name(output_path: str | Path, base: str) -> str:
    """A run name no other run in ``output_path`` has, claimed exclusively (retried on collision).

    Coqui makes the run folder with ``mkdir(exist_ok=True)`` from the name, so two runs started in
    the same second could share a folder; here each name is claimed first as an empty folder in
    ``output_path/.run_names`` (``mkdir`` fails if it exists), so no two runs get the same name.
    A name carries the second it was made in, so claims older than an hour can never collide again
    and are removed here (the folder stays small).
    """
    claims = Path(output_path) / ".run_names"
    claims.mkdir(parents=True, exist_ok=True)
    _prune_claims(claims, older_than_s=3600)
    for _ in range(1000):
        name = f"{base}_{time.strftime('%Y%m%d-%H%M%S')}_{secrets.token_hex(3)}"
        try:
            (claims / name).mkdir()
        except FileExistsError:
            continue
        return name
    raise RuntimeError(f"could not claim a unique run name in {claims}")


def _prune_claims(claims: Path, *, older_than_s: float) -> None:
    """Remove the empty claim folders older than ``older_than_s`` (anything else is left alone)."""
    cutoff = time.time() - older_than_s
    for entry in claims.iterdir():
        try:
            if entry.is_dir() and entry.stat().st_mtime < cutoff:
                entry.rmdir()  # fails, and is left, if it is not empty
        except OSError:
            continue


def _final_plots(trainer: Any, plots: bool) -> None:
    """Redraw the curves once training ended, however it ended."""
    from utils.training import distributed

    if not (plots and trainer.evaluation_records and distributed.is_rank_zero()):
        return
    from utils.training.checkpoints import sigint_deferred

    try:
        # a Ctrl-C that cut matplotlib's import short left a half-initialised C extension, and
        # the interpreter aborted at exit (SIGABRT instead of 130): the plot finishes first
        with sigint_deferred("training_curves.png"):
            _refresh_plots(trainer, force=True)
    except Exception as exc:  # a plot that fails (no display back end, a full disk)
        # a plot must never hide why training ended (an interrupt, a full disk)
        logger.warning("could not redraw training_curves.png (%s: %s)", type(exc).__name__, exc)


def _refresh_plots(trainer: Any, _record: dict[str, Any] | None = None, *, force: bool = False) -> None:
    """Redraw training_curves.png in the run folder (about 0.5 s)."""
    from utils.plots import plot_training

    now = time.time()
    if not force and now - getattr(trainer, "_last_plot_time", 0.0) < PLOT_MIN_INTERVAL_S:
        return
    trainer._last_plot_time = now  # the toolkit's own attribute on its trainer
    try:
        plot_training(trainer.output_path)
    except (OSError, ValueError, RuntimeError) as exc:  # a plot must never stop training
        logger.warning("could not refresh training_curves.png: %s", exc)


def _evaluation_hooks(config: Any, *, plots: bool) -> list[Any]:
    """What runs after each evaluation on rank 0: plot refresh, test sentences, quality scores."""
    hooks: list[Any] = [_refresh_plots] if plots else []
    count = int(config.toolkit.get("test_sentences") or 0)
    if count:
        from utils.after.hooks import test_sentences_hook
        from utils.after.synthesize import SynthesisOptions

        options = SynthesisOptions(seed=0, max_new_tokens=config.toolkit.get("test_max_new_tokens"))
        hooks.append(test_sentences_hook(max_sentences=count, options=options))
    from utils.after.hooks import QualityEvalHook

    # objective scores at each save (None: only with CUDA; on the CPU they cost minutes per save)
    hooks.append(QualityEvalHook(max_sentences=count or 3, enabled=config.toolkit.get("quality_eval")))
    return hooks


def _apply_speed(model: Any, config: Any) -> None:
    """Apply the run's speed levers (config.toolkit["speed"]; default: all safe ones) to the model.

    The same under data parallel: the cached-code loader shards its length buckets by rank.
    """
    import torch

    from utils.training.speed_options import SpeedOptions, apply_speed_options

    values = dict(config.toolkit.get("speed") or {"num_workers": config.num_loader_workers})
    known = {f.name for f in dataclasses.fields(SpeedOptions)}
    opts = SpeedOptions(**{k: v for k, v in values.items() if k in known})
    model.speed = opts
    device = "cuda" if torch.cuda.is_available() else "cpu"
    applied = apply_speed_options(model, config, opts, device)
    applied += [name for name in ("cache_dvae_codes", "bucket_lengths") if getattr(opts, name)]  # loader levers
    config.toolkit["speed_applied"] = applied


def _size_micro_batch(trainer: Any, config: Any, *, continuing: bool) -> None:
    """The automatic micro-batch: where it applies and how, utils.training.batch_size decides."""
    from utils.training.batch_size import size_micro_batch

    size_micro_batch(trainer, continuing=continuing)


def _keep_vocab_with_run(config: Any, run_dir: Path) -> None:
    """Copy the vocabulary into the run folder and point the saved config at the copy.

    The Trainer wrote config.json at start-up; it is rewritten so that --continue, export and
    inference find run_dir/vocab.json (for a new language, the extended one).
    """
    src = Path(config.model_args.tokenizer_file)
    dest = run_dir / "vocab.json"
    if src.resolve() != dest.resolve():
        shutil.copy2(src, dest)
    ext = config.toolkit.get("vocab_extension")
    if ext:
        if src.parent.name == ".staging":
            src.unlink(missing_ok=True)
        ext["path"] = str(dest)
    config.model_args.tokenizer_file = str(dest)
    config.save_json(str(run_dir / "config.json"))


def summary_lines(result: TrainResult) -> list[str]:
    """A short human summary: steps, LR and eval loss per evaluation, run folder."""
    lines = [
        f"trained {result.total_steps} steps ({result.optimizer_steps} optimizer steps), "
        f"{len(result.records)} evaluations"
    ]
    for rec in result.records:
        ev = "n/a" if rec["eval_loss"] is None else f"{rec['eval_loss']:.4f}"
        lines.append(
            f"  eval at step {rec['step']:>6}: eval loss {ev}  LR "
            f"{rec['lr']:.3g}{'  (reduced)' if rec['lr_reduced'] else ''}"
        )
    if result.events:
        counts: dict[str, int] = {}
        for ev in result.events:
            counts[ev["event"]] = counts.get(ev["event"], 0) + 1
        lines.append("health events: " + ", ".join(f"{k} x{v}" for k, v in sorted(counts.items())) + " (events.jsonl)")
    if result.stop_reason:
        lines.append(f"stopped early: {result.stop_reason}")
    if len(result.stages) > 1 or any(s.get("name") != "gpt" for s in result.stages):
        lines.extend(_stage_line(s) for s in result.stages)
    if result.export_dir is not None:
        lines.append(f"inference export: {result.export_dir}")
    lines.append(f"run folder: {result.run_dir}")
    return lines


def _stage_line(stage: dict[str, Any]) -> str:
    """One stage's state and headline numbers (from its stages.json record)."""
    summary = stage.get("summary") or {}
    numbers = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in summary.items())
    stopped = f" ({stage['stop_reason']})" if stage.get("stop_reason") else ""
    return f"stage {stage['name']}: {stage['state']}{stopped}{': ' + numbers if numbers else ''}"
