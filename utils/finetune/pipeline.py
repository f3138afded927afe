"""The stages of a run, one after another: DVAE -> GPT -> decoder, their state in stages.json, the hand-offs.

The DVAE turns audio into the GPT's target codes, so a new DVAE changes what the GPT learns; the
GPT's latents are the decoder's input, so a new GPT changes what the decoder learns. Each stage
trains on the rows the preflight kept (one check for all of them) through the toolkit's trainer,
in its own folder of the run folder (:data:`utils.runs.STAGE_FOLDERS`: the GPT stage in the run
folder itself, the others in ``dvae/`` and ``decoder/``), with its own metrics.jsonl, curves,
events.jsonl and checkpoints. The hand-offs:

- DVAE -> GPT: the GPT config points at ``dvae/dvae.pth`` (:func:`utils.training.dvae.handoff.
  use_stage_dvae`); the clip cache keys the codes by the DVAE file, so the GPT trains on new codes.
- GPT -> decoder: the decoder learns the latents of the GPT stage's export (``RUN_DIR/export``),
  computed teacher-forced with the DVAE stage's codes.
- The final export (``RUN_DIR/export``) gets the new decoder in its model.pth and the new
  dvae.pth (with mel_stats.pth) beside it.

``stages.json`` records each stage's state (pending, running, done), its best checkpoint and its
metrics file (:class:`StageBook`); ``--continue`` goes on inside the stage that stopped and skips
the finished ones. :class:`~utils.finetune.recipe.FineTune` calls these functions as its steps, each
with itself as ``ft`` (typed ``Any`` here: the recipe imports this module, not the other way round).
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from utils.errors import ConfigError
from utils.events import EventKind
from utils.finetune.config import TIME_LIMITS, RunConfig
from utils.runs import StageState, read_stages, stage_dir, write_stages

logger = logging.getLogger(__name__)


class StageBook:
    """A run's ``stages.json``: each stage's state, written whole at every change."""

    def __init__(self, run_dir: Path, stages: list[StageState]) -> None:
        self.run_dir, self.stages = Path(run_dir), stages

    @classmethod
    def create(cls, run_dir: Path, names: tuple[str, ...]) -> StageBook:
        book = cls(run_dir, [StageState.new(name) for name in names])
        book.write()
        return book

    @classmethod
    def read(cls, run_dir: Path) -> StageBook:
        """The run's record; a run made before stages.json existed trained the GPT stage only."""
        stages = read_stages(run_dir) or [StageState.new("gpt")]
        if not (Path(run_dir) / "stages.json").is_file():
            stages[0].state = "running"
        return cls(run_dir, stages)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.stages]

    def get(self, name: str) -> StageState | None:
        return next((s for s in self.stages if s.name == name), None)

    def write(self) -> None:
        write_stages(self.run_dir, self.stages)

    @contextmanager
    def running(self, name: str) -> Iterator[StageState]:
        """Mark ``name`` running while the block trains it; an error or Ctrl-C leaves it running with the reason."""
        state = self.get(name)
        assert state is not None
        state.state, state.stop_reason, state.started_at = "running", None, round(time.time(), 3)
        self.write()
        try:
            yield state
        except KeyboardInterrupt:
            self._stopped(state, "interrupted")
            raise
        except Exception as exc:
            self._stopped(state, "divergence" if type(exc).__name__ == "DivergenceError" else "error", str(exc))
            raise

    def _stopped(self, state: StageState, reason: str, message: str | None = None) -> None:
        state.stop_reason = reason
        if message:
            state.summary = {**state.summary, "error": message}
        self.write()

    def done(self, name: str, *, stop_reason: str | None, best_checkpoint: str | None, **summary: Any) -> None:
        state = self.get(name)
        assert state is not None
        state.state, state.stop_reason, state.finished_at = "done", stop_reason, round(time.time(), 3)
        state.best_checkpoint = best_checkpoint
        state.summary = {k: v for k, v in summary.items() if v is not None}
        self.write()


# --- the run folder ----------------------------------------------------------------------------


