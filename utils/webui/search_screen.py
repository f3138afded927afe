"""The Train screen's "search first" controls and the study panel (trials table and plots).

:class:`SearchScreens` holds the handlers: Start (a training, or with *search first* a study
then the training), *Continue the search*, and the study panel the screen's timer refreshes.
The study's work is in :mod:`utils.webui.search`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from utils.errors import ConfigError, ToolkitError
from utils.webui import search
from utils.webui.engine import TINY_BASE
from utils.webui.guard import guard, table_rows

logger = logging.getLogger(__name__)

SEARCH_HEADERS = ["trial", "state", "reason", "lr", "best eval loss", "epochs run"]


class SearchScreens:
    """Search handlers over the same engine as :class:`utils.webui.app.Screens`."""

    def __init__(self, screens: Any) -> None:  # utils.webui.app.Screens (which imports this module)
        self.screens = screens
        self.engine = screens.engine

    @guard
    def start(
        self,
        dataset: str,
        base: str,
        language: str,
        preset: str,
        name: str,
        table: Any,
        stages: list[str] | None = None,
        search_first: bool = False,
        trials: float | None = search.DEFAULT_TRIALS,
        budget_epochs: float | None = search.DEFAULT_BUDGET_EPOCHS,
    ) -> tuple[str, Any, Any]:
        """Start a training; with ``search_first``, a study of ``trials`` trials first, then the training."""
        if not search_first:
            message, shown = self.screens.start(dataset, base, language, preset, name, table, stages)
            return message, shown, gr.update()
        job = self.start_search(dataset, base, language, preset, name, table, stages, trials, budget_epochs)
        study = Path(job.spec["search"]["study_dir"])
        return (
            f"search started (job {job.job_id}, process {job.pid}): {int(trials or 0)} trials of up to "
            f"{int(budget_epochs or 0)} epoch(s) in {study}; the training follows with its best trial's values",
            gr.update(value=""),
            gr.update(choices=[""] + self.engine_studies(), value=""),
        )

    def start_search(
        self,
        dataset: str,
        base: str,
        language: str,
        preset: str,
        name: str,
        table: Any,
        stages: list[str] | None,
        trials: float | None,
        budget_epochs: float | None,
    ) -> Any:
        """The study's job: the training's config as a new run's, the page's edits fixed for every trial."""
        engine, base = self.engine, base or TINY_BASE
        overrides = (
            engine.edited_overrides(table_rows(table), dataset, base_model=base, preset=preset or None)
            if table is not None and table_rows(table)
            else {}
        )
        config = engine.run_config(
            dataset,
            base_model=base,
            language=language or "en",
            preset=preset or None,
            overrides=overrides,
            name=name or "xtts_ft",
            stages=stages or None,
        )
        base_dir = engine.base_path(base)
        spec = search.search_spec(
            config,
            dataset=engine.data_path(dataset),
            base_model=base_dir if base_dir is not None else engine.tiny_base(),
            tiny=base_dir is None,
            study_dir=search.study_folder(engine.runs_root, name or "xtts_ft"),
            trials=int(trials or 0),
            budget_epochs=int(budget_epochs or 0),
        )
        return engine.jobs.start(spec)

    def engine_studies(self) -> list[str]:
        return search.list_studies(self.engine.runs_root)

    @guard
    def continue_search(self, study: str | None, trials: float | None) -> tuple[str, Any]:
        """Go on with a stopped study (``trials``: a new total, 0 or empty: as it was started), then train."""
        folder = self._study_dir(study)
        if folder is None:
            raise ConfigError("no study to continue: choose one in 'study shown', or start with 'search first'")
        job = self.engine.jobs.start(search.continue_spec(folder, int(trials) if trials else None))
        return f"continuing the search {folder.name} (job {job.job_id}); the training follows", gr.update(value="")

    def studies(self) -> gr.Dropdown:
        return gr.Dropdown(choices=[""] + self.engine_studies())

    def refresh(self, study: str | None) -> tuple[str, pd.DataFrame, list[tuple[str, str]]]:
        """The study panel: the chosen study, else the newest job's study (the timer calls this)."""
        try:
            folder = self._study_dir(study)
        except ToolkitError as exc:
            return str(exc), pd.DataFrame(columns=SEARCH_HEADERS), []
        if folder is None:
            return "no search yet: tick 'search first' and start", pd.DataFrame(columns=SEARCH_HEADERS), []
        job = self.engine.current_job()
        lines = _job_line(job, folder)
        try:
            read = search.read_study(folder)
        except (OSError, ValueError, ToolkitError) as exc:  # the timer asks again in a moment
            return f"study {folder.name}: not readable right now ({exc})", pd.DataFrame(columns=SEARCH_HEADERS), []
        if read is None:
            lines.append(f"study {folder.name}: planning (measuring the data, choosing the ranges)")
            return "\n".join(lines), pd.DataFrame(columns=SEARCH_HEADERS), []
        settings, rows = read
        headers, table = search.trial_table(settings, rows)
        trials = _trial_count(job, folder)
        lines = search.study_lines(folder, settings, rows, trials) + lines
        return "\n".join(lines), pd.DataFrame(table, columns=headers), search.plot_files(folder)

    def _study_dir(self, study: str | None) -> Path | None:
        if study:
            return self.engine.run_path(Path(self.engine.runs_root) / search.STUDIES_DIR / study, what="study")
        return next((search.study_of(j) for j in self.engine.jobs.jobs() if search.study_of(j) is not None), None)


