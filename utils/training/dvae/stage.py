"""The DVAE stage: fine-tune XTTS's DVAE on a dataset's audio and write a dvae.pth for the GPT stage.

Stages run DVAE -> GPT -> decoder: the DVAE turns audio into the GPT's target codes, so a new
DVAE changes what the GPT learns. The stage folder (``RUN_DIR/dvae``, a plain folder that Coqui's
Trainer writes into) holds:

- ``dvae.pth``: the fine-tuned DVAE, a plain state dict in the base dvae.pth's key layout (the
  weights of the best evaluation, else the last), written atomically. Point the GPT stage's
  ``model_args.dvae_checkpoint`` at it (:mod:`utils.training.dvae.handoff`); its clip cache keys
  the codes by the DVAE file's path, size and modification time, so the GPT then trains on the
  new codes.
- ``metrics.jsonl``: the toolkit trainer's record of every evaluation (train and eval loss,
  reconstruction and commitment parts, LR) with the held-out numbers (``heldout_*``: mel MSE on
  whole clips, codebook perplexity, unused codes, share of codes changed against the base); the
  record at step 0 is the base DVAE's, so the best model can be the base itself.
- ``dvae_report.json``: held-out numbers before and after, the exported weights' step, every
  setting with its source. ``dvae_curves.png``: the curves.
- Coqui's and the toolkit's files: config.json, ``checkpoint_N.pth``, ``best_model_N.pth``,
  events.jsonl (health), TensorBoard logs. ``resume=True`` goes on from the newest checkpoint.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from utils.base_model import BaseModelFiles, check_base_model
from utils.errors import ConfigError, DataError
from utils.fs import write_json_atomic
from utils.runs import last_checkpoint, load_checkpoint, read_jsonl, read_run_config
from utils.training.dvae.config import DVAEStageConfig
from utils.training.dvae.metrics import HeldOut, changed_share, heldout_clips, measure, summary
from utils.training.dvae.plots import CURVES_NAME, plot_dvae_curves
from utils.training.dvae.trainer_config import build_trainer_config

logger = logging.getLogger(__name__)

STAGE_FOLDER = "dvae"
DVAE_FILE = "dvae.pth"
REPORT_FILE = "dvae_report.json"
METRICS_FILE = "metrics.jsonl"


@dataclass
class DVAEResult:
    """What the stage left behind."""

    stage_dir: Path
    dvae_path: Path
    report: dict[str, Any]
    rows: list[dict[str, Any]]
    stop_reason: str | None = None
    events: list[dict[str, Any]] | None = None


@dataclass
class StageHooks:
    """What the caller hears and sets: ToolkitTrainer progress and evaluation hooks, the health monitor
    (None: default thresholds) and a wall-clock ``deadline`` (``time.time()``; None: no limit)."""

    on_progress: list[Callable[[dict[str, Any]], None]] | None = None
    on_evaluation: list[Callable[[Any, dict[str, Any]], None]] | None = None
    health: Any = None
    deadline: float | None = None
    dashboard: str | None = None  # the run's --logger (None: the stage config's, TensorBoard)


def train_dvae(
    stage: DVAEStageConfig | None,
    train_rows: Sequence[dict[str, Any]],
    eval_rows: Sequence[dict[str, Any]],
    run_dir: str | Path,
    *,
    base_model: str | Path | BaseModelFiles,
    resume: bool = False,
    progress: bool = True,
    hooks: StageHooks | None = None,
) -> DVAEResult:
    """Fine-tune the base's DVAE on ``train_rows``, measure it on ``eval_rows``, write ``run_dir/dvae``.

    Args:
        stage: the settings (None: the defaults; on resume the stage's saved settings are used).
        train_rows, eval_rows: dataset rows with ``audio_file`` (Coqui samples, as the GPT stage's).
        run_dir: the run folder; the stage writes into its ``dvae`` sub-folder.
        base_model: the XTTS v2 base folder (dvae.pth, mel_stats.pth, config.json).
        resume: go on from the stage folder's newest complete checkpoint.
        progress: show a progress bar (when ``hooks`` brings no progress hook).
        hooks: progress and evaluation hooks, health monitor, deadline (:class:`StageHooks`).

    Raises:
        ConfigError: a fresh stage into a folder that already holds one, or nothing to resume.
        DataError, BaseModelError, UnsafeModelFileError: unusable rows or model files.
    """
    hooks = hooks or StageHooks()
    base = base_model if isinstance(base_model, BaseModelFiles) else check_base_model(base_model)
    stage_dir = Path(run_dir) / STAGE_FOLDER
    continuing, stage = _prepare_folder(stage_dir, stage, resume)
    clips = heldout_clips(eval_rows, stage.heldout_clips)
    if not clips:
        raise DataError("the DVAE stage needs held-out clips to measure itself on; metadata_eval.csv has no rows")
    import torch

    from utils.training.dvae.model import ToolkitDVAE

    config = build_trainer_config(stage, base, stage_dir)
    if hooks is not None and hooks.dashboard is not None and config.dashboard_logger != hooks.dashboard:
        config.dashboard_logger = hooks.dashboard
        if continuing:  # Coqui's Trainer reads a continued stage's config.json again
            config.save_json(str(stage_dir / "config.json"))
    model = ToolkitDVAE(config)
    model.heldout = HeldOut(clips, measure(model, clips))  # the base's weights: a resume restores its own later
    benchmark = torch.backends.cudnn.benchmark  # Coqui's set-up only ever turns it on: the next stage's shapes vary
    trainer, bar = _build_trainer(config, model, (train_rows, eval_rows), continuing, progress, hooks)
    try:
        if not continuing:
            trainer.eval_epoch()  # step 0: the base DVAE's numbers (and the best model until one beats it)
        trainer.fit()
    finally:
        torch.backends.cudnn.benchmark = benchmark
        if bar is not None:
            bar.close()
        _curves(stage_dir)
    return _export(trainer, model, stage, base, stage_dir)


def _prepare_folder(stage_dir: Path, stage: DVAEStageConfig | None, resume: bool) -> tuple[bool, DVAEStageConfig]:
    """Whether the stage goes on from its folder, and the settings to use."""
    if resume:
        if last_checkpoint(stage_dir) is None:
            raise ConfigError(f"{stage_dir} holds no DVAE checkpoint to resume from; start the stage without resume")
        saved = DVAEStageConfig.from_dict(((read_run_config(stage_dir).get("toolkit") or {}).get("stage")) or {})
        if stage is not None and _values(stage) != _values(saved):
            logger.warning(
                "resuming the DVAE stage with its saved settings (%s); the ones passed are ignored", stage_dir
            )
        return True, saved
    taken = [p.name for p in (stage_dir / DVAE_FILE, stage_dir / METRICS_FILE, stage_dir / "config.json") if p.exists()]
    taken += [p.name for p in stage_dir.glob("checkpoint_*.pth")]
    if taken:
        raise ConfigError(
            f"{stage_dir} already holds a DVAE stage ({', '.join(sorted(taken))}); resume it (resume=True) or "
            "choose a new run folder (nothing was overwritten)"
        )
    stage_dir.mkdir(parents=True, exist_ok=True)
    return False, stage or DVAEStageConfig()


def _values(stage: DVAEStageConfig) -> dict[str, Any]:
    """The settings' values, whoever set them."""
    return {k: v for k, v in stage.as_dict().items() if k != "set_by_caller"}


def _build_trainer(
    config: Any,
    model: Any,
    rows: tuple[Sequence[dict[str, Any]], Sequence[dict[str, Any]]],
    continuing: bool,
    progress: bool,
    hooks: StageHooks,
) -> tuple[Any, Any]:
    """The ToolkitTrainer of the stage, writing into the stage folder itself (and the progress bar it feeds)."""
    from trainer import TrainerArgs

    from utils.events import ProgressBar
    from utils.training.health import HealthConfig, HealthMonitor
    from utils.training.trainer import ToolkitTrainer

    args = TrainerArgs()
    if continuing:
        args.continue_path = str(config.output_path)
    bar = ProgressBar.as_hook() if progress and not hooks.on_progress else None
    health = hooks.health or HealthMonitor(HealthConfig(), grad_clip=float(config.grad_clip or 0.0))
    trainer = ToolkitTrainer(
        args,
        config,
        output_path=config.output_path,
        run_folder=config.output_path,
        model=model,
        train_samples=list(rows[0]),
        eval_samples=list(rows[1]),
        eval_every_steps=config.toolkit["stage"].get("eval_every_steps"),
        on_evaluation=list(hooks.on_evaluation or []),
        on_progress=[bar] if bar is not None else list(hooks.on_progress or []),
        health=health,
        progress=progress,
        save_every_minutes=config.toolkit["stage"].get("save_every_minutes"),
        deadline=hooks.deadline,
    )
    return trainer, bar


def _curves(stage_dir: Path, exported_step: int | None = None) -> Path | None:
    """Redraw dvae_curves.png; a plot never hides why the stage ended."""
    try:
        return plot_dvae_curves(
            read_jsonl(stage_dir / METRICS_FILE), stage_dir / CURVES_NAME, exported_step=exported_step
        )
    except (OSError, RuntimeError, ValueError) as exc:
        logger.warning("could not draw %s (%s: %s)", CURVES_NAME, type(exc).__name__, exc)
        return None


def _trainer_counts(trainer: Any) -> dict[str, int]:
    """Steps and whole epochs done, as the trainer's last checkpoint records them (Coqui's
    ``epochs_done`` holds the index of the last epoch begun, not the number finished)."""
    last = last_checkpoint(trainer.output_path)
    state = (load_checkpoint(last, mmap=True).get("toolkit_state") or {}) if last is not None else {}
    return {
        "steps_done": int(state.get("steps_done", trainer.total_steps_done)),
        "optimizer_steps": int(trainer.optimizer_steps),
        "epochs_done": int(state.get("epochs_done", trainer.epochs_done)),
    }


def _final_weights(trainer: Any, model: Any) -> dict[str, Any]:
    """Load the weights to export into ``model``: the best evaluation's (step 0, the base, included), else the last."""
    best = Path(trainer.output_path) / "best_model.pth"
    if not best.is_file():
        return {"weights": "last", "weights_step": int(trainer.total_steps_done), "weights_eval_loss": None}
    state = load_checkpoint(best)
    prefix = "dvae."
    model.dvae.load_state_dict({k[len(prefix) :]: v for k, v in state["model"].items() if k.startswith(prefix)})
    counts = state.get("toolkit_state") or {}
    return {
        "weights": "best",
        "weights_step": int(counts.get("steps_done", state.get("step", 0))),
        "weights_eval_loss": (state.get("model_loss") or {}).get("eval_loss"),
    }


def _export(trainer: Any, model: Any, stage: DVAEStageConfig, base: BaseModelFiles, stage_dir: Path) -> DVAEResult:
    """Write dvae.pth (atomically), the report and the curves."""
    from utils.training.checkpoints import atomic_torch_save

    chosen = _final_weights(trainer, model)
    after = measure(model, model.heldout.clips)
    dvae_path = atomic_torch_save(model.dvae_state_dict(), stage_dir / DVAE_FILE)
    rows = read_jsonl(stage_dir / METRICS_FILE)
    num_tokens = model.config.num_tokens
    before_sum = {**_losses(rows[0] if rows else {}), **summary(model.heldout.base, num_tokens)}
    at_export = next((r for r in rows if r.get("step") == chosen["weights_step"]), {})
    after_sum = {**_losses(at_export), **summary(after, num_tokens)}
    improved = (
        None not in (before_sum["mel_mse"], after_sum["mel_mse"]) and after_sum["mel_mse"] < before_sum["mel_mse"]
    )
    report = {
        "dvae_path": str(dvae_path),
        "base_dvae": str(base.dvae),
        **chosen,
        **_trainer_counts(trainer),
        "stop_reason": trainer.stop_reason,
        "heldout": {
            "before": before_sum,
            "after": after_sum,
            "changed_share": changed_share(model.heldout.base, after),
            "mel_mse_improved": improved,
        },
        "settings": stage.describe(),
    }
    write_json_atomic(stage_dir / REPORT_FILE, report)
    _curves(stage_dir, chosen["weights_step"])
    if not improved:
        logger.warning(
            "the fine-tuned DVAE reconstructs the held-out clips no better than the base (mel MSE %s -> %s)",
            before_sum["mel_mse"],
            after_sum["mel_mse"],
        )
    logger.info("DVAE stage done: %s (report: %s)", dvae_path, stage_dir / REPORT_FILE)
    events = list(trainer.health.events) if trainer.health is not None else []
    return DVAEResult(stage_dir, dvae_path, report, rows, trainer.stop_reason, events)


def _losses(record: dict[str, Any]) -> dict[str, Any]:
    """The eval losses of an evaluation record."""
    return {k: record.get(k) for k in ("eval_loss", "eval_recon_loss", "eval_commitment_loss")}
