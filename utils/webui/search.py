"""The Train screen's "search first": a hyperparameter search as the web UI's one job, then the training.

With *search first* ticked, Start runs an Optuna study through :mod:`utils.search`'s API in
``RUNS/studies/NAME`` (the study ``scripts/search_hparams.py --out`` would make) in the job's
process (:mod:`utils.webui.worker`, under the same one-job lock), then trains with
``STUDY/best.json`` as the run's recipe layer, as ``gpt_train.py --recipe STUDY/best.json`` does:
the run's hyperparameter table shows each searched value with the source ``search STUDY trial K,
eval loss X``. Stop ends the study once the running trial has stopped (it is queued again);
*Continue the search* goes on with a stopped study, as ``--continue STUDY_DIR`` does, then trains.

The page reads the study back through the same API (each trial's state, reason, values, eval loss)
and shows the PNGs the study rewrites after every trial.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from utils.errors import ConfigError
from utils.webui.jobs import Job
from utils.webui.paths import word_name
from utils.webui.run_view import read_json

logger = logging.getLogger(__name__)

STUDIES_DIR = "studies"  # under the runs folder
TRAINING_FILE = "webui_training.json"  # the training that follows the study (a continued search needs it)
DEFAULT_TRIALS = 12  # the README's example; the command has no default
DEFAULT_BUDGET_EPOCHS = 3  # the command's --budget-epochs
PLOTS = (
    ("history.png", "optimisation history"),
    ("eval_curves.png", "eval loss of each trial"),
    ("lr_vs_eval_loss.png", "LR against the best eval loss"),
    ("importance.png", "parameter importance"),
)
# On the tiny base the demo recipe's run values hold for every trial (a training of it uses them
# too), and the LR is searched around the demo's LR: the table's row would not move a random model.
TINY_FIXED = ("batch_size", "grad_accum", "num_loader_workers", "save_every_steps", "keep_checkpoints")


def list_studies(runs_root: Path) -> list[str]:
    """Study folders (with search.json) under ``RUNS/studies``, newest first."""
    root = Path(runs_root) / STUDIES_DIR
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if (p / "search.json").is_file()]
    return [p.name for p in sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)]


def search_spec(
    config: Any, *, dataset: Path, base_model: Path, tiny: bool, study_dir: Path, trials: int, budget_epochs: int
) -> dict[str, Any]:
    """The job spec of a new study and the training after it (``config``: that training's RunConfig).

    The page's edits (the training's own values) are fixed for every trial; ``epochs`` is left to
    the budget and the study.

    Raises:
        ConfigError: a bad trial count or budget, or a value the search refuses (one line).
    """
    from utils.finetune import DEMO_RECIPE
    from utils.search import SearchRequest

    fix = {k: v for k, v in dict(config.hparams).items() if k != "epochs"}
    ranges: dict[str, tuple[float, float]] = {}
    if tiny:
        fix = {**{k: DEMO_RECIPE[k] for k in TINY_FIXED}, **fix}
        if "lr" not in fix:
            ranges["lr"] = (DEMO_RECIPE["lr"] / 10, DEMO_RECIPE["lr"] * 10)
    request = SearchRequest(  # checked now: a bad value is one message before anything starts
        out=study_dir,
        dataset=dataset,
        base_model=base_model,
        language=config.language,
        budget_epochs=int(budget_epochs),
        fix=fix,
        ranges=ranges,
    )
    if int(trials) < 1:
        raise ConfigError(f"number of trials must be 1 or more (got {trials})")
    return {
        "mode": "search",
        "config": config.to_dict(),
        "run_name": config.run_name,
        "output_path": str(config.output_path),
        "search": {
            "study_dir": str(study_dir),
            "trials": int(trials),
            "continue": False,
            "dataset": str(request.dataset),
            "base_model": str(request.base_model),
            "language": request.language,
            "budget_epochs": request.budget_epochs,
            "fix": {k: list(v) if isinstance(v, tuple) else v for k, v in fix.items()},
            "ranges": {k: list(v) for k, v in ranges.items()},
        },
    }


def study_folder(runs_root: Path, name: str) -> Path:
    """A new study's folder: ``RUNS/studies/NAME_YYYYmmdd_HHMMSS``."""
    return Path(runs_root) / STUDIES_DIR / f"{word_name(name, 'study')[:40]}_{time.strftime('%Y%m%d_%H%M%S')}"


def continue_spec(study_dir: Path, trials: int | None) -> dict[str, Any]:
    """The job spec that goes on with a stopped study, then trains as the study's start planned.

    Raises:
        ConfigError: the folder holds no study the web UI started.
    """
    training = read_json(study_dir / TRAINING_FILE)
    if not (study_dir / "search.json").is_file() or not training.get("config"):
        raise ConfigError(
            f"{study_dir.name}: not a study the web UI started (no {TRAINING_FILE}); continue it with "
            f"scripts/search_hparams.py --continue {study_dir}"
        )
    config = dict(training["config"])
    config["run_name"] = f"{training.get('name', 'xtts_ft')}_{time.strftime('%H%M%S')}"  # a new run folder
    return {
        "mode": "search",
        "config": config,
        "run_name": config["run_name"],
        "output_path": str(config.get("output_path") or ""),
        "search": {"study_dir": str(study_dir), "trials": int(trials) if trials else None, "continue": True},
    }


