"""The run folder: its config, its checkpoints (listed and checked), and which one to use.

Every tool that reads a run goes through here: ``--continue`` (the newest checkpoint with
optimizer state), ``--restore`` and export (the best model), evaluation (all checkpoints),
synthesis and the web UI (checkpoint names and steps, metrics.jsonl, events.jsonl). A run
folder holds config.json (with the toolkit's record under ``"toolkit"``), vocab.json,
``checkpoint_N.pth`` (full training state), ``best_model_N.pth`` (weights only) and
``best_model.pth`` (a link to the newest best), metrics.jsonl and events.jsonl. Checkpoints are
read through :func:`utils.safe_load.load_torch_file` (nothing in them can run code).

config.json records where the run's inputs lie (the base model, the metadata CSVs) and
preflight_report.json the CSVs it checked; :class:`RunInputs` and :func:`locate_recorded` find
them again for every reader, from any working folder, and say in one line how to point at files
that moved (their sizes and digests, recorded at the start, tell whether they are the same).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from utils.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

# checkpoint_N.pth (full training state) and best_model_N.pth (weights): group 1 the kind, group 2 the step N
CHECKPOINT_NAME = re.compile(r"^(checkpoint|best_model)_(\d+)\.pth$")
BEST = "best_model.pth"
PARTIAL_SUFFIX = ".partial"  # a checkpoint being written (utils/training/checkpoints.py renames it into place)


def checkpoint_step(path: str | os.PathLike[str]) -> int | None:
    """The training step in a checkpoint name (``checkpoint_N.pth``/``best_model_N.pth``), else None."""
    m = CHECKPOINT_NAME.match(Path(path).name)
    return int(m.group(2)) if m else None


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Rows of a JSON-lines file (metrics.jsonl, events.jsonl); [] when it is missing.

    A line that does not parse is skipped: training may be appending it right now.
    """
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except ValueError:
            logger.debug("skipping an incomplete line of %s", path)
    return rows


def load_checkpoint(path: str | os.PathLike[str], *, mmap: bool = False) -> dict[str, Any]:
    """Load a checkpoint on the CPU, never running code from it (``mmap``: lazy tensors).

    Raises:
        UnsafeModelFileError: the file pickles more than tensors and plain data.
        DataError: the file is missing, truncated or not a PyTorch file.
    """
    from utils.safe_load import load_torch_file

    return load_torch_file(path, mmap=mmap)


# --- config -----------------------------------------------------------------------------------


def read_run_config(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The run folder's config.json as a dict."""
    path = Path(run_dir) / "config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path}: {exc}; pass a run folder written by utils/gpt_train.py") from exc


def read_toolkit_record(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The toolkit's record in config.json (language, data, hyperparameters and their sources); {} if none."""
    if not (Path(run_dir) / "config.json").is_file():
        return {}
    return dict(read_run_config(run_dir).get("toolkit") or {})


@dataclass(frozen=True)
class RunRecord:
    """The toolkit's record of a run (config.json's ``"toolkit"``), typed for its readers.

    Written when the run starts (:meth:`utils.finetune.FineTune.build_trainer`); the trainer adds
    what it decides at the start (``speed_applied``, ``distributed``, ``micro_batch_plan``).
    Keys this class does not name are kept in ``extra``.
    """

    language: str = "en"
    base_model: str | None = None
    train_csv: str | None = None
    eval_csv: str | None = None
    grad_accum: int = 1
    eval_every_steps: int | None = None
    hparams: Mapping[str, Any] = field(default_factory=dict)  # values, "sources", table row (Resolved.as_dict)
    vocab_extension: Mapping[str, Any] | None = None  # a language XTTS lacks: utils.language.vocab.VocabExtension
    speed: Mapping[str, Any] = field(default_factory=dict)
    speed_applied: tuple[str, ...] = ()
    test_sentences: int = 0
    quality_eval: bool | None = None
    test_max_new_tokens: int | None = None
    export: bool = True
    planned_optimizer_steps: int | None = None
    preset: str | None = None
    restored_from: str | None = None
    run_config: Mapping[str, Any] | None = None  # utils.finetune.RunConfig.to_dict()
    distributed: Mapping[str, Any] | None = None
    micro_batch_plan: Mapping[str, Any] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, toolkit: Mapping[str, Any] | None) -> RunRecord:
        data = dict(toolkit or {})
        known = {f.name for f in fields(cls)} - {"extra"}
        values = {k: data.pop(k) for k in list(data) if k in known and data[k] is not None}
        if "speed_applied" in values:
            values["speed_applied"] = tuple(values["speed_applied"])
        return cls(**values, extra=data)

    @classmethod
    def read(cls, run_dir: str | os.PathLike[str]) -> RunRecord:
        """The record of ``run_dir`` (an empty one when config.json is missing)."""
        return cls.from_dict(read_toolkit_record(run_dir))

    @property
    def hparam_sources(self) -> dict[str, str]:
        return dict(self.hparams.get("sources") or {})


