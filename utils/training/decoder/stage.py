"""The decoder stage from start to end: cached inputs, the GAN under the toolkit's trainer, the export.

    from utils.training.decoder import DecoderStageConfig, train_decoder
    result = train_decoder(DecoderStageConfig(), train_rows, eval_rows, run_dir, "runs/RUN/export")
    result.mel_l1_before, result.mel_l1_after, result.export_dir

It runs after the GPT stage (a new GPT changes the decoder's inputs): ``gpt_model`` is the GPT
stage's export folder (or the base, to fine-tune the decoder on the base GPT's latents). The
stage's folder is ``run_dir/decoder``, a plain folder that Coqui's Trainer writes into:
checkpoints, config.json, metrics.jsonl (the row at step 0: the starting decoder), events.jsonl,
exclusions.jsonl (rows the stage could not use, with the reason), decoder_curves.png, TensorBoard
logs and ``export/``, an XTTS model folder with the fine-tuned decoder. To go on after an
interruption: ``train_decoder(..., continue_path=run_dir / "decoder")``.
"""

from __future__ import annotations

import gc
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from utils.errors import ConfigError, DataError
from utils.training.decoder.config import DecoderStageConfig
from utils.training.decoder.latents import GPTModelFiles, LatentCacheReport

logger = logging.getLogger(__name__)

#: The stage's folder in the run folder.
STAGE_FOLDER = "decoder"
EXCLUSIONS_FILE = "exclusions.jsonl"
PLOT_MIN_INTERVAL_S = 60.0  # a redraw takes seconds on a busy CPU; the stage draws once more at its end


@dataclass
class DecoderInputs:
    """The cached inputs of both splits and the decoder's shape (what the GAN config needs)."""

    train: LatentCacheReport
    eval: LatentCacheReport
    decoder_args: dict[str, Any]


@dataclass
class DecoderResult:
    """What one decoder stage run did."""

    stage_dir: Path
    records: list[dict[str, Any]]
    steps: int
    mel_l1_before: float | None  # held-out mel L1 of the starting decoder (first evaluation of the stage)
    mel_l1_after: float | None  # held-out mel L1 at the last evaluation
    best_mel_l1: float | None
    export_dir: Path | None
    inputs: DecoderInputs | None = None
    stop_reason: str | None = None
    curves: Path | None = None
    events: list[dict[str, Any]] = field(default_factory=list)


def prepare_inputs(
    files: GPTModelFiles, train_rows: Sequence[dict[str, Any]], eval_rows: Sequence[dict[str, Any]], cache_dir: Path
) -> DecoderInputs:
    """Latents, speaker embeddings and targets of both splits (computed only where not cached)."""
    from utils.training.decoder.gan import decoder_args_of
    from utils.training.decoder.latents import build_latent_model, prepare_latent_cache

    model = build_latent_model(files)
    try:
        train = prepare_latent_cache(model, train_rows, cache_dir, files)
        held_out = prepare_latent_cache(model, eval_rows, cache_dir, files)
        decoder = model.xtts.hifigan_decoder
        latent_dim = int(model.xtts.gpt.model_dim)
        if latent_dim != int(decoder.waveform_decoder.conv_pre.in_channels):
            raise DataError(
                f"{files.model}: the GPT has {latent_dim} channels but the decoder reads "
                f"{decoder.waveform_decoder.conv_pre.in_channels}; decoder_input_dim must equal gpt_n_model_channels"
            )
        args = decoder_args_of(decoder, latent_dim)
    finally:
        del model
        gc.collect()  # the GPT (about 2 GB for XTTS v2) is not needed while the decoder trains
    return DecoderInputs(train=train, eval=held_out, decoder_args=args)


def stage_of(config: Any) -> DecoderStageConfig:
    """The stage values a decoder stage's config.json records (``toolkit.stage``)."""
    recorded = (config.toolkit or {}).get("stage") or {}
    return DecoderStageConfig.build(**{name: item["value"] for name, item in recorded.items()})