def new_run_folder(output_path: Path, run_name: str) -> tuple[Path, str]:
    """A new run folder ``output_path/NAME``: the claimed name already holds one time stamp and an id.

    (Coqui's Trainer would append its own date and git commit: ``compat.exact_run_folder``.)
    """
    from utils.finetune.training import unique_run_name
    from utils.runs import absolute

    name = unique_run_name(output_path, run_name)
    folder = absolute(output_path) / name  # the run's record names it the same from any folder
    folder.mkdir(parents=True, exist_ok=False)
    return folder, name


def start_new_run(ft: Any) -> Path:
    """Make the run folder and write what every stage reads: config.json, vocab.json, the preflight report."""
    from utils.finetune.training import start_run_folder

    config, data = ft.trainer_config or ft.build_trainer(), ft._need_preflight()
    run_dir, config.run_name = new_run_folder(Path(ft.config.output_path), ft.config.run_name)
    start_run_folder(config, run_dir, {"train": data.train_report, "eval": data.eval_report})
    if data.audio_cache is not None:
        data.audio_cache.save()  # every check passed: the next run on these files reads no audio to check it
    ft.book = StageBook.create(run_dir, ft.config.stages)
    return run_dir


def resume_run(ft: Any) -> Path:
    """``--continue``: the run's own values and stage record, its inputs located, its data checked again.

    The inputs (base model, CSVs) are found where the run's config.json records them, or where the
    ``--continue`` request says they moved (``--base-model``, ``--dataset``: checked to be the same
    files), for every stage left to train (:func:`utils.finetune.restart.relocate_run`).
    """
    from utils.finetune import restart, steps
    from utils.runs import RunRecord

    run_dir, request = ft.continue_dir, ft.continue_request
    assert run_dir is not None and request is not None
    moved_data = steps.locate_data(request) if steps.has_data(request) else None
    restart.relocate_run(run_dir, base_model=request.base_model, data=moved_data)
    rec = RunRecord.read(run_dir)  # where the inputs lie now
    ft.config = restart.continued_config(rec, ft.config, run_dir)
    ft.book = StageBook.read(run_dir)
    left = [s.name for s in ft.book.stages if s.state != "done"]
    if not left and ft.book.names[-1] != "gpt":
        raise ConfigError(
            f"every stage of {run_dir} is done ({', '.join(ft.book.names)}): nothing to continue; to train more, "
            f"start a new run from its weights (--restore {run_dir})"
        )
    if not (rec.train_csv and rec.eval_csv):
        raise ConfigError(f"--continue {run_dir}: its config.json names no data; give --dataset DIR")
    ft.data = steps.check_data(
        steps.DataSplit(Path(rec.train_csv), Path(rec.eval_csv)),
        rec.language,
        run_dir / "vocab.json",
        ft.config.max_excluded_share,
        progress=ft.config.progress,
        allow_mixed_script=ft.config.allow_mixed_script,
    )
    if rec.base_model and (left != ["gpt"] or "dvae" in ft.book.names):  # a stage or the export needs its files
        from utils.base_model import check_base_model

        ft.base = check_base_model(rec.base_model)
    ft.health_values = dict(rec.hparams)
    logger.info("continuing %s: stages %s", run_dir, ", ".join(f"{s.name} {s.state}" for s in ft.book.stages))
    return run_dir


def deadline(config: RunConfig, stage: str) -> float | None:
    """The wall-clock time (``time.time()``) at which ``stage`` stops, from its time limit (None: no limit)."""
    minutes = getattr(config, TIME_LIMITS[stage])
    return time.time() + 60.0 * float(minutes) if minutes else None


def clear_unresumable(run_dir: Path, name: str) -> None:
    """A stage that started but wrote no checkpoint starts again: its files of the first attempt go."""
    folder = stage_dir(run_dir, name)
    if name == "gpt":  # the run folder itself: only what a fresh GPT stage appends to
        stale = [folder / n for n in ("metrics.jsonl", "events.jsonl", "runtime_exclusions.jsonl")]
        for path in stale:
            path.unlink(missing_ok=True)
    elif folder.is_dir():
        shutil.rmtree(folder)
    logger.info("the %s stage had no checkpoint yet: starting it again", name)


