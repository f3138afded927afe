"""The fine-tune recipe: one object whose named steps run the whole flow, for every front end.

    from utils.finetune import FineTune, RunConfig
    ft = FineTune(RunConfig.build(dataset="data/", base_model="xtts_v2/", language="en",
                                  stages="dvae,gpt,decoder"))
    result = ft.run()          # or the steps one by one, in this order:
    # ft.locate_base(); ft.load_data(); ft.prepare_language(); ft.preflight(); ft.resolve_hparams()
    # ft.plan_schedule(); ft.build_trainer(); ft.start_run(); ft.train_dvae(); ft.train(); ft.export()
    # ft.train_decoder(); ft.export()

The stages (``RunConfig.stages``, default the GPT only) train in the order DVAE, GPT, decoder
(:mod:`utils.finetune.pipeline`); a step for a stage the run does not have, or has finished,
does nothing.

``FineTune.resume(run_dir)`` continues a run exactly; ``FineTune.restore(checkpoint, overrides)``
starts a new run from a checkpoint's weights. The command line (utils/gpt_train.py), the
notebook, scripts/lr_find.py, the benchmarks and the web UI all drive this object; progress and
events leave it through :attr:`FineTune.events` (:mod:`utils.events`).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from utils.errors import ConfigError
from utils.events import EventBus, EventKind, LogSubscriber, ProgressBar, Subscriber
from utils.finetune import pipeline, restart, steps
from utils.finetune.config import RunConfig
from utils.finetune.steps import DEFAULT_CACHE, DataSplit, SchedulePlan
from utils.finetune.training import TrainResult
from utils.hparams import Resolved

logger = logging.getLogger(__name__)

T = TypeVar("T")


def _step(fn: Callable[..., T]) -> Callable[..., T]:
    """Announce a recipe step on the event bus (``stage`` started / done, with its ``seconds``).

    A step that took a second or more is logged with its time, so a slow start-up says where it went.
    """

    @functools.wraps(fn)
    def wrapper(self: FineTune, *args: Any, **kwargs: Any) -> T:
        self.events.emit(EventKind.STAGE, name=fn.__name__, status="started")
        started = time.perf_counter()
        out = fn(self, *args, **kwargs)
        seconds = time.perf_counter() - started
        if seconds >= 1.0:
            logger.info("%s took %.1f s", fn.__name__.replace("_", " "), seconds)
        self.events.emit(EventKind.STAGE, name=fn.__name__, status="done", seconds=round(seconds, 3))
        return out

    return wrapper


class FineTune:
    """A fine-tune of XTTS v2 (its DVAE, GPT and decoder stages), step by step.

    Args:
        config: the run's values (:class:`RunConfig`).
        subscribers: callables ``fn(event)`` to subscribe to :attr:`events` at once.
        cache_dir: where the demo's tiny base model is built (once).

    Each step stores what it found on the object (``base``, ``train_csv``/``eval_csv``,
    ``vocab``/``vocab_extension``, ``data``, ``hparams``, ``schedule``, ``trainer_config``,
    ``run_dir``, ``book`` (the stages' record), ``stage_results``, ``result``, ``export_dir``) and
    returns it; a step runs the steps it needs that have not run.
    """

    def __init__(
        self, config: RunConfig, *, subscribers: Iterable[Subscriber] = (), cache_dir: Path = DEFAULT_CACHE
    ) -> None:
        self.events = EventBus([LogSubscriber(), *subscribers])  # the log is one subscriber, the bar another
        if config.progress:
            self.events.subscribe(ProgressBar())
        self.cache_dir = Path(cache_dir)
        self.restored: restart.RestoreSource | None = None
        if config.restore is not None:
            self.restored = restart.locate_restore(config.restore)
            config = restart.apply_restore_defaults(config, self.restored)
        self.config = config
        self.continue_dir: Path | None = None
        self.base: Any = None
        self.train_csv: Path | None = None
        self.eval_csv: Path | None = None
        self.vocab: Path | None = None
        self.vocab_extension: dict[str, Any] | None = None
        self.data: DataSplit | None = None
        self.hparams: Resolved | None = None
        self.schedule: SchedulePlan | None = None
        self.trainer_config: Any = None
        self.result: TrainResult | None = None
        self.export_dir: Path | None = None
        self.run_dir: Path | None = None
        self.book: pipeline.StageBook | None = None
        self.stage_results: dict[str, Any] = {}
        self.health_values: dict[str, Any] | None = None  # the health monitor's thresholds (the hparams)
        self.continue_request: RunConfig | None = None
        self.continue_epochs: int | None = None
        self.gpt_trained = self.gpt_exported = self.decoder_trained = False

    # --- other ways in ------------------------------------------------------------------------

    @classmethod
    def resume(
        cls,
        run_dir: str | Path,
        *,
        epochs: int | None = None,
        config: RunConfig | None = None,
        subscribers: Iterable[Subscriber] = (),
    ) -> FineTune:
        """Continue ``run_dir`` exactly from its newest checkpoint with optimizer state.

        Only ``epochs`` (the new total) may change; ``config`` may say where the base model and the
        data now lie (``base_model``, ``dataset``: checked to be the same files) and set
        progress/plots. Anything else is refused (start a new run with :meth:`restore`).
        """
        config = config or RunConfig()
        if epochs is not None:
            config = config.replace(epochs=int(epochs))
        from utils.runs import absolute

        # a stage folder names its run; absolute: the run's record and its messages name it the same from any folder
        run_dir = restart.run_folder_of(absolute(run_dir))
        restart.check_continue_request(run_dir, config)
        ft = cls(config, subscribers=subscribers)
        ft.continue_dir, ft.continue_request = run_dir, config
        ft.continue_epochs = int(config.hparams["epochs"]) if "epochs" in config.hparams else None
        return ft

    @classmethod
    def restore(
        cls,
        checkpoint: str | Path,
        overrides: RunConfig | Mapping[str, Any] | None = None,
        *,
        subscribers: Iterable[Subscriber] = (),
    ) -> FineTune:
        """A new run from a checkpoint's weights (a ``.pth`` or a run folder: its best model).

        ``overrides`` are the new values (a :class:`RunConfig` or a mapping for :meth:`RunConfig.build`);
        language, base model and data default to the restored run's. Step, LR schedule and
        optimizer start afresh.
        """
        config = overrides if isinstance(overrides, RunConfig) else RunConfig.build(**dict(overrides or {}))
        return cls(config.replace(restore=Path(checkpoint)), subscribers=subscribers)

    # --- the steps, in order ------------------------------------------------------------------

    @_step
    def locate_base(self) -> Any:
        """1. The base model's files, checked (the demo: a tiny random base, built once)."""
        self.base = steps.locate_base_model(self.config, self.cache_dir)
        return self.base

    @_step
    def load_data(self) -> tuple[Path, Path]:
        """2. The train and eval metadata files (the language code is checked too)."""
        self.train_csv, self.eval_csv = steps.locate_data(self.config)
        steps.check_language(self.config.language_code)
        return self.train_csv, self.eval_csv

    @_step
    def prepare_language(self) -> tuple[Path, dict[str, Any] | None]:
        """3. The vocabulary: the base's, a restored run's, or extended for a language XTTS lacks."""
        if self.restored is not None:
            self.vocab, self.vocab_extension = restart.restored_vocab(self.restored)
            return self.vocab, self.vocab_extension
        base, (train_csv, _) = self._need_base(), self._need_data()
        cfg = self.config
        self.vocab, self.vocab_extension = steps.prepare_language(
            cfg.language_code,
            base,
            train_csv,
            cfg.output_path / ".staging",
            new_tokens=cfg.new_tokens,
            warmup_steps=cfg.new_token_warmup_steps,
            allow_mixed_script=cfg.allow_mixed_script,
        )
        return self.vocab, self.vocab_extension

    @_step
    def preflight(self) -> DataSplit:
        """4. Every row of both CSVs checked with the vocabulary training uses; unusable data refused."""
        train_csv, eval_csv = self._need_data()
        if self.vocab is None:
            self.prepare_language()
        assert self.vocab is not None
        split = DataSplit(train_csv, eval_csv)
        self.data = steps.check_data(
            split,
            self.config.language_code,
            self.vocab,
            self.config.max_excluded_share,
            progress=self.config.progress,
            cache_dir=Path(self.config.output_path) / ".clip_cache",
            allow_mixed_script=self.config.allow_mixed_script,
        )
        return self.data

    @_step
    def resolve_hparams(self, measured_hours: float | None = None) -> Resolved:
        """5. Every hyperparameter with its source: defaults, table row, preset, recipe, caller.

        Without ``dataset_hours`` the hours are ``measured_hours``, else those the preflight kept.
        """
        if measured_hours is None and self.config.dataset_hours is None:
            measured_hours = self._need_preflight().train_report.hours_kept
        lr_reference = self.restored.lr_reference if self.restored else None
        self.hparams = steps.resolve_hparams(self.config, measured_hours, lr_reference)
        self.health_values = dict(self.hparams.values)
        h = self.hparams
        logger.info(
            "dataset hours %.4g (%s): lr %.3g (%s), weight decay %.3g (%s)",
            h.dataset_hours or 0.0,
            "given" if self.config.dataset_hours is not None else "kept by the preflight",
            h["lr"],
            h.sources["lr"],
            h["weight_decay"],
            h.sources["weight_decay"],
        )
        return self.hparams

    @_step
    def plan_schedule(self, num_train_rows: int | None = None, *, strict: bool = True) -> SchedulePlan:
        """6. The LR schedule over the planned optimizer steps, checked before any training.

        Args:
            num_train_rows: rows per epoch (default: the rows the preflight kept).
            strict: raise :class:`ConfigError` when the check finds errors (warnings are logged).
        """
        hparams = self.hparams or self.resolve_hparams()
        rows = num_train_rows if num_train_rows is not None else len(self._need_preflight().train_samples)
        self.schedule = steps.plan_schedule(hparams, rows, self.config.gpus)
        if strict:
            steps.report_schedule_check(self.schedule.check)
        return self.schedule

    @_step
    def build_trainer(self) -> Any:
        """7. The Coqui trainer config (GPTTrainerConfig + the toolkit's run record)."""
        from utils.finetune.training import build_config

        cfg, data = self.config, self._need_preflight()
        hparams = self.hparams or self.resolve_hparams()
        plan = self.schedule or self.plan_schedule()
        config = build_config(
            hparams,
            self._need_base(),
            output_path=cfg.output_path,
            language=cfg.language_code,
            run_name=cfg.run_name,
            vocab_path=self.vocab,
            vocab_extension=self.vocab_extension,
        )
        config.lr_scheduler_params["total_steps"] = plan.total_steps
        config.dashboard_logger = cfg.logger
        tk = config.toolkit
        tk["speed"] = steps.speed_options(cfg, config.num_loader_workers)
        tk["test_sentences"] = int(cfg.test_sentences)
        tk["quality_eval"] = cfg.quality_eval
        tk["test_max_new_tokens"] = 20 if cfg.demo else None  # a random tiny GPT never emits its stop token
        tk["export"] = bool(cfg.export)
        tk.update(
            {
                "planned_optimizer_steps": plan.total_steps,
                "preset": cfg.preset,
                "restored_from": str(self.restored.checkpoint) if self.restored else None,
                **steps.recorded_inputs(cfg, self._need_base(), data),
            }
        )
        self.trainer_config = config
        return config

    @_step
    def start_run(self) -> Path:
        """8. The run folder with what every stage reads (config.json, vocab.json, the preflight report,
        stages.json); ``--continue``: the run's own record read back and its data checked again."""
        if self.run_dir is None:
            self.run_dir = pipeline.resume_run(self) if self.continue_dir else pipeline.start_new_run(self)
            self.events.emit(EventKind.RUN_DIR, path=str(self.run_dir))  # the log subscriber names it
        return self.run_dir

    @_step
    def train_dvae(self) -> Any:
        """9. The DVAE stage (RUN_DIR/dvae): new target codes for the GPT stage."""
        self._need_run()
        result = self.stage_results["dvae"] = pipeline.run_dvae(self)
        return result

    @_step
    def train(self) -> TrainResult | None:
        """10. The GPT stage in the run folder, with Coqui's Trainer (in a torchrun worker: data-parallel)."""
        self._need_run()
        if self.book is not None and self.book.get("dvae") is not None and "dvae" not in self.stage_results:
            self.train_dvae()  # the GPT trains on the DVAE stage's codes
        result = pipeline.run_gpt(self)
        if result is not None:
            self.result = self.stage_results["gpt"] = result
        return result

    @_step
    def export(self) -> Path | None:
        """11. The inference folder (RUN_DIR/export): the GPT stage's export, then the decoder and DVAE
        stages' products in it once they are done; None when there is none (export off, a divergence)."""
        self._need_run()
        gpt = pipeline.export_gpt(self)
        self.export_dir = pipeline.finish_export(self) or gpt
        if self.result is not None:
            self.result.export_dir = self.export_dir
        return self.export_dir

    @_step
    def train_decoder(self) -> Any:
        """12. The HiFi-GAN decoder stage (RUN_DIR/decoder) on the latents of the run's GPT."""
        self._need_run()
        if self.book is not None and self.book.get("gpt") is not None and not self.gpt_exported:
            self.export()  # the decoder's input
        result = self.stage_results["decoder"] = pipeline.run_decoder(self)
        return result

    # --- whole flows --------------------------------------------------------------------------

    def prepare(self) -> Any:
        """Steps 1-7 (everything before training); returns the trainer config."""
        from utils.fs import check_writable_dir
        from utils.training import distributed
        from utils.training.dashboard import require_logger

        if self.config.gpus != distributed.world_size():
            raise ConfigError(
                f"gpus={self.config.gpus} but this process is one of {distributed.world_size()}: start "
                "data-parallel runs "
                "with utils/gpt_train.py --gpus N or torchrun --nproc_per_node N utils/gpt_train.py"
            )
        check_writable_dir(
            self.continue_dir or self.config.output_path, "--continue" if self.continue_dir else "--output-path"
        )
        require_logger(self.config.logger)  # a missing tracker package is named before any slow step
        if self.continue_dir is None:
            self.locate_base()
            self.load_data()
            self.prepare_language()
            self.preflight()
            self.resolve_hparams()
            self.plan_schedule()
        return self.build_trainer() if self.continue_dir is None else None

    def run(self) -> TrainResult | None:
        """Every step in order; the result (``finished`` or ``error`` goes to the event bus).

        In a data-parallel worker (torchrun) rank 0 runs the steps and the other ranks train on
        what it prepared (:func:`_follow_rank_zero`); they return None.
        """
        from utils.training import distributed

        if not distributed.is_rank_zero():
            _follow_rank_zero(self)
            return None
        try:
            self.prepare()
            self.start_run()
            for step in (self.train_dvae, self.train, self.export, self.train_decoder, self.export):
                step()
            result = self._final_result()
        except Exception as exc:
            self.events.emit(EventKind.ERROR, message=str(exc), type=type(exc).__name__)
            raise
        self.events.emit(
            EventKind.FINISHED,
            run_dir=str(result.run_dir),
            stop_reason=result.stop_reason,
            total_steps=result.total_steps,
            optimizer_steps=result.optimizer_steps,
            export_dir=str(self.export_dir) if self.export_dir else None,
            stages=result.stages,
        )
        return result

    def describe(self) -> dict[str, Any]:
        """The resolved configuration as plain data (what ``--dry-run`` prints), without training.

        Reads only wav headers (hours, when not given) and row counts; imports no torch.
        """
        return steps.describe(self.config, self.cache_dir, self.restored.lr_reference if self.restored else None)

    def preview_schedule(self, path: str | Path | None = None) -> Path:
        """Write a PNG of the LR over the planned optimizer steps (default OUTPUT/lr_schedule.png)."""
        cfg = self.config
        dest = Path(path) if path is not None else cfg.output_path / "lr_schedule.png"
        return steps.preview_run_schedule(cfg, self.restored.lr_reference if self.restored else None, dest)

    # --- helpers ------------------------------------------------------------------------------

    def _need_base(self) -> Any:
        return self.base if self.base is not None else self.locate_base()

    def _need_data(self) -> tuple[Path, Path]:
        if self.train_csv is None or self.eval_csv is None:
            self.load_data()
        assert self.train_csv is not None and self.eval_csv is not None
        return self.train_csv, self.eval_csv

    def _need_preflight(self) -> DataSplit:
        return self.data if self.data is not None else self.preflight()

    def _need_run(self) -> Path:
        return self.run_dir if self.run_dir is not None else self.start_run()

    def _final_result(self) -> TrainResult:
        """The GPT stage's result (an empty one for a run without it), with every stage's record."""
        assert self.run_dir is not None and self.book is not None
        result = self.result or TrainResult(self.run_dir, [], 0, 0, [], stop_reason=self.book.stages[-1].stop_reason)
        result.stages = [s.to_dict() for s in self.book.stages]
        result.export_dir = self.export_dir
        return result

    def _fit(self, config: Any, data: DataSplit, *, output: Path, **kwargs: Any) -> TrainResult:
        from utils.finetune.training import train
        from utils.training import distributed

        cfg = self.config
        kwargs.update(progress=cfg.progress, plots=cfg.plots)
        if distributed.is_distributed():  # rank 0: what the other ranks need to train (plain JSON)
            distributed.broadcast_json(
                {
                    "config": config.to_dict(),
                    "train_samples": data.train_samples,
                    "eval_samples": data.eval_samples,
                    "continue_path": _str_or_none(kwargs.get("continue_path")),
                    "restore_path": _str_or_none(kwargs.get("restore_path")),
                    "deadline": kwargs.get("deadline"),
                }
            )
        return train(config, data.train_samples, data.eval_samples, events=self.events, **kwargs)


def _follow_rank_zero(ft: FineTune) -> TrainResult:
    """A rank other than 0: wait for rank 0's preparation, then train on what it sent.

    Rank 0 alone locates the base, runs the preflight, builds the vocabulary and the config
    and writes the run folder, so N ranks do that work once and never race on files.
    """
    from utils.finetune.training import train
    from utils.training import distributed
    from utils.training.gpt.config import ToolkitGPTConfig

    job = distributed.broadcast_json(None)
    config = ToolkitGPTConfig()
    config.from_dict(job["config"])
    ft.trainer_config = config
    ft.result = train(
        config,
        job["train_samples"],
        job["eval_samples"],
        continue_path=job["continue_path"],
        restore_path=job["restore_path"],
        deadline=job.get("deadline"),
        progress=False,
        plots=ft.config.plots,
        events=ft.events,
    )
    return ft.result


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)