def run_language(run_config: dict[str, Any]) -> str:
    """The language the run trained on (the toolkit record; else en)."""
    return RunRecord.from_dict(run_config.get("toolkit")).language


# --- listing and checking ---------------------------------------------------------------------


def list_checkpoints(run_dir: str | os.PathLike[str]) -> list[Path]:
    """The run's checkpoints, one per step, oldest first (``checkpoint_N`` preferred over ``best_model_N``).

    ``best_model.pth`` is a copy of a ``best_model_N.pth``; it is listed only when nothing else is.
    """
    run_dir = Path(run_dir)
    by_step: dict[int, Path] = {}
    for path in run_dir.glob("*.pth"):
        step = checkpoint_step(path)
        if step is not None and (step not in by_step or path.name.startswith("checkpoint_")):
            by_step[step] = path
    found = [by_step[s] for s in sorted(by_step)]
    if not found and (run_dir / BEST).is_file():
        found = [run_dir / BEST]
    return found


def checkpoint_files(run_dir: str | os.PathLike[str]) -> list[Path]:
    """Every checkpoint file: ``checkpoint_N`` and ``best_model_N`` by step (oldest first; on one step
    ``checkpoint_N`` first), then ``best_model.pth``. What a person can pick to speak or export."""
    run_dir = Path(run_dir)
    found = []
    for path in run_dir.glob("*.pth"):
        m = CHECKPOINT_NAME.match(path.name)
        if m:
            found.append((int(m.group(2)), m.group(1) != "checkpoint", path))
    out = [p for _, _, p in sorted(found)]
    if (run_dir / BEST).is_file():
        out.append(run_dir / BEST)
    return out


def has_training_state(path: str | os.PathLike[str]) -> bool:
    """True when the checkpoint holds optimizer state (so a run can resume from it exactly)."""
    from utils.safe_load import UnsafeModelFileError

    try:
        state = load_checkpoint(path, mmap=True)
    except UnsafeModelFileError:
        raise  # a file that could run code is refused, not skipped quietly
    except DataError as exc:  # truncated or not a PyTorch file: not a resume point
        logger.warning("skipping %s as a resume point: %s", Path(path).name, exc)
        return False
    if not isinstance(state, dict) or "model" not in state:
        logger.warning("skipping %s as a resume point: no model state in it", Path(path).name)
        return False
    return bool(state.get("optimizer"))


def last_checkpoint(run_dir: str | os.PathLike[str], *, resumable: bool = True) -> Path | None:
    """The newest complete checkpoint (highest N), or None.

    As ``trainer.io.get_last_checkpoint``, but ``best_model.pth`` is never guessed by file time,
    and with ``resumable`` only files holding optimizer state count: ``checkpoint_N.pth``, and
    ``best_model_N.pth`` written by older versions that kept the optimizer in it. On equal N the
    file written last wins. ``resumable=False`` also takes weights-only best models.
    """
    found = [(checkpoint_step(p), p.stat().st_mtime_ns, p) for p in Path(run_dir).glob("*_*.pth")]
    found = sorted((f for f in found if f[0] is not None), reverse=True)
    for _, _, path in found:  # each candidate is opened (lazily mapped): a truncated file is skipped
        if has_training_state(path) if resumable else _readable(path):
            return path
    return None


