"""What defines a study: the data (and its identity), the base model, the space, the budget.

:func:`plan_search` resolves a request once (the table's row for the dataset's measured hours,
the optimizer steps one trial plans, the space around the row) into :class:`SearchSettings`,
which the study folder keeps as ``search.json`` beside ``dataset.json`` (the CSVs' and the base
model's digests). A later ``--continue``, another worker or another machine reads the settings
from there, so every trial of a study runs the same way.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import random
import secrets
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from utils.errors import ConfigError, DataError
from utils.finetune import FineTune, RunConfig
from utils.fs import replace_atomically, write_json_atomic
from utils.search.space import SEARCHABLE, Param, SearchSpace, check_names

logger = logging.getLogger(__name__)

PRUNERS = ("halving", "hyperband", "none")
TRIALS_DIR = "trials"  # the trials' run folders, and the clip and compile caches they share
DATA_DIR = "data"  # the training subset's metadata (--subset)


@dataclass(frozen=True)
class SearchRequest:
    """What the user asked for (the command line's options, or a notebook's values)."""

    out: Path
    dataset: Path | None = None
    base_model: Path | None = None
    language: str = "en"
    budget_epochs: int = 3
    subset: float = 1.0
    fix: Mapping[str, Any] = field(default_factory=dict)
    ranges: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    pruner: str = "halving"
    seed: int = 0
    name: str | None = None  # the study's name (default: the folder's name)

    def __post_init__(self) -> None:
        if int(self.budget_epochs) != self.budget_epochs or self.budget_epochs < 1:
            raise ConfigError(f"--budget-epochs must be a whole number >= 1 (got {self.budget_epochs})")
        if not 0 < float(self.subset) <= 1:
            raise ConfigError(f"--subset must be a share of the training rows in (0, 1] (got {self.subset})")
        if self.pruner not in PRUNERS:
            raise ConfigError(f"--pruner {self.pruner!r}: choose one of {', '.join(PRUNERS)}")
        check_names(self.fix, self.ranges)  # before anything slow
        for name, (low, high) in self.ranges.items():
            integer, log = SEARCHABLE[name]
            Param(name, float(low), float(high), integer=integer, log=log)


@dataclass(frozen=True)
class SearchSettings:
    """A study's definition, as kept in ``search.json``."""

    name: str
    train_csv: str
    eval_csv: str
    trial_train_csv: str  # the training rows trials use (a seeded share of train_csv with --subset)
    base_model: str
    language: str
    dataset_hours: float
    table_row: str
    row_lr: float
    row_weight_decay: float
    budget_epochs: int
    subset: float
    planned_steps: int  # optimizer steps one trial plans over its budget
    pruner: str
    seed: int
    space: SearchSpace
    identity: Mapping[str, str]

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["space"] = self.space.to_dict()
        out["identity"] = dict(self.identity)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SearchSettings:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["space"] = SearchSpace.from_dict(data["space"])
        return cls(**values)

    def definition(self) -> dict[str, Any]:
        """What must match for two invocations to be the same study (paths may differ by machine)."""
        out = self.to_dict()
        for key in ("train_csv", "eval_csv", "trial_train_csv", "base_model"):
            out.pop(key)
        return out

    def run_config(self, trial_values: Mapping[str, Any], *, output_path: Path, run_name: str) -> RunConfig:
        """The run configuration of one trial: quiet, no export, the search's values as the caller's."""
        return RunConfig.build(
            train_csv=Path(self.trial_train_csv),
            eval_csv=Path(self.eval_csv),
            base_model=Path(self.base_model),
            language=self.language,
            dataset_hours=self.dataset_hours,
            output_path=output_path,
            run_name=run_name,
            progress=False,  # the search shows one bar over trials
            plots=False,
            export=False,
            test_sentences=0,
            quality_eval=False,
            epochs=self.budget_epochs,
            **dict(trial_values),
        )


def plan_search(request: SearchRequest) -> SearchSettings:
    """Resolve a request: the table's row for the measured hours, the trial's plan, the space.

    Raises:
        ConfigError / DataError / BaseModelError: missing data or base model, a bad fixed value.
    """
    if request.dataset is None or request.base_model is None:
        raise ConfigError("a new search needs --dataset DIR and --base-model DIR (or --continue STUDY_DIR)")
    full = FineTune(
        RunConfig.build(dataset=request.dataset, base_model=request.base_model, language=request.language)
    ).describe()
    if full.get("dataset_hours") is None:
        raise ConfigError(f"--dataset {request.dataset}: no readable training audio to measure its hours")
    train_csv, eval_csv = Path(full["train_csv"]).resolve(), Path(full["eval_csv"]).resolve()
    out = request.out.resolve()
    identity = dataset_identity(train_csv, eval_csv, request.language, Path(full["base_model"]))
    StudyFolder(out).check_identity(identity)  # before anything is written there
    trial_train = _subset_csv(train_csv, request.subset, request.seed, out / DATA_DIR)
    probe = RunConfig.build(
        train_csv=trial_train,
        eval_csv=eval_csv,
        base_model=request.base_model,
        language=request.language,
        dataset_hours=full["dataset_hours"],
        epochs=request.budget_epochs,
        **dict(request.fix),
    )
    trial = FineTune(probe).describe()  # also refuses a bad --fix value (one line) before any trial
    if trial["schedule_errors"]:
        raise ConfigError("; ".join(trial["schedule_errors"]))
    space = SearchSpace.around(
        float(full["lr"]), int(trial["planned_optimizer_steps"]), fix=request.fix, ranges=request.ranges
    )
    return SearchSettings(
        name=request.name or out.name,
        train_csv=str(train_csv),
        eval_csv=str(eval_csv),
        trial_train_csv=str(trial_train),
        base_model=str(Path(full["base_model"]).resolve()),
        language=request.language,
        dataset_hours=float(full["dataset_hours"]),
        table_row=str(full["table_row"]),
        row_lr=float(full["lr"]),
        row_weight_decay=float(full["weight_decay"]),
        budget_epochs=int(request.budget_epochs),
        subset=float(request.subset),
        planned_steps=int(trial["planned_optimizer_steps"]),
        pruner=request.pruner,
        seed=int(request.seed),
        space=space,
        identity=identity,
    )