def _emitter(ft: Any, kind: EventKind, stage: str) -> Any:
    """An on_progress (one argument) or on_evaluation (two) hook that sends the stage's events to the bus."""
    if kind is EventKind.PROGRESS:
        return lambda info: ft.events.emit(kind, stage=stage, **info)
    return lambda _trainer, record: ft.events.emit(kind, stage=stage, **record)


def _health(ft: Any, stage: str, grad_clip: float) -> Any:
    """The run's health thresholds for ``stage``, its events to the bus."""
    from utils.training.health import HealthConfig, HealthMonitor

    monitor = HealthMonitor(HealthConfig.from_values(dict(ft.health_values or {})), grad_clip=grad_clip)
    monitor.on_event = lambda record: ft.events.emit(EventKind.HEALTH, stage=stage, **record)
    return monitor


def _fast_matmuls(config: RunConfig) -> None:
    """TF32 float32 matmuls on CUDA, as the GPT stage's ``tf32`` lever sets them (off with --speed stock)."""
    import torch

    if torch.cuda.is_available() and config.speed != "stock" and config.speed_switches.get("tf32", True):
        torch.set_float32_matmul_precision("high")


def _resumable(run_dir: Path, name: str) -> bool:
    """The stage started and left a checkpoint to go on from."""
    from utils.runs import last_checkpoint

    folder = stage_dir(run_dir, name)
    return folder.is_dir() and last_checkpoint(folder) is not None


def _to_train(ft: Any, name: str) -> tuple[bool, bool] | None:
    """None: the stage is not in the run or is done; else (resume, its state was running)."""
    state = ft.book.get(name)
    if state is None or state.state == "done":
        return None
    resume = state.state == "running" and _resumable(ft.run_dir, name)
    if state.state == "running" and not resume:
        clear_unresumable(ft.run_dir, name)
    return resume, state.state == "running"


# --- the DVAE stage ----------------------------------------------------------------------------


def run_dvae(ft: Any) -> Any:
    """The DVAE stage (when the run has it and it is not done): RUN_DIR/dvae/dvae.pth for the GPT stage."""
    from utils.finetune.stage_values import dvae_stage
    from utils.training.dvae.stage import StageHooks, train_dvae

    todo = _to_train(ft, "dvae")
    if todo is None:
        return None
    resume, _ = todo
    _fast_matmuls(ft.config)
    stage, _sources = dvae_stage(ft.config)
    hooks = StageHooks(
        on_progress=[_emitter(ft, EventKind.PROGRESS, "dvae")],
        on_evaluation=[_emitter(ft, EventKind.EVALUATION, "dvae")],
        health=_health(ft, "dvae", stage.grad_clip),
        deadline=deadline(ft.config, "dvae"),
        dashboard=ft.config.logger,
    )
    data = ft._need_preflight()
    with ft.book.running("dvae"):
        result = train_dvae(
            None if resume else stage,
            data.train_samples,
            data.eval_samples,
            ft.run_dir,
            base_model=ft._need_base(),
            resume=resume,
            progress=ft.config.progress,
            hooks=hooks,
        )
        held = result.report["heldout"]
        ft.book.done(
            "dvae",
            stop_reason=result.stop_reason,
            best_checkpoint="dvae/best_model.pth" if (result.stage_dir / "best_model.pth").is_file() else None,
            dvae="dvae/dvae.pth",
            weights_step=result.report.get("weights_step"),
            heldout_mel_mse_before=held["before"].get("mel_mse"),
            heldout_mel_mse_after=held["after"].get("mel_mse"),
            changed_share=held["changed_share"].get("mean"),
        )
    return result


# --- the GPT stage -----------------------------------------------------------------------------