def _readable(path: Path) -> bool:
    try:
        state = load_checkpoint(path, mmap=True)
    except DataError as exc:
        logger.warning("skipping %s: %s", path.name, exc)
        return False
    return isinstance(state, dict) and "model" in state


def best_eval_loss(run_dir: str | os.PathLike[str]) -> dict[str, float] | None:
    """The ``model_loss`` of the run's lowest-eval-loss ``best_model_N.pth`` (None without one)."""
    best = None
    for path in Path(run_dir).glob("best_model_*.pth"):
        if checkpoint_step(path) is None:
            continue
        try:
            loss = load_checkpoint(path, mmap=True).get("model_loss")
        except DataError:  # unreadable (a refused file included): its loss is unknown
            continue
        if isinstance(loss, dict) and loss.get("eval_loss") is not None:
            if best is None or float(loss["eval_loss"]) < float(best["eval_loss"]):
                best = {k: float(v) for k, v in loss.items() if v is not None}
    return best


# --- which checkpoint -------------------------------------------------------------------------


def resolve_checkpoint(source: str | os.PathLike[str], which: str = "best") -> tuple[Path, Path]:
    """``(run_dir, checkpoint)`` for a run folder or a checkpoint file (export, evaluate, synthesize).

    Args:
        source: a run folder or one of its ``.pth`` files.
        which: for a run folder, "best" (``best_model.pth``, the lowest eval loss) or "last".

    Raises:
        DataError: no checkpoint, or no config.json beside it.
    """
    source = Path(source)
    if source.is_file():
        run_dir, ckpt = source.parent, source
    elif source.is_dir():
        run_dir = source
        if which not in ("best", "last"):
            raise ConfigError(f"checkpoint choice {which!r}: use 'best' or 'last'")
        ckpts = list_checkpoints(source)
        if which == "best" and (source / BEST).is_file():
            ckpt = source / BEST
        elif ckpts:
            ckpt = ckpts[-1]
        else:
            raise DataError(f"{source} holds no checkpoint (*.pth); pass a run folder that finished at least one save")
    else:
        raise DataError(f"{source} does not exist; pass a run folder or a checkpoint .pth")
    if not (run_dir / "config.json").is_file():
        raise DataError(f"{run_dir} has no config.json; pass a run folder written by utils/gpt_train.py")
    return run_dir, ckpt


def restore_checkpoint(path: str | os.PathLike[str]) -> Path:
    """``--restore``: a checkpoint file, or a run folder (its best_model.pth, else the newest checkpoint)."""
    path = Path(path)
    if path.is_dir():
        ckpt = path / BEST if (path / BEST).is_file() else last_checkpoint(path)
        if ckpt is None:
            raise ConfigError(
                f"--restore {path}: no checkpoint in this folder; give a .pth file or a run folder with one"
            )
        return ckpt
    if path.is_file():
        return path
    raise ConfigError(f"--restore {path}: no such checkpoint file or run folder")


def remove_partial_files(run_dir: str | os.PathLike[str]) -> list[Path]:
    """Delete temporary files a killed save left behind; return what was deleted."""
    removed = []
    for tmp in Path(run_dir).glob(f".*{PARTIAL_SUFFIX}"):
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    if removed:
        logger.warning(
            "removed %d incomplete checkpoint file(s) left by an interrupted save: %s",
            len(removed),
            ", ".join(p.name for p in removed),
        )
    return removed