def dataset_identity(train_csv: Path, eval_csv: Path, language: str, base_model: Path) -> dict[str, str]:
    """Digests that say which data and base model a study belongs to (content, not paths)."""
    return {
        "metadata_train.csv": _digest(train_csv),
        "metadata_eval.csv": _digest(eval_csv),
        "language": language,
        "base model vocab.json": _digest(base_model / "vocab.json"),
        "base model config.json": _digest(base_model / "config.json"),
    }


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def _subset_csv(train_csv: Path, share: float, seed: int, folder: Path) -> Path:
    """``train_csv`` itself, or a seeded share of its rows as ``folder/metadata_train.csv``.

    The preflight keeps every clip inside its CSV's folder, so the chosen clips are linked into
    ``folder`` at their own relative paths (hard links: no copy; copied where the file system
    cannot link). The clip cache is keyed by file content, so it serves the subset and the full set.
    """
    if share >= 1.0:
        return train_csv
    from utils.data.csv_io import read_coqui_csv

    root = train_csv.parent.resolve()
    rows = [r for r in read_coqui_csv(train_csv) if r.path.is_file() and r.path.is_relative_to(root)]
    keep = max(2, round(len(rows) * share))
    chosen = [rows[i] for i in sorted(random.Random(seed).sample(range(len(rows)), min(keep, len(rows))))]
    copied = 0
    for row in chosen:
        rel = row.path.relative_to(root)
        dest = folder / rel
        if not dest.is_file():
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(row.path, dest)
            except OSError:  # another file system, or one without hard links
                shutil.copy2(row.path, dest)
                copied += 1
        row.audio_file = rel.as_posix()
    path = folder / "metadata_train.csv"
    text = "audio_file|text|speaker_name\n" + "".join(f"{r.audio_file}|{r.text}|{r.speaker_name}\n" for r in chosen)
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        replace_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    logger.info(
        "trials train on %d of the %d training rows (--subset %g; %d clips copied, the others linked): %s",
        len(chosen),
        len(rows),
        share,
        copied,
        path,
    )
    return path


class StudyFolder:
    """A study's folder: ``search.json`` (the settings), ``dataset.json`` (whose data it is), the
    trials' run folders under ``trials/``, and (without ``--storage``) the study's journal."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.settings_path = self.root / "search.json"
        self.dataset_path = self.root / "dataset.json"
        self.trials_dir = self.root / TRIALS_DIR

    def read_settings(self) -> SearchSettings | None:
        """The settings kept in the folder, or None for a folder that holds no study yet."""
        if not self.settings_path.is_file():
            return None
        try:
            return SearchSettings.from_dict(json.loads(self.settings_path.read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(
                f"{self.settings_path}: not a study's settings ({exc}); choose another folder for the study"
            ) from None

    def check_identity(self, identity: Mapping[str, str]) -> None:
        """Refuse a folder whose study belongs to other data or another base model.

        Raises:
            DataError: naming what differs; nothing in the folder was changed.
        """
        if not self.dataset_path.is_file():
            return
        try:
            kept = json.loads(self.dataset_path.read_text(encoding="utf-8")).get("identity", {})
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{self.dataset_path}: unreadable ({exc}); choose another folder for the study") from None
        differ = [key for key in identity if kept.get(key) != identity[key]]
        if differ:
            raise DataError(
                f"{self.root} holds a study of another dataset ({', '.join(differ)} differ); choose a new --out "
                "folder, or give the data this study was made for (nothing in the folder was changed)"
            )

    def claim(self, settings: SearchSettings) -> SearchSettings:
        """Write the settings into a new folder, or join the same study already there.

        Raises:
            ConfigError: the folder holds a study with other settings.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        if self.read_settings() is None:
            write_json_atomic(
                self.dataset_path,
                {"identity": dict(settings.identity), "train_csv": settings.train_csv, "eval_csv": settings.eval_csv},
            )
            _create_once(self.settings_path, settings.to_dict())  # two workers starting at once: one writes
        kept = self.read_settings()
        assert kept is not None
        if _plain(kept.definition()) != _plain(settings.definition()):
            differ = sorted(
                k for k, v in _plain(settings.definition()).items() if _plain(kept.definition()).get(k) != v
            )
            raise ConfigError(
                f"{self.root} holds a study with other settings ({', '.join(differ)}); go on with it: "
                f"--continue {self.root}, or choose a new --out folder"
            )
        return kept


def _plain(data: Any) -> Any:
    return json.loads(json.dumps(data, default=str))


def _create_once(path: Path, data: Any) -> None:
    """Write ``path`` unless it exists; of several processes creating it at once, one wins."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")  # unique across machines
    tmp.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
    try:
        os.link(tmp, path)  # fails if another process made it first
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