def run_search_spec(spec: dict[str, Any], update: Callable[..., None]) -> dict[str, Any]:
    """Run the job's study (in this process, the worker's), then return the training's RunConfig
    as a dict with ``STUDY/best.json`` as its recipe layer.

    Raises:
        KeyboardInterrupt: Stop (the running trial stopped and was queued again; the reports are written).
        ConfigError: no trial finished with a finite eval loss.
    """
    from utils.finetune.recipe_file import read_recipe_file
    from utils.fs import write_json_atomic
    from utils.search import RunOptions, SearchRequest, continue_search, start_search

    s = spec["search"]
    study_dir = Path(s["study_dir"])
    update(phase="search", study_dir=str(study_dir), study=study_dir.name)
    options = RunOptions(trials=s.get("trials"), progress=False, reports_each_trial=True)
    if s.get("continue"):
        outcome = continue_search(study_dir, options)
    else:
        request = SearchRequest(
            out=study_dir,
            dataset=Path(s["dataset"]),
            base_model=Path(s["base_model"]),
            language=s["language"],
            budget_epochs=int(s["budget_epochs"]),
            fix={k: tuple(v) if isinstance(v, list) else v for k, v in s["fix"].items()},
            ranges={k: (float(v[0]), float(v[1])) for k, v in s["ranges"].items()},
        )
        study_dir.mkdir(parents=True, exist_ok=True)
        name = str(spec["run_name"]).rsplit("_", 1)[0]
        write_json_atomic(study_dir / TRAINING_FILE, {"config": spec["config"], "name": name})
        outcome = start_search(request, options)
    if outcome.best_path is None:
        raise ConfigError(
            f"no trial finished with a finite eval loss ({outcome.counts.pruned} pruned or diverged, "
            f"{outcome.counts.failed} failed; reasons in the trials table): widen or lower the LR range"
        )
    best = read_recipe_file(outcome.best_path)
    config = dict(spec["config"])
    config["recipe_hparams"] = {**dict(config.get("recipe_hparams") or {}), **best.values}
    config["recipe_sources"] = {**dict(config.get("recipe_sources") or {}), **best.sources}
    update(phase="train", best=str(outcome.best_path), best_trial=outcome.best.number if outcome.best else None)
    return config


# --- reading a study back --------------------------------------------------------------------


def study_of(job: Job | None) -> Path | None:
    """The study folder of a search job (None for a training job)."""
    if job is None or job.spec.get("mode") != "search":
        return None
    return Path(job.spec["search"]["study_dir"])


def read_study(study_dir: Path) -> tuple[Any, list[Any]] | None:
    """(settings, trial rows) of the study in ``study_dir`` through :mod:`utils.search`; None while
    the study is still being planned. The journal is read while the search appends to it (Optuna's
    file storage skips a line being written)."""
    import optuna

    from utils.search import StudyFolder
    from utils.search import storage as st
    from utils.search.report import trial_rows

    folder = StudyFolder(study_dir)
    settings = folder.read_settings()
    if settings is None or not (study_dir / st.JOURNAL).is_file():
        return None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=settings.name, storage=st.open_storage(None, folder))
    except KeyError:  # search.json is written, the study not created yet
        return None
    return settings, trial_rows(study)


def trial_table(settings: Any, rows: list[Any]) -> tuple[list[str], list[list[Any]]]:
    """Headers and rows of the trials table: number, state, reason, searched values, eval loss, epochs run."""
    names = list(settings.space.params)
    per_epoch = settings.planned_steps / max(1, settings.budget_epochs)  # optimizer steps of one trial epoch
    headers = ["trial", "state", "reason", *names, "best eval loss", "epochs run"]
    out = []
    for r in sorted(rows, key=lambda r: r.number):
        epochs = f"{r.eval_steps[-1] / per_epoch:.2f}" if r.eval_steps and per_epoch else "-"
        values = [_num(r.values.get(n)) for n in names]
        out.append([r.number, r.state, r.reason, *values, _num(r.value), epochs])
    return headers, out


def study_lines(study_dir: Path, settings: Any, rows: list[Any], trials: int | None) -> list[str]:
    """A short summary: the study, its trial counts, the best trial so far and best.json."""
    count = {s: sum(1 for r in rows if r.state == s) for s in ("complete", "pruned", "failed", "running")}
    done = count["complete"] + count["pruned"] + count["failed"]
    finished = [r for r in rows if r.state == "complete" and r.value is not None and math.isfinite(r.value)]
    lines = [
        f"study {settings.name} ({study_dir}): {done} of {trials or '?'} trials done ({count['complete']} complete, "
        f"{count['pruned']} pruned, {count['failed']} failed), {count['running']} running; up to "
        f"{settings.budget_epochs} epoch(s) a trial; {settings.table_row}: LR {settings.row_lr:.3g}"
    ]
    if finished:
        best = min(finished, key=lambda r: r.value)
        lines.append(f"best so far: trial {best.number}, eval loss {best.value:.4f}, LR {_num(best.values.get('lr'))}")
    if (study_dir / "best.json").is_file():
        lines.append(f"recipe layer: {study_dir / 'best.json'} (the training after the study uses it)")
    return lines


def plot_files(study_dir: Path) -> list[tuple[str, str]]:
    """The study's PNGs that exist, with their captions."""
    return [(str(study_dir / name), caption) for name, caption in PLOTS if (study_dir / name).is_file()]


def _num(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