def _continued(stage_dir: Path, inputs: DecoderInputs, files: GPTModelFiles) -> tuple[Any, DecoderStageConfig]:
    """The config and stage values a stage folder records; refused when the GPT's latents changed."""
    from utils.training.decoder.gan import DecoderGANConfig

    config = DecoderGANConfig()
    config.load_json(str(Path(stage_dir) / "config.json"))
    config.decoder_init = ""  # the checkpoint holds the weights
    if config.toolkit.get("latent_key") != inputs.train.latent_key:
        raise ConfigError(
            f"{stage_dir} was trained on the latents of {config.toolkit.get('gpt_model')}, not of "
            f"{files.root} (another GPT): continue with the same GPT model, or start a new decoder stage"
        )
    return config, stage_of(config)


@dataclass
class StageHooks:
    """What the caller hears and sets: ToolkitTrainer ``on_step``/``on_progress``/``on_evaluation``
    callables, the health monitor (None: default thresholds, clipping check off) and a wall-clock
    ``deadline`` (``time.time()``; None: no limit)."""

    on_step: list[Callable[..., Any]] = field(default_factory=list)
    on_progress: list[Callable[..., Any]] = field(default_factory=list)
    on_evaluation: list[Callable[..., Any]] = field(default_factory=list)
    health: Any = None
    deadline: float | None = None
    dashboard: str | None = None  # the run's --logger (None: the stage config's, TensorBoard)


def build_trainer(
    stage: DecoderStageConfig,
    inputs: DecoderInputs,
    stage_dir: Path,
    files: GPTModelFiles,
    *,
    continuing: bool = False,
    progress: bool = False,
    hooks: StageHooks | None = None,
) -> Any:
    """The decoder GAN under the toolkit's trainer, writing into ``stage_dir`` itself.

    When ``continuing``, the stage's own config.json is used (the run goes on with its values).
    """
    import torch
    from trainer import TrainerArgs

    from utils.training.decoder.gan import DecoderGAN
    from utils.training.health import HealthConfig, HealthMonitor
    from utils.training.trainer import ToolkitTrainer

    hooks = hooks or StageHooks()
    args = TrainerArgs(grad_accum_steps=1)  # Coqui's multi-optimizer step refuses gradient accumulation
    if continuing:
        args.continue_path = str(stage_dir)
    config, stage = _gan_config(stage, inputs, stage_dir, files, continuing)
    if hooks.dashboard is not None and config.dashboard_logger != hooks.dashboard:
        config.dashboard_logger = hooks.dashboard
        if continuing:  # Coqui's Trainer reads a continued stage's config.json again
            config.save_json(str(stage_dir / "config.json"))
    if torch.cuda.is_available():
        config.optimizer_params = {**config.optimizer_params, "fused": True}  # one AdamW kernel per step
    values = stage.describe()
    logger.info(
        "decoder stage values (the rest are the stage's defaults): %s",
        ", ".join(f"{k} {v['value']}" for k, v in values.items() if v["source"] == "set") or "none set",
    )
    for name, item in values.items():
        logger.debug("decoder stage: %s = %s (%s)", name, item["value"], item["source"])
    # grad_clip 0: the clipping-saturation check off. Coqui's GAN recipe clips at 5 while the
    # mel x 45 loss gives gradient norms in the hundreds, so nearly every step is clipped by design.
    health = hooks.health or HealthMonitor(HealthConfig(), grad_clip=0.0)
    return ToolkitTrainer(
        args,
        config,
        output_path=str(stage_dir),
        run_folder=stage_dir,
        model=DecoderGAN(config),
        train_samples=inputs.train.items,
        eval_samples=inputs.eval.items,
        eval_every_steps=stage.eval_every_steps,
        health=health,
        on_step=hooks.on_step,
        on_progress=hooks.on_progress,
        on_evaluation=hooks.on_evaluation,
        progress=progress,
        save_every_minutes=stage.save_every_minutes,
        deadline=hooks.deadline,
    )