def resume_checkpoint(run_dir: str | os.PathLike[str]) -> Path:
    """``--continue``: the newest complete checkpoint with optimizer state (partial files removed first)."""
    remove_partial_files(run_dir)
    last = last_checkpoint(run_dir)
    if last is None:
        raise ConfigError(f"--continue {run_dir}: no complete checkpoint in the folder; start the run again")
    return last


def epochs_done(checkpoint: str | os.PathLike[str]) -> int:
    """Complete epochs at this checkpoint (the toolkit's exact count; Coqui's ``epoch`` otherwise)."""
    state = load_checkpoint(checkpoint, mmap=True)
    return int((state.get("toolkit_state") or {}).get("epochs_done", state.get("epoch", 0)))


# --- the stages of a run (stages.json) ------------------------------------------------------------

#: The stages a run can train, in their training order: the DVAE makes the GPT's target codes, the
#: GPT makes the decoder's latents.
STAGES = ("dvae", "gpt", "decoder")
STAGES_FILE = "stages.json"
#: Each stage's folder in the run folder: the GPT stage is the run folder itself (runs made before
#: the other stages existed read the same), the others are plain sub-folders.
STAGE_FOLDERS = {"dvae": "dvae", "gpt": "", "decoder": "decoder"}
STAGE_STATES = ("pending", "running", "done")


@dataclass
class StageState:
    """One stage of a run as ``stages.json`` records it.

    ``state``: "pending" (not started), "running" (started, not finished: killed, interrupted or
    still training) or "done". Paths are relative to the run folder. ``stop_reason`` says why a
    done stage stopped before its last epoch ("time_limit", "early_stopping") and why a running one
    stopped ("interrupted", "divergence", "error"). ``summary`` holds the stage's headline numbers
    (held-out losses before and after) and what it produced (dvae.pth, the export).
    """

    name: str
    state: str = "pending"
    folder: str = ""
    metrics: str = "metrics.jsonl"
    best_checkpoint: str | None = None
    stop_reason: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    summary: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def new(cls, name: str) -> StageState:
        folder = STAGE_FOLDERS[name]
        return cls(name=name, folder=folder, metrics=f"{folder}/metrics.jsonl" if folder else "metrics.jsonl")

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StageState:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def stage_dir(run_dir: str | os.PathLike[str], name: str) -> Path:
    """The folder of stage ``name`` in ``run_dir`` (the run folder itself for the GPT stage)."""
    folder = STAGE_FOLDERS[name]
    return Path(run_dir) / folder if folder else Path(run_dir)