def run_gpt(ft: Any) -> Any:
    """The GPT stage in the run folder: fresh, resumed from its checkpoint, or started again.

    The last stage of a run may go on after it finished (``--epochs`` more, or after its time
    limit): nothing after it read its weights.
    """
    from utils.finetune import restart
    from utils.training.dvae.handoff import use_stage_dvae

    state = ft.book.get("gpt")
    if state is None:
        return None
    last_again = state.state == "done" and ft.continue_dir is not None and ft.book.names[-1] == "gpt"
    todo = _to_train(ft, "gpt") if not last_again else (True, True)
    if todo is None:
        return None
    resume = todo[0]
    if resume:  # refused here (epochs all done) before the stage is marked running
        config, _last = restart.load_continue_config(ft.run_dir, ft.continue_epochs)
        if config.dashboard_logger != ft.config.logger:  # --continue --logger X: Coqui reads config.json again
            config.dashboard_logger = ft.config.logger
            config.save_json(str(ft.run_dir / "config.json"))
    else:
        config = ft.trainer_config or restart.load_fresh_config(ft.run_dir, ft.continue_epochs)
    limit = deadline(ft.config, "gpt")
    with ft.book.running("gpt"):
        if resume:
            result = ft._fit(
                config, ft._need_preflight(), output=ft.run_dir.parent, continue_path=ft.run_dir, deadline=limit
            )
        else:
            if ft.book.get("dvae") is not None:
                use_stage_dvae(config, ft.run_dir)
            # a --restore run continued before its GPT stage began: the weights it was started from
            restore = ft.restored.checkpoint if ft.restored else config.toolkit.get("restored_from")
            result = ft._fit(
                config,
                ft._need_preflight(),
                output=ft.run_dir.parent,
                restore_path=restore,
                run_folder=ft.run_dir,
                deadline=limit,
            )
        ft.trainer_config = config
        evals = [r["eval_loss"] for r in result.records if r.get("eval_loss") is not None]
        ft.book.done(
            "gpt",
            stop_reason=result.stop_reason,
            best_checkpoint="best_model.pth" if (ft.run_dir / "best_model.pth").is_file() else None,
            eval_loss_first=evals[0] if evals else None,
            eval_loss_best=min(evals) if evals else None,
            steps=result.total_steps,
        )
    ft.gpt_trained = True
    return result


def export_gpt(ft: Any) -> Path | None:
    """The GPT stage's export (RUN_DIR/export): the decoder stage's input and the run's product.

    Written when the GPT stage trained in this process, or when a continued run lacks it.
    """
    from utils.after.export import export_run

    state = ft.book.get("gpt")
    if state is None or state.state != "done":
        return None
    if not ft.config.export or state.stop_reason == "divergence":
        return None
    out = ft.run_dir / "export"
    if ft.gpt_exported or (not ft.gpt_trained and (out / "export_info.json").is_file()):
        return out  # written in this process, or by the run before it was continued
    exported = export_run(ft.run_dir)
    ft.gpt_exported = True
    logger.info("inference export: %s (load it with scripts/synthesize.py --model %s)", exported, exported)
    return exported


# --- the decoder stage -------------------------------------------------------------------------