def _gan_config(
    stage: DecoderStageConfig, inputs: DecoderInputs, stage_dir: Path, files: GPTModelFiles, continuing: bool
) -> tuple[Any, DecoderStageConfig]:
    """A new stage's Coqui config, or a continued one's own (the run goes on with its values)."""
    from utils.training.decoder.gan import build_gan_config

    if continuing:
        return _continued(stage_dir, inputs, files)
    config = build_gan_config(stage, inputs.decoder_args, output_path=stage_dir, decoder_init=str(files.model))
    config.toolkit.update(
        {"gpt_model": str(files.root), "latent_key": inputs.train.latent_key, "speaker_key": inputs.train.speaker_key}
    )
    return config, stage


def train_decoder(
    stage: DecoderStageConfig,
    train_rows: Sequence[dict[str, Any]],
    eval_rows: Sequence[dict[str, Any]],
    run_dir: str | os.PathLike[str],
    gpt_model: str | os.PathLike[str],
    *,
    base_model: str | os.PathLike[str] | None = None,
    dvae: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    export: bool = True,
    progress: bool = False,
    plots: bool = True,
    hooks: StageHooks | None = None,
) -> DecoderResult:
    """Fine-tune XTTS's HiFi-GAN decoder on the GPT's latents of these rows, in ``run_dir/decoder``.

    Args:
        stage: the hyperparameters (:class:`DecoderStageConfig`; on resume the stage's saved ones).
        train_rows / eval_rows: Coqui sample dicts (``audio_file``, ``text``, ``language``); the
            eval rows give the held-out mel L1.
        run_dir: the run folder; the stage writes into its ``decoder`` sub-folder.
        gpt_model: the GPT stage's export folder (or the base folder).
        base_model: the folder with dvae.pth and mel_stats.pth (default: ``gpt_model``).
        dvae: the dvae.pth that makes the codes (default: ``base_model``'s; a DVAE stage's).
        cache_dir: the clip cache (default: ``run_dir``'s parent's ``.clip_cache``, the GPT stage's).
        resume: go on from the stage folder's last complete checkpoint.
        export: write ``<stage>/export`` from the best checkpoint (lowest held-out mel L1).
        progress: quiet Coqui's console blocks (subscribe a progress hook instead).
        plots: draw decoder_curves.png during training (at most once a minute) and at the end.
        hooks: progress, step and evaluation hooks, health monitor, deadline (:class:`StageHooks`).

    Returns:
        The :class:`DecoderResult`.
    """
    if not eval_rows:
        raise DataError("the eval set is empty: the decoder stage needs held-out clips; put some in metadata_eval.csv")
    run_dir = Path(run_dir)
    stage_dir = run_dir / STAGE_FOLDER
    files = GPTModelFiles.locate(gpt_model, base_model, dvae=dvae)  # 1. the GPT whose latents the decoder learns
    cache = Path(cache_dir) if cache_dir is not None else run_dir.parent / ".clip_cache"
    _check_folder(stage_dir, resume)
    inputs = prepare_inputs(files, train_rows, eval_rows, cache)  # 2. cached latents and targets
    hooks = hooks or StageHooks()
    if plots:
        hooks.on_evaluation = [*hooks.on_evaluation, _CurvesRefresh()]
    trainer = build_trainer(stage, inputs, stage_dir, files, continuing=resume, progress=progress, hooks=hooks)
    _write_exclusions(stage_dir, inputs, trainer.config.segment_frames)
    try:
        if not resume:
            trainer.eval_epoch()  # 3. the starting decoder's held-out mel L1 (also its best model so far)
        trainer.fit()  # 4. the GAN
    finally:
        curves = _curves(stage_dir, trainer.config.steps_to_start_discriminator) if plots else None
    export_dir = _export(files, stage_dir) if export else None  # 5. the XTTS folder with the new decoder
    return _result(trainer, stage_dir, inputs, export_dir, curves)