def read_stages(run_dir: str | os.PathLike[str]) -> list[StageState]:
    """The run's stages in training order ([] for a run made before ``stages.json`` existed: GPT only).

    Raises:
        DataError: stages.json exists but cannot be read.
    """
    path = Path(run_dir) / STAGES_FILE
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return [StageState.from_dict(item) for item in data["stages"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"cannot read {path}: {exc}; the file is written by utils/gpt_train.py") from exc


def write_stages(run_dir: str | os.PathLike[str], stages: list[StageState]) -> Path:
    """Write ``stages.json`` whole (a reader never sees half of it)."""
    from utils.fs import write_json_atomic

    return write_json_atomic(Path(run_dir) / STAGES_FILE, {"stages": [s.to_dict() for s in stages]})


def run_folder_of(path: str | os.PathLike[str]) -> Path:
    """The run folder of ``path``: its parent for a DVAE or decoder stage folder, else ``path`` itself."""
    path = Path(path)
    stage_folders = {f for f in STAGE_FOLDERS.values() if f}
    if path.name in stage_folders and (path.parent / STAGES_FILE).is_file():
        return path.parent
    return path


def continue_command(path: str | os.PathLike[str]) -> str:
    """The command that goes on with the run that ``path`` (a run or stage folder) belongs to."""
    return f"python utils/gpt_train.py --continue {run_folder_of(path)}"


# --- paths the run records ---------------------------------------------------------------------
#
# A run records its inputs as absolute paths (runs of earlier versions kept the paths as typed,
# relative to the folder the run was started in) and, for the base model's files and the two
# CSVs, their sizes and digests, so files that moved can be told from other files.

FINGERPRINT_WHOLE = 64 << 20  # files up to this size are hashed whole
FINGERPRINT_PART = 4 << 20  # larger ones (model.pth: GBs) by their first and last 4 MiB and their size


def absolute(path: str | os.PathLike[str]) -> Path:
    """``path`` made absolute against the working folder (``~`` expanded, ``..`` folded, links kept)."""
    return Path(os.path.abspath(Path(path).expanduser()))


def fingerprint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``{"size", "sha256"}`` of a file; above 64 MiB the digest covers its first and last 4 MiB only."""
    path = Path(path)
    size = path.stat().st_size
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        if size <= FINGERPRINT_WHOLE:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        else:
            digest.update(fh.read(FINGERPRINT_PART))
            fh.seek(size - FINGERPRINT_PART)
            digest.update(fh.read(FINGERPRINT_PART))
    return {"size": size, "sha256": digest.hexdigest()}


def fingerprints(folder: str | os.PathLike[str], names: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """:func:`fingerprint` of each of ``names`` that is a file in ``folder``."""
    return {name: fingerprint(Path(folder) / name) for name in names if (Path(folder) / name).is_file()}


def started_in(run_dir: str | os.PathLike[str], output_path: str | None) -> Path | None:
    """The working folder a run was started in, when its ``output_path`` was relative (else None).

    The run folder is ``START/output_path/NAME``: ``runs/NAME`` started in ``/repo`` lies in ``/repo/runs``.
    """
    out = Path(output_path or ".")
    if out.is_absolute() or ".." in out.parts:
        return None
    parent = absolute(run_dir).parent
    n = len(out.parts)
    if n and parent.parts[-n:] != out.parts:
        return None
    return Path(*parent.parts[: len(parent.parts) - n]) if n else parent


def locate_recorded(
    run_dir: str | os.PathLike[str],
    value: str | os.PathLike[str],
    config: Mapping[str, Any] | None = None,
    moved: Mapping[str, str | os.PathLike[str]] | None = None,
) -> Path:
    """Where a path that ``run_dir`` records lies now (absolute; it may be gone).

    Args:
        run_dir: the run folder.
        value: the path as recorded (config.json, preflight_report.json).
        config: the run's config.json (read when None); a relative ``value`` (runs of earlier
            versions) is taken from the folder the run was started in (:func:`started_in`), else
            from the run folder.
        moved: recorded folder -> where it lies now; a path inside one moves with it.
    """
    path = Path(value).expanduser()
    for old, new in (moved or {}).items():
        inside = _inside(path, Path(old))
        if inside is not None:
            return absolute(new) / inside
    if path.is_absolute():
        return path
    if config is None:
        config = read_run_config(run_dir) if (Path(run_dir) / "config.json").is_file() else {}
    start = started_in(run_dir, config.get("output_path"))
    candidates = [folder / path for folder in (start, absolute(run_dir)) if folder is not None]
    return next((c for c in candidates if c.exists()), candidates[0])


def _inside(path: Path, folder: Path) -> Path | None:
    """``path`` relative to ``folder`` when it lies inside it (as written, no file-system access), else None."""
    try:
        return path.relative_to(folder)
    except ValueError:
        return None


@dataclass(frozen=True)
class RunInputs:
    """The inputs a run trained from, located now: the base model folder and the two metadata CSVs.

    ``command`` is how the reader was called (``--continue RUN``, ``--restore RUN``): the
    one-line errors of :meth:`base_model` and :meth:`data` give it back with the option to add.
    """

    run_dir: Path
    config: Mapping[str, Any]
    command: str
    checks_given: bool = True  # --continue: a folder given for a moved input must hold the same files

    @classmethod
    def read(
        cls,
        run_dir: str | os.PathLike[str],
        command: str,
        config: Mapping[str, Any] | None = None,
        *,
        checks_given: bool = True,
    ) -> RunInputs:
        """The inputs of ``run_dir`` (``config``: its config.json as a dict, read when None)."""
        config = config if config is not None else read_run_config(run_dir)
        return cls(absolute(run_dir), config, command, checks_given)

    def _same_files(self, fingerprints_key: str) -> str:
        """What is checked of a folder given for a moved input (the run's sizes and digests, if it recorded them)."""
        checked = self.checks_given and self.toolkit.get(fingerprints_key)
        return " (the same files, checked by size and digest)" if checked else ""

    @property
    def toolkit(self) -> Mapping[str, Any]:
        return self.config.get("toolkit") or {}

    def recorded(self, key: str) -> Path | None:
        """The toolkit record's ``key`` (base_model, train_csv, eval_csv) located now, or None when not recorded."""
        value = self.toolkit.get(key)
        return locate_recorded(self.run_dir, value, self.config) if value else None

    def base_model(self, given: str | os.PathLike[str] | None = None) -> Path | None:
        """The base model folder: ``given`` (where it lies now; checked to hold the same files) or the recorded one.

        Raises:
            DataError: the recorded folder is gone and none was given, or ``given`` holds other files.
        """
        recorded = self.recorded("base_model")
        if given is not None:
            folder = absolute(given)
            recorded_files = self.toolkit.get("base_model_files") or {}
            self._check_same(
                {folder / n: fp for n, fp in recorded_files.items()}, f"--base-model {folder}", "base model"
            )
            return folder
        if recorded is not None and not recorded.is_dir():
            raise DataError(
                f"{self.command}: the base model this run trained from is gone "
                f"({self._shown('base_model', recorded)}); if it moved, say where: {self.command} --base-model "
                f"DIR{self._same_files('base_model_files')}"
            )
        return recorded

    def data(self, given: tuple[Path, Path] | None = None) -> tuple[Path, Path] | None:
        """The train and eval CSVs: ``given`` (checked to be the same files) or the recorded ones (None if none).

        Raises:
            DataError: a recorded CSV is gone and none was given, or ``given`` holds other rows.
        """
        if given is not None:
            train, evals = absolute(given[0]), absolute(given[1])
            recorded = self.toolkit.get("data_files") or {}
            files = {train: recorded.get("train_csv"), evals: recorded.get("eval_csv")}
            self._check_same(files, f"--dataset {train.parent}", "data")
            return train, evals
        train, evals = self.recorded("train_csv"), self.recorded("eval_csv")
        if train is None or evals is None:
            return None
        for key, path in (("train_csv", train), ("eval_csv", evals)):
            if not path.is_file():
                raise DataError(
                    f"{self.command}: the data this run trained on is gone ({self._shown(key, path)}); if it moved, "
                    f"say where: {self.command} --dataset DIR (or --train-csv FILE --eval-csv FILE)"
                    f"{self._same_files('data_files')}"
                )
        return train, evals

    def _shown(self, key: str, located: Path) -> str:
        """How a missing input is named: where it was looked for, or as recorded when that was relative."""
        value = str(self.toolkit.get(key))
        return str(located) if Path(value).is_absolute() else f"{value}, relative to the folder the run started in"

    def _check_same(self, files: Mapping[Path, Any], given: str, what: str) -> None:
        """Refuse ``given`` when a file differs from the fingerprint the run recorded for it."""
        if not self.checks_given:
            return
        if not files or not all(files.values()):  # a run of an earlier version: nothing to compare with
            logger.warning(
                "%s: the run recorded no sizes or digests of its %s; taking %s as the same files",
                self.command,
                what,
                given,
            )
            return
        differ = [p.name for p, want in files.items() if not p.is_file() or fingerprint(p) != want]
        if differ:
            raise DataError(
                f"{given}: {', '.join(differ)} missing or not the file this run trained from (size or digest differs "
                f"from its config.json); give the folder with the same files, or start a new run from its weights: "
                f"--restore {self.run_dir} {given}"
            )
