"""Starting again from a run: ``--continue`` (resume exactly) and ``--restore`` (new run, old weights).

See RESTART_TRAINING_GUIDE.md. Checkpoints are found and read through :mod:`utils.runs`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from utils.errors import ConfigError
from utils.finetune.config import DECODER_FIELDS, DVAE_FIELDS, TIME_LIMITS, RunConfig
from utils.runs import run_folder_of  # noqa: F401  (FineTune.resume: a stage folder names its run)

logger = logging.getLogger(__name__)

# What --continue may change: the new total of epochs and the stages' time limits (and where the base
# model and the data now lie, when they moved: RunInputs checks they are the same files; progress, plots).
CONTINUE_ALLOWED = {"epochs"}
STAGE_VALUES = ("stages", *DVAE_FIELDS, *DECODER_FIELDS, "dvae_settings", "decoder_settings")
# The base model's files the run's Coqui config names (model_args); they move with the base folder.
BASE_MODEL_ARGS = ("xtts_checkpoint", "dvae_checkpoint", "mel_norm_file")


@dataclass
class RestoreSource:
    """A checkpoint to start a new run from, and what its run folder says about it."""

    checkpoint: Path
    run_dir: Path
    toolkit: dict[str, Any]  # config.json's "toolkit" as stored; typed: :attr:`record`
    lr: float | None  # the LR the run had reached at this checkpoint

    @property
    def record(self) -> Any:
        """The run's :class:`utils.runs.RunRecord`."""
        from utils.runs import RunRecord

        return RunRecord.from_dict(self.toolkit)

    @property
    def lr_reference(self) -> tuple[float, str] | None:
        """(LR, source) for a preset's lr_scale: the LR reached at the checkpoint."""
        return (self.lr, f"LR reached at {self.checkpoint.name}") if self.lr else None


def locate_restore(path: Path) -> RestoreSource:
    """A checkpoint file, or a run folder (its best_model.pth, else the last checkpoint)."""
    from utils import runs

    ckpt = runs.absolute(runs.restore_checkpoint(path))
    run_dir = ckpt.parent
    toolkit = runs.read_toolkit_record(run_dir)
    return RestoreSource(checkpoint=ckpt, run_dir=run_dir, toolkit=toolkit, lr=lr_at_checkpoint(ckpt))


def lr_at_checkpoint(checkpoint: str | Path) -> float | None:
    """The LR the run had reached at this checkpoint (from the LR bridge's state), or None."""
    from utils.runs import load_checkpoint
    from utils.training.lr_schedule import ScheduleSpec

    state = load_checkpoint(checkpoint, mmap=True)
    sched = (state.get("scheduler") or [None])[0]
    if not (isinstance(sched, dict) and "spec" in sched):
        return None
    spec = ScheduleSpec(**dict(sched["spec"]))
    return spec.lr_at(
        int(sched["optimizer_steps"]), float(sched["plateau_scale"]), float(sched.get("health_scale", 1.0))
    )


def apply_restore_defaults(config: RunConfig, src: RestoreSource) -> RunConfig:
    """Language, base model and data default to the restored run's (the weights fit them)."""
    rec, stored_language = src.record, src.toolkit.get("language")
    if config.language and stored_language and config.language != stored_language:
        raise ConfigError(
            f"--restore keeps the restored run's language ({stored_language}); drop --language {config.language} or "
            "start from the base model"
        )
    from utils.runs import RunInputs, read_run_config

    recorded = read_run_config(src.run_dir) if (src.run_dir / "config.json").is_file() else {}
    inputs = RunInputs.read(src.run_dir, f"--restore {src.checkpoint}", recorded, checks_given=False)
    changes: dict[str, Any] = {}
    if not config.language and stored_language:
        changes["language"] = stored_language
    if config.base_model is None and rec.base_model:
        changes["base_model"] = inputs.base_model()
    located = None if (config.dataset or config.train_csv or config.eval_csv or config.demo) else inputs.data()
    if located is not None:
        changes.update(train_csv=located[0], eval_csv=located[1])
    if not changes:
        return config
    import dataclasses

    return dataclasses.replace(config, **changes)


