"""The DVAE stage: fine-tune XTTS's DVAE on a dataset's audio and write a dvae.pth for the GPT stage.

Stages run DVAE -> GPT -> decoder: the DVAE turns audio into the GPT's target codes, so a new
DVAE changes what the GPT learns. The stage folder (``RUN_DIR/dvae``) holds:

- ``dvae.pth``: the fine-tuned DVAE, a plain state dict in the base dvae.pth's key layout (the
  weights of the best evaluation, else the last), written atomically. Point the GPT stage's
  ``model_args.dvae_checkpoint`` at it; its clip cache keys the codes by the DVAE file's path,
  size and modification time (``dvae_key``), so the GPT then trains on the new codes.
- ``dvae_report.json``: held-out numbers of the base and the fine-tuned DVAE (mel MSE, codebook
  perplexity, unused codes, share of changed codes per clip) and every setting with its source.
- ``metrics.jsonl``: rows "base", one per evaluation, "exported" (utils/training/dvae/metrics.py).
- ``dvae_curves.png``: the curves of those rows.
- ``trainer-DATE-COMMIT/``: Coqui's Trainer folder (config.json, checkpoints, best model,
  TensorBoard, the trainer's own metrics.jsonl and events.jsonl); ``resume=True`` goes on from its
  newest complete checkpoint.

Under the toolkit's ToolkitTrainer (utils/training/trainer.py), these GPT-specific parts are
worked around here rather than changed there: its records carry the GPT's loss parts
(``loss_text_ce``/``loss_mel_ce``, empty here), so the DVAE's parts go to this stage's own rows;
its "only the GPT trains" restore after a mid-epoch evaluation calls the model's
``on_train_epoch_start``, which here sets train mode (utils/training/dvae/model.py); its Ctrl-C
advice names ``utils/gpt_train.py``, so :func:`train_dvae` logs the call that resumes this stage.
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
from utils.runs import last_checkpoint, load_checkpoint, read_run_config
from utils.training.dvae.config import DVAEStageConfig
from utils.training.dvae.metrics import (
    EvaluationRows,
    HeldOutPass,
    StageRows,
    changed_share,
    eval_losses,
    heldout_clips,
    measure,
    summary,
)
from utils.training.dvae.plots import CURVES_NAME, plot_dvae_curves
from utils.training.dvae.trainer_config import TRAINER_RUN_NAME, build_trainer_config

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
    trainer_dir: Path
    report: dict[str, Any]
    rows: list[dict[str, Any]]


def train_dvae(
    stage: DVAEStageConfig | None,
    train_rows: Sequence[dict[str, Any]],
    eval_rows: Sequence[dict[str, Any]],
    run_dir: str | Path,
    *,
    base_model: str | Path | BaseModelFiles,
    resume: bool = False,
    progress: bool = True,
    on_progress: list[Callable[[dict[str, Any]], None]] | None = None,
    on_evaluation: list[Callable[[Any, dict[str, Any]], None]] | None = None,
) -> DVAEResult:
    """Fine-tune the base's DVAE on ``train_rows``, measure it on ``eval_rows``, write ``run_dir/dvae``.

    Args:
        stage: the settings (None: the defaults; on resume the stage's saved settings are used).
        train_rows, eval_rows: dataset rows with ``audio_file`` (Coqui samples, as the GPT stage's).
        run_dir: the run folder; the stage writes into its ``dvae`` sub-folder.
        base_model: the XTTS v2 base folder (dvae.pth, mel_stats.pth, config.json).
        resume: go on from the stage folder's newest complete checkpoint.
        progress: show a progress bar (when ``on_progress`` is not given).
        on_progress: ToolkitTrainer progress hooks ``fn(info)`` (replace the bar).
        on_evaluation: more ToolkitTrainer evaluation hooks ``fn(trainer, record)``.

    Raises:
        ConfigError: a fresh stage into a folder that already holds one, or nothing to resume.
        DataError, BaseModelError, UnsafeModelFileError: unusable rows or model files.
    """
    base = base_model if isinstance(base_model, BaseModelFiles) else check_base_model(base_model)
    stage_dir = Path(run_dir) / STAGE_FOLDER
    continue_dir, stage = _prepare_folder(stage_dir, stage, resume)
    clips = heldout_clips(eval_rows, stage.heldout_clips)
    if not clips:
        raise DataError("the DVAE stage needs held-out clips to measure itself on; metadata_eval.csv has no rows")
    from utils.training.dvae.model import ToolkitDVAE

    config = build_trainer_config(stage, base, stage_dir)
    model = ToolkitDVAE(config)
    base_pass = measure(model, clips)  # the base's weights: the trainer restores a checkpoint later
    rows = StageRows(stage_dir / METRICS_FILE)
    eval_loader = model.get_data_loader(config, is_eval=True, samples=list(eval_rows))
    if continue_dir is None:
        before = {"phase": "base", "step": 0, "optimizer_step": 0, **eval_losses(model, eval_loader)}
        rows.append({**before, **_heldout_row(base_pass, config)})
    hooks = [EvaluationRows(model, clips, base_pass, rows), *(on_evaluation or [])]
    trainer, bar = _build_trainer(config, model, train_rows, eval_rows, continue_dir, hooks, progress, on_progress)
    if continue_dir is not None:
        rows.keep(_evaluated_steps(Path(trainer.output_path)))
    _fit(trainer, bar, run_dir, base)
    return _export(trainer, model, (clips, eval_loader), base_pass, stage, base, stage_dir, rows)


def _fit(trainer: Any, bar: Any, run_dir: str | Path, base: BaseModelFiles) -> None:
    """Train; on Ctrl-C name the call that goes on (the trainer's own advice names the GPT command)."""
    try:
        trainer.fit()
    except KeyboardInterrupt:
        logger.warning(
            "DVAE stage interrupted; to go on: train_dvae(None, train_rows, eval_rows, %r, base_model=%r, resume=True)",
            str(run_dir),
            str(base.root),
        )
        raise
    finally:
        if bar is not None:
            bar.close()


def find_trainer_dir(stage_dir: str | Path) -> Path | None:
    """The stage's Trainer folder holding the newest complete checkpoint (None: none has one)."""
    found = []
    for folder in Path(stage_dir).glob(f"{TRAINER_RUN_NAME}-*"):
        last = last_checkpoint(folder) if folder.is_dir() else None
        if last is not None:
            found.append((last.stat().st_mtime_ns, folder))
    return max(found)[1] if found else None


def _prepare_folder(
    stage_dir: Path, stage: DVAEStageConfig | None, resume: bool
) -> tuple[Path | None, DVAEStageConfig]:
    """The Trainer folder to continue (None: a fresh stage) and the settings to use."""
    if resume:
        trainer_dir = find_trainer_dir(stage_dir)
        if trainer_dir is None:
            raise ConfigError(f"{stage_dir} holds no DVAE checkpoint to resume from; start the stage without resume")
        saved = DVAEStageConfig.from_dict(((read_run_config(trainer_dir).get("toolkit") or {}).get("stage")) or {})
        if stage is not None and _values(stage) != _values(saved):
            logger.warning(
                "resuming the DVAE stage with its saved settings (%s); the ones passed are ignored", trainer_dir
            )
        return trainer_dir, saved
    taken = [p.name for p in (stage_dir / DVAE_FILE, stage_dir / METRICS_FILE) if p.exists()]
    taken += [p.name for p in stage_dir.glob(f"{TRAINER_RUN_NAME}-*")]
    if taken:
        raise ConfigError(
            f"{stage_dir} already holds a DVAE stage ({', '.join(sorted(taken))}); resume it (resume=True) or "
            "choose a new run folder (nothing was overwritten)"
        )
    stage_dir.mkdir(parents=True, exist_ok=True)
    return None, stage or DVAEStageConfig()


def _values(stage: DVAEStageConfig) -> dict[str, Any]:
    """The settings' values, whoever set them."""
    return {k: v for k, v in stage.as_dict().items() if k != "set_by_caller"}


def _build_trainer(
    config: Any,
    model: Any,
    train_rows: Sequence[dict[str, Any]],
    eval_rows: Sequence[dict[str, Any]],
    continue_dir: Path | None,
    hooks: list[Callable[[Any, dict[str, Any]], None]],
    progress: bool,
    on_progress: list[Callable[[dict[str, Any]], None]] | None,
) -> tuple[Any, Any]:
    """The ToolkitTrainer of the stage (and the progress bar it feeds, if any)."""
    from trainer import TrainerArgs

    from utils.events import ProgressBar
    from utils.training.health import HealthConfig, HealthMonitor
    from utils.training.trainer import ToolkitTrainer

    args = TrainerArgs()
    if continue_dir is not None:
        args.continue_path = str(continue_dir)
    bar = ProgressBar.as_hook() if progress and on_progress is None else None
    stage = config.toolkit["stage"]
    trainer = ToolkitTrainer(
        args,
        config,
        output_path=config.output_path,
        model=model,
        train_samples=list(train_rows),
        eval_samples=list(eval_rows),
        eval_every_steps=stage.get("eval_every_steps"),
        on_evaluation=hooks,
        on_progress=[bar] if bar is not None else list(on_progress or []),
        health=HealthMonitor(HealthConfig(), grad_clip=float(config.grad_clip or 0.0)),
        progress=progress or on_progress is not None,
    )
    return trainer, bar


def _evaluated_steps(trainer_dir: Path) -> set[int]:
    """Steps of the evaluations the trainer's metrics.jsonl keeps (after its own trim on resume)."""
    return {int(r["step"]) for r in StageRows(trainer_dir / "metrics.jsonl").read() if "step" in r}


def _heldout_row(current: HeldOutPass, config: Any, base: HeldOutPass | None = None) -> dict[str, Any]:
    return {f"heldout_{k}": v for k, v in summary(current, config.num_tokens, base).items()}


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
    """Load the weights to export into ``model``: the best evaluation's, else the last."""
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


def _export(
    trainer: Any,
    model: Any,
    heldout: tuple[list[Any], Any],
    base_pass: HeldOutPass,
    stage: DVAEStageConfig,
    base: BaseModelFiles,
    stage_dir: Path,
    rows: StageRows,
) -> DVAEResult:
    """Write dvae.pth (atomically), the report, the exported row and the curves."""
    from utils.training.checkpoints import atomic_torch_save

    clips, eval_loader = heldout
    chosen = _final_weights(trainer, model)
    after = measure(model, clips)
    after_losses = eval_losses(model, eval_loader)
    dvae_path = atomic_torch_save(model.dvae_state_dict(), stage_dir / DVAE_FILE)
    base_row = next((r for r in rows.read() if r.get("phase") == "base"), {})
    before_sum = {**{k: base_row.get(k) for k in after_losses}, **summary(base_pass, model.config.num_tokens)}
    after_sum = {**after_losses, **summary(after, model.config.num_tokens)}
    improved = (
        None not in (before_sum["mel_mse"], after_sum["mel_mse"]) and after_sum["mel_mse"] < before_sum["mel_mse"]
    )
    report = {
        "dvae_path": str(dvae_path),
        "base_dvae": str(base.dvae),
        **chosen,
        "trainer_dir": str(trainer.output_path),
        **_trainer_counts(trainer),
        "stop_reason": trainer.stop_reason,
        "heldout": {
            "before": before_sum,
            "after": after_sum,
            "changed_share": changed_share(base_pass, after),
            "mel_mse_improved": improved,
        },
        "settings": stage.describe(),
    }
    write_json_atomic(stage_dir / REPORT_FILE, report)
    exported = {"phase": "exported", "step": chosen["weights_step"], **after_losses}
    rows.append({**exported, **_heldout_row(after, model.config, base_pass)})
    plot_dvae_curves(rows.read(), stage_dir / CURVES_NAME)
    if not improved:
        logger.warning(
            "the fine-tuned DVAE reconstructs the held-out clips no better than the base (mel MSE %s -> %s); "
            "the GPT stage can keep the base dvae.pth",
            before_sum["mel_mse"],
            after_sum["mel_mse"],
        )
    logger.info("DVAE stage done: %s (report: %s)", dvae_path, stage_dir / REPORT_FILE)
    return DVAEResult(stage_dir, dvae_path, Path(trainer.output_path), report, rows.read())