def run_decoder(ft: Any) -> Any:
    """The decoder stage (when the run has it and it is not done), on the latents of the run's GPT."""
    from utils.finetune.stage_values import decoder_stage
    from utils.training.decoder.stage import StageHooks, train_decoder

    todo = _to_train(ft, "decoder")
    if todo is None:
        return None
    resume, _ = todo
    base = ft._need_base()
    gpt_model = ft.run_dir / "export" if ft.book.get("gpt") is not None else Path(base.root)
    if not (gpt_model / "model.pth").is_file():
        raise ConfigError(
            f"{gpt_model} has no model.pth: the decoder stage trains on the GPT stage's export; "
            f"run {_continue(ft)} to write it"
        )
    if ft.book.get("dvae") is not None and ft.book.get("gpt") is None:
        logger.warning("the decoder learns the base GPT's latents of the new DVAE's codes; train the GPT stage too")
    _fast_matmuls(ft.config)
    stage, _sources = decoder_stage(ft.config)
    hooks = StageHooks(
        on_progress=[_emitter(ft, EventKind.PROGRESS, "decoder")],
        on_evaluation=[_emitter(ft, EventKind.EVALUATION, "decoder")],
        health=_health(ft, "decoder", 0.0),  # clipping saturation off: the mel x 45 loss is clipped by design
        deadline=deadline(ft.config, "decoder"),
        dashboard=ft.config.logger,
    )
    data = ft._need_preflight()
    with ft.book.running("decoder"):
        result = train_decoder(
            stage,
            data.train_samples,
            data.eval_samples,
            ft.run_dir,
            gpt_model,
            base_model=base.root,
            dvae=ft.run_dir / "dvae" / "dvae.pth" if ft.book.get("dvae") is not None else None,
            cache_dir=Path(ft.config.output_path) / ".clip_cache",
            resume=resume,
            export=False,
            progress=ft.config.progress,
            plots=ft.config.plots,
            hooks=hooks,
        )
        ft.book.done(
            "decoder",
            stop_reason=result.stop_reason,
            best_checkpoint="decoder/best_model.pth" if (result.stage_dir / "best_model.pth").is_file() else None,
            heldout_mel_l1_before=result.mel_l1_before,
            heldout_mel_l1_best=result.best_mel_l1,
            steps=result.steps,
        )
    ft.decoder_trained = True
    return result


def _continue(ft: Any) -> str:
    return f"python utils/gpt_train.py --continue {ft.run_dir}"


# --- the final export --------------------------------------------------------------------------


def finish_export(ft: Any) -> Path | None:
    """The run's export with every stage's product: the decoder in model.pth, dvae.pth beside it."""
    names = ft.book.names
    out = ft.run_dir / "export"
    decoder = ft.book.get("decoder")
    if decoder is not None and decoder.state == "done" and ft.config.export:
        if ft.decoder_trained or not (out / "decoder_info.json").is_file():
            _write_decoder(ft, out, from_gpt="gpt" in names)
    dvae = ft.book.get("dvae")
    if dvae is not None and dvae.state == "done" and (out / "model.pth").is_file():
        _copy_atomic(ft.run_dir / "dvae" / "dvae.pth", out / "dvae.pth")
        _copy_atomic(Path(ft._need_base().mel_stats), out / "mel_stats.pth")  # the DVAE's mel front end
    return out if (out / "model.pth").is_file() else None


def _write_decoder(ft: Any, out: Path, *, from_gpt: bool) -> None:
    """The decoder stage's best weights into the export's model.pth (every other weight as it was)."""
    import json

    from utils.runs import last_checkpoint, read_jsonl
    from utils.training.decoder.export import export_decoder, stage_decoder_state, write_decoder_into_model

    folder = ft.run_dir / "decoder"
    best = folder / "best_model.pth"
    checkpoint = best if best.is_file() else last_checkpoint(folder)
    if checkpoint is None:
        raise ConfigError(f"{folder} has no checkpoint to export; run {_continue(ft)}")
    losses = [r["eval_loss"] for r in read_jsonl(folder / "metrics.jsonl") if r.get("eval_loss") is not None]
    info = {
        "decoder_checkpoint": str(checkpoint.resolve()),
        "held_out_mel_l1_before": losses[0] if losses else None,
        "held_out_mel_l1_exported": min(losses) if losses and checkpoint == best else None,
    }
    if from_gpt:
        write_decoder_into_model(out / "model.pth", stage_decoder_state(checkpoint), out / "model.pth")
        (out / "decoder_info.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
    else:
        if out.exists():
            shutil.rmtree(out)  # the run's own export, not finished by an earlier attempt
        export_decoder(ft._need_base().root, checkpoint, out, info=info)
    logger.info("export: %s holds the fine-tuned decoder (from %s)", out, checkpoint)


def _copy_atomic(src: Path, dest: Path) -> None:
    from utils.fs import replace_atomically

    replace_atomically(dest, lambda tmp: shutil.copyfile(src, tmp))