def _job_line(job: Any, folder: Path) -> list[str]:
    """What the job of this study is doing (searching, training after it, stopped ...)."""
    if job is None or search.study_of(job) != folder:
        return []
    phase = job.status.get("phase") or "search"
    state = job.state
    if phase == "train" and job.status.get("best"):
        return [f"search done; training with {job.status['best']}: {state}"]
    if state in ("stopped", "interrupted", "killed"):
        return [f"search {state}: finished trials are kept; 'Continue the search' goes on with it"]
    return [f"search: {state}"]


def _trial_count(job: Any, folder: Path) -> int | None:
    if job is not None and search.study_of(job) == folder and job.spec["search"].get("trials"):
        return int(job.spec["search"]["trials"])
    return None


def search_choice() -> dict[str, Any]:
    """The "search first" checkbox with the number of trials and the epochs of each."""
    with gr.Row():
        first = gr.Checkbox(
            label="search first: measure the LR (and more) on this data with short trials, then train with the best",
            value=False,
            scale=3,
            elem_id="train-search-first",
        )
        trials = gr.Number(
            label="trials", value=search.DEFAULT_TRIALS, precision=0, minimum=1, scale=1, elem_id="train-search-trials"
        )
        budget = gr.Number(
            label="epochs per trial (at most)",
            value=search.DEFAULT_BUDGET_EPOCHS,
            precision=0,
            minimum=1,
            scale=1,
            elem_id="train-search-budget",
        )
    return {"first": first, "trials": trials, "budget": budget}


def search_panel() -> dict[str, Any]:
    """The study panel: the study shown, continue, its status, trials table and plots."""
    with gr.Accordion("hyperparameter search (search first)", open=True, elem_id="search-panel"):
        with gr.Row():
            study = gr.Dropdown(
                label="study shown (empty: the newest job's)",
                choices=[""],
                value="",
                allow_custom_value=True,
                scale=3,
                elem_id="search-study",
            )
            cont = gr.Button("Continue the search", scale=1, elem_id="search-continue")
        status = gr.Textbox(
            label="search status", lines=3, interactive=False, elem_id="search-status", elem_classes="wui-status"
        )
        table = gr.Dataframe(
            headers=SEARCH_HEADERS, label="trials", interactive=False, wrap=True, elem_id="search-trials"
        )
        plots = gr.Gallery(label="study plots", columns=2, height="auto", object_fit="contain", elem_id="search-plots")
    return {"study": study, "continue": cont, "status": status, "table": table, "plots": plots}


def wire(ss: SearchScreens, train: dict[str, Any], choice: dict[str, Any], panel: dict[str, Any], timer: Any) -> None:
    """Start (with or without the search), continue the search, and the panel's refresh."""
    inputs = [train[k] for k in ("dataset", "base", "language", "preset", "name", "hparams", "stages")]
    train["start"].click(
        ss.start,
        inputs=[*inputs, choice["first"], choice["trials"], choice["budget"]],
        outputs=[train["message"], train["shown"], panel["study"]],
        api_name="start_training",
    )
    panel["continue"].click(
        ss.continue_search,
        inputs=[panel["study"], choice["trials"]],
        outputs=[train["message"], panel["study"]],
        api_name="continue_search",
    )
    outs = [panel["status"], panel["table"], panel["plots"]]
    panel["study"].change(
        ss.refresh, inputs=panel["study"], outputs=outs, show_progress="hidden", api_name="show_study"
    )
    timer.tick(ss.refresh, inputs=panel["study"], outputs=outs, show_progress="hidden", api_name="search_status")