def _check_folder(stage_dir: Path, resume: bool) -> None:
    """A fresh stage never writes over one; a resumed one needs a checkpoint."""
    from utils.runs import last_checkpoint

    if resume:
        if last_checkpoint(stage_dir) is None:
            raise ConfigError(f"{stage_dir} holds no decoder checkpoint to resume from; start the stage without resume")
        return
    taken = [p.name for p in (stage_dir / "config.json", stage_dir / "metrics.jsonl") if p.exists()]
    taken += [p.name for p in stage_dir.glob("checkpoint_*.pth")]
    if taken:
        raise ConfigError(
            f"{stage_dir} already holds a decoder stage ({', '.join(sorted(taken))}); resume it or choose a new run "
            "folder (nothing was overwritten)"
        )


def _write_exclusions(stage_dir: Path, inputs: DecoderInputs, segment_frames: int) -> None:
    """Rows the stage cannot use, each with its reason, in exclusions.jsonl (and one warning line)."""
    import json

    rows = [{"split": "train", **e} for e in inputs.train.excluded]
    rows += [{"split": "eval", **e} for e in inputs.eval.excluded]
    rows += [
        {"split": "train", "audio_file": c.source, "reason": "shorter_than_segment", "detail": f"{c.frames} frames"}
        for c in inputs.train.items
        if c.frames < segment_frames
    ]
    path = stage_dir / EXCLUSIONS_FILE
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    if rows:
        reasons: dict[str, int] = {}
        for r in rows:
            reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
        logger.warning(
            "decoder stage: %d row(s) left out (%s); see %s",
            len(rows),
            ", ".join(f"{k} x{v}" for k, v in sorted(reasons.items())),
            path,
        )


class _CurvesRefresh:
    """An evaluation hook: redraw decoder_curves.png at most once a minute (the stage draws at its end)."""

    def __init__(self) -> None:
        self.last = time.time()

    def __call__(self, trainer: Any, _record: dict[str, Any]) -> None:
        if time.time() - self.last >= PLOT_MIN_INTERVAL_S:
            self.last = time.time()
            _curves(Path(trainer.output_path), trainer.config.steps_to_start_discriminator)


def _curves(stage_dir: Path, warm_start_steps: int | None) -> Path | None:
    """Redraw the curves; a plot never stops training or hides why it ended."""
    from utils.training.decoder.metrics import plot_decoder_curves

    try:
        return plot_decoder_curves(stage_dir, warm_start_steps=warm_start_steps)
    except (OSError, RuntimeError, ValueError) as exc:
        logger.warning("could not draw the decoder curves (%s: %s)", type(exc).__name__, exc)
        return None


def _export(files: GPTModelFiles, stage_dir: Path) -> Path:
    from utils.training.decoder.export import export_decoder
    from utils.training.decoder.metrics import read_rows

    best = stage_dir / "best_model.pth"
    if not best.is_file():
        from utils.runs import last_checkpoint

        best = last_checkpoint(stage_dir)
        if best is None:
            raise DataError(f"{stage_dir} has no checkpoint to export; train the decoder stage first")
    losses = [r["eval_loss"] for r in read_rows(stage_dir) if r.get("eval_loss") is not None]
    info = {
        "held_out_mel_l1_before": losses[0] if losses else None,
        "held_out_mel_l1_last": losses[-1] if losses else None,
        "held_out_mel_l1_exported": min(losses) if best.name == "best_model.pth" and losses else None,
    }
    return export_decoder(files.root, best, stage_dir / "export", info=info)


def _result(
    trainer: Any, stage_dir: Path, inputs: DecoderInputs, export_dir: Path | None, curves: Path | None
) -> DecoderResult:
    from utils.training.decoder.metrics import read_rows

    rows = read_rows(stage_dir)
    losses = [r["eval_loss"] for r in rows if r.get("eval_loss") is not None]
    return DecoderResult(
        stage_dir=stage_dir,
        records=rows,
        steps=int(trainer.total_steps_done),
        mel_l1_before=losses[0] if losses else None,
        mel_l1_after=losses[-1] if losses else None,
        best_mel_l1=min(losses) if losses else None,
        export_dir=export_dir,
        inputs=inputs,
        stop_reason=trainer.stop_reason,
        curves=curves,
        events=list(trainer.health.events) if trainer.health is not None else [],
    )