def restored_vocab(src: RestoreSource) -> tuple[Path, dict[str, Any] | None]:
    """The restored run's vocabulary (and its extension record): the weights' rows fit it."""
    vocab = src.run_dir / "vocab.json"
    if not vocab.is_file():
        raise ConfigError(f"--restore: {vocab} is missing; the vocabulary must come with the checkpoint's run folder")
    ext = src.record.vocab_extension
    return vocab, (dict(ext) if ext else None)


def check_continue_request(run_dir: Path, config: RunConfig) -> None:
    """``--continue`` resumes exactly: refuse any change but the number of epochs."""
    if not (run_dir / "config.json").is_file():
        raise ConfigError(f"--continue {run_dir}: no config.json there; give a run folder made by utils/gpt_train.py")
    changed = [k for k in config.hparams if k not in CONTINUE_ALLOWED]
    changed += [k for k in ("preset", "restore") if getattr(config, k)]
    changed += [k for k in STAGE_VALUES if config.source(k) == "cli"]  # a recipe's are defaults, not changes
    if config.dataset_hours is not None and config.source("dataset_hours") == "cli":
        changed.append("dataset_hours")  # a recipe's dataset_hours is a default, not a change
    if changed:
        raise ConfigError(
            f"--continue resumes {run_dir} exactly and takes only --epochs, the stages' --max-minutes and where "
            f"moved inputs lie (--base-model, --dataset); to change {', '.join(changed)} start a new "
            f"run from its weights: --restore {run_dir} plus the new values (see RESTART_TRAINING_GUIDE.md)"
        )


def load_continue_config(run_dir: Path, epochs: int | None) -> tuple[Any, Path]:
    """The run's own config (Coqui's Trainer reads it back anyway) with the new total of epochs.

    Its inputs were located before any stage ran (:func:`relocate_run`).

    Returns:
        (the ToolkitGPTConfig from run_dir/config.json, the checkpoint to resume from).
    """
    from utils import runs
    from utils.training.gpt.config import ToolkitGPTConfig

    last = runs.resume_checkpoint(run_dir)
    done = runs.epochs_done(last)
    config = ToolkitGPTConfig()
    config.load_json(str(run_dir / "config.json"))
    tk = config.toolkit
    if epochs is not None:
        if epochs <= done:
            raise ConfigError(
                f"--epochs {epochs}: {run_dir} has already completed {done} epochs; --epochs is the new "
                f"total, give more than {done}"
            )
        if config.lr_scheduler in ("cosine",) and epochs > config.epochs:
            logger.warning(
                "cosine schedule: its horizon stays the original %s optimizer steps; the extra epochs run at min_lr",
                config.lr_scheduler_params.get("total_steps"),
            )
        config.epochs = int(epochs)
        tk.setdefault("hparams", {})["epochs"] = config.epochs
        tk["hparams"].setdefault("sources", {})["epochs"] = "cli (--continue)"
        config.save_json(str(run_dir / "config.json"))
    elif done >= config.epochs:
        raise ConfigError(
            f"{run_dir} has finished its {config.epochs} epochs; to train longer: --continue {run_dir} "
            f"--epochs N with N > {config.epochs}"
        )
    logger.info("continuing %s from %s (%d of %d epochs done)", run_dir, last.name, done, config.epochs)
    return config, last


def continued_config(record: Any, request: RunConfig, run_dir: Path | None = None) -> RunConfig:
    """The run's own values (config.json's ``run_config``) with what ``--continue`` may change.

    Args:
        record: the run's :class:`utils.runs.RunRecord`, its inputs already located
            (:func:`relocate_run`): the base model and the CSVs are taken from it, where they lie now.
        request: the ``--continue`` command's values: its time limits, progress, plots and logger apply.
        run_dir: the run folder; its parent is the output folder now (the clip cache beside it).

    Returns:
        The run's configuration (``request`` itself for a run made before the record existed).
    """
    if not record.run_config:
        return request
    import dataclasses

    stored = RunConfig.from_dict(dict(record.run_config))
    located: dict[str, Any] = {}
    if record.base_model:
        located["base_model"] = Path(record.base_model)
    if record.train_csv and record.eval_csv:
        located.update(dataset=None, train_csv=Path(record.train_csv), eval_csv=Path(record.eval_csv))
    if run_dir is not None:
        located["output_path"] = Path(run_dir).parent
    stored = dataclasses.replace(stored, **located)  # the same inputs, where they lie now: not a change
    changes: dict[str, Any] = {
        name: getattr(request, name) for name in TIME_LIMITS.values() if request.source(name) != "default"
    }
    changes.update(progress=request.progress, plots=request.plots)
    if request.source("logger") != "default":  # a dashboard is a view of the run: --continue may switch it
        changes["logger"] = request.logger
    return stored.replace(**changes)


def relocate_run(run_dir: Path, base_model: Path | None = None, data: tuple[Path, Path] | None = None) -> None:
    """Before any stage of a continued run: its config.json names its inputs where they lie now.

    Every stage reads them from there (the GPT stage's config, the DVAE and decoder stages' base
    model, the data); ``base_model``/``data`` say where they moved (:func:`relocate_inputs`).

    Raises:
        DataError: an input is gone or a folder given for it holds other files (one line).
    """
    from utils.training.gpt.config import ToolkitGPTConfig

    config = ToolkitGPTConfig()
    config.load_json(str(run_dir / "config.json"))
    if relocate_inputs(config, run_dir, base_model, data):
        config.save_json(str(run_dir / "config.json"))


def load_fresh_config(run_dir: Path, epochs: int | None) -> Any:
    """The GPT config a run folder was started with, for a GPT stage that has not written a checkpoint yet."""
    from utils.training.gpt.config import ToolkitGPTConfig

    config = ToolkitGPTConfig()
    config.load_json(str(run_dir / "config.json"))
    if epochs is not None:
        config.epochs = int(epochs)
        config.toolkit.setdefault("hparams", {})["epochs"] = config.epochs
    return config


def relocate_inputs(config: Any, run_dir: Path, base_model: Path | None, data: tuple[Path, Path] | None) -> bool:
    """Point the run's config at where its base model, data and vocabulary lie now; True if a path changed.

    Paths are located by :class:`utils.runs.RunInputs` (absolute; a relative path of an earlier
    version from the folder the run was started in); ``base_model``/``data`` are where they moved.

    Raises:
        DataError: an input is gone (one line naming it and the option that says where it lies now),
            or a folder given for it holds other files.
    """
    from utils import runs
    from utils.errors import DataError

    recorded = runs.read_run_config(run_dir)
    inputs = runs.RunInputs.read(run_dir, f"--continue {run_dir}", recorded)
    before = json.dumps(config.to_dict(), sort_keys=True, default=str)
    tk, args = config.toolkit, config.model_args
    base = inputs.base_model(base_model)
    moved = {str(tk["base_model"]): base} if base is not None and tk.get("base_model") else {}
    for name in BASE_MODEL_ARGS:
        value = getattr(args, name, None)
        if not value:
            continue
        path = runs.locate_recorded(run_dir, value, recorded, moved)
        if not path.is_file():
            raise DataError(
                f"--continue {run_dir}: {path} (model_args.{name} in its config.json) is gone; if the base model "
                f"moved, say where: --continue {run_dir} --base-model DIR"
            )
        setattr(args, name, str(path))
    ext = tk.get("vocab_extension")
    if ext and ext.get("base_vocab"):
        ext["base_vocab"] = str(runs.locate_recorded(run_dir, ext["base_vocab"], recorded, moved))
    if (run_dir / "vocab.json").is_file():  # the run's vocabulary lives in its folder, wherever that is now
        args.tokenizer_file = str(runs.absolute(run_dir / "vocab.json"))
        if ext:
            ext["path"] = args.tokenizer_file
    if base is not None:
        tk["base_model"] = str(base)
    csvs = inputs.data(data)
    if csvs is not None:
        tk["train_csv"], tk["eval_csv"] = str(csvs[0]), str(csvs[1])
    return json.dumps(config.to_dict(), sort_keys=True, default=str) != before
