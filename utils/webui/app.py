"""The four screens (Data, Train, Listen, Evaluate / export) as a Gradio 6 app.

:class:`Screens` holds one handler per user action; each calls :class:`utils.webui.engine.Engine`
and returns what the components show, so tests drive the handlers without a browser. Every
handler goes through :func:`utils.webui.guard.guard`: a problem the user can fix shows as one
message in the page (``gr.Error``), never as a traceback. :func:`build_app` lays the screens out;
the Train screen's "search first" part is :mod:`utils.webui.search_screen`.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from utils.errors import ToolkitError
from utils.webui.datasets import DataSummary
from utils.webui.engine import TINY_BASE, Engine
from utils.webui.guard import guard
from utils.webui.guard import table_rows as _rows
from utils.webui.jobs import ACTIVE_STATES, Job

logger = logging.getLogger(__name__)

TITLE = "XTTS v2 fine-tuning"
EXCLUDED_HEADERS = ["split", "row", "audio_file", "reason", "detail"]
FLAGGED_HEADERS = ["#", "split", "row", "audio_file", "reason", "text"]
HPARAM_HEADERS = ["hyperparameter", "value", "source"]
EVAL_HEADERS = ["step", "optimizer step", "train loss", "eval loss", "LR", "samples/s"]
EVENT_HEADERS = ["step", "event", "message", "recommendation", "action"]
REPORT_HEADERS = [
    "checkpoint",
    "step",
    "CER",
    "WER",
    "similarity (GE2E)",
    "similarity (XTTS)",
    "DNSMOS",
    "trailing s",
    "after last word s",
    "flagged",
    "score",
]
PRESETS = ["", "stable", "fast", "plateau-breaker"]
CSS = """
.wui-status textarea {font-family: monospace}
#listen-tests {overflow-x: auto}
.wui-tests audio {width: 210px}
.wui-tests td, .wui-tests th {padding: 4px 8px; vertical-align: middle}
"""


def _fmt(value: Any, spec: str = ".4g") -> str:
    if value is None:
        return "-"
    try:
        return format(float(value), spec)
    except (TypeError, ValueError):
        return str(value)


def _hms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class Screens:
    """Handlers of the four screens over one :class:`Engine`."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # --- Data ------------------------------------------------------------------------------

    def dataset_choices(self) -> Any:
        """The datasets; the newest training's one selected (what a reopened page was working on)."""
        choices = self.engine.datasets()
        job = self.engine.current_job()
        current = None
        if job is not None and job.spec.get("config", {}).get("dataset"):
            folder = Path(job.spec["config"]["dataset"])
            if folder.is_relative_to(self.engine.data_root):
                current = str(folder.relative_to(self.engine.data_root))
        if current in choices:
            return gr.update(choices=choices, value=current)
        return gr.update(choices=choices)  # the value stays: a click may have set it before this load answered

    @guard
    def use_demo(self, language: str) -> tuple[gr.Dropdown, str]:
        folder = self.engine.copy_demo(language or "en")
        rel = str(folder.relative_to(self.engine.data_root))
        return gr.Dropdown(choices=self.engine.datasets(), value=rel), f"bundled demo copied to {folder}"

    @guard
    def upload(self, files: Sequence[Any] | None, name: str) -> tuple[gr.Dropdown, str, Any]:
        """Save the uploaded files (moved out of Gradio's upload folder: stored once) and clear the picker."""
        from gradio.utils import get_upload_folder

        done = self.engine.save_uploads(list(files or []), name or "recordings", temp_root=Path(get_upload_folder()))
        rel = str(done.folder.relative_to(self.engine.data_root))
        choices = sorted(set(self.engine.datasets()) | {rel})
        return gr.Dropdown(choices=choices, value=rel), f"{done.message()}; now prepare it", gr.update(value=None)

    @guard
    def prepare(self, dataset: str, language: str, progress: gr.Progress = gr.Progress(track_tqdm=True)) -> tuple:
        progress(0.0, desc="preparing")
        summary = self.engine.prepare(dataset, language=language or "en")
        return self._data_outputs(summary)

    def _data_outputs(self, summary: DataSummary) -> tuple:
        excluded = [[e["split"], e["row"], e["audio_file"], e["reason"], e["detail"]] for e in summary.excluded]
        flagged = [
            [i, f["split"], f["row"], f["audio_file"], f["reason"], f.get("text", "")]
            for i, f in enumerate(summary.flagged)
        ]
        note = (
            f"\n\nNot checked here: {'; '.join(summary.checks_skipped)} (checked at the start of training)."
            if summary.checks_skipped
            else ""
        )
        rel = str(summary.dataset.relative_to(self.engine.data_root))
        return (
            f"**{summary.headline()}**{note}",
            pd.DataFrame(excluded, columns=EXCLUDED_HEADERS),
            pd.DataFrame(flagged, columns=FLAGGED_HEADERS),
            summary.flagged,
            gr.Dropdown(
                choices=[(f"{i}: {f['audio_file']} ({f['reason']})", i) for i, f in enumerate(summary.flagged)],
                value=0 if summary.flagged else None,
            ),
            gr.Dropdown(choices=self.engine.datasets(), value=rel),
        )

    def pick_flagged(self, flagged: list[dict[str, Any]], index: int | None) -> tuple[str | None, str, str]:
        if not flagged or index is None or int(index) >= len(flagged):
            return None, "", "nothing to review"
        item = flagged[int(index)]
        return (
            item["path"] if Path(item["path"]).is_file() else None,
            item.get("text", ""),
            f"{item['reason']}: {item['detail']}",
        )

    @guard
    def review(
        self,
        dataset: str,
        language: str,
        flagged: list[dict[str, Any]],
        index: int | None,
        action: str,
        text: str,
        progress: gr.Progress = gr.Progress(track_tqdm=True),
    ) -> tuple:
        if not flagged or index is None:
            raise gr.Error("no clip selected; prepare the dataset and pick a flagged clip first", print_exception=False)
        item = flagged[int(index)]
        counts = self.engine.apply_review(
            dataset, [{"split": item["split"], "row": item["row"], "action": action, "text": text}]
        )
        summary = self.engine.preflight(dataset, language=language or "en")
        done = ", ".join(f"{k} {v}" for k, v in counts.items() if v)
        return (f"review written ({done}); the CSV before it is kept beside it",) + self._data_outputs(summary)

    # --- Train -----------------------------------------------------------------------------

    @guard
    def download_base(self, progress: gr.Progress = gr.Progress(track_tqdm=True)) -> tuple[gr.Dropdown, str]:
        folder = self.engine.download_base()
        return gr.Dropdown(choices=self.engine.base_models(), value=str(folder)), f"XTTS v2 downloaded to {folder}"

    @guard
    def resolve(self, dataset: str, base: str, preset: str) -> pd.DataFrame:
        rows = self.engine.resolve_hparams(dataset, base_model=base or TINY_BASE, preset=preset or None)
        return pd.DataFrame(rows, columns=HPARAM_HEADERS)

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
    ) -> tuple[str, Any]:
        overrides = (
            self.engine.edited_overrides(_rows(table), dataset, base_model=base or TINY_BASE, preset=preset or None)
            if table is not None
            else {}
        )
        job = self.engine.start_training(
            dataset=dataset,
            base_model=base,
            language=language or "en",
            overrides=overrides,
            preset=preset or None,
            name=name or "xtts_ft",
            stages=stages or None,
        )
        edits = ", ".join(f"{k}={v}" for k, v in overrides.items()) or "none"
        return f"training started (job {job.job_id}, process {job.pid}); your edits: {edits}", gr.update(value="")

    @guard
    def stop(self) -> str:
        """Stop; pressed again once the stop is overdue, a hard stop."""
        before = self.engine.current_job()
        job = self.engine.stop_training()
        return _stop_message(job, before is not None and before.state == "stopping", self.engine.jobs.stop_grace_s)

    @guard
    def continue_run(self, run: str, epochs: float | None) -> tuple[str, Any]:
        job = self.engine.continue_training(run, int(epochs) if epochs else None)
        return f"continuing {run} (job {job.job_id})", gr.update(value="")

    @guard
    def restore_run(
        self,
        checkpoint: str,
        preset: str,
        name: str,
        dataset: str | None = None,
        base: str | None = None,
        table: Any = None,
    ) -> tuple[str, Any]:
        """A new run from ``checkpoint``; the table's edits (against the chosen dataset) are its new values."""
        overrides = {}
        if dataset and table is not None and _rows(table):
            overrides = self.engine.edited_overrides(
                _rows(table), dataset, base_model=base or TINY_BASE, preset=preset or None
            )
        job = self.engine.restore_training(
            checkpoint, overrides=overrides, preset=preset or None, name=name or "restored"
        )
        return f"new run from {Path(checkpoint).name} (job {job.job_id})", gr.update(value="")

    def train_lists(self) -> tuple[gr.Dropdown, gr.Dropdown, gr.Dropdown, gr.Dropdown]:
        runs = self.engine.runs()
        ckpts = [str(c) for r in runs[:10] for c in self.engine.run_view(r).checkpoints]
        return (
            gr.Dropdown(choices=self.engine.base_models()),
            gr.Dropdown(choices=self.engine.datasets()),
            gr.Dropdown(choices=[""] + runs),
            gr.Dropdown(choices=ckpts),
        )

    def refresh_train(self, shown: str | None) -> tuple:
        """The live view: the run chosen, else the newest job's run (re-attach after reload/restart)."""
        job = self.engine.current_job()
        try:  # the timer calls this every few seconds: a bad choice shows in the status, not as a toast each time
            run_dir = self.engine.run_path(shown) if shown else (job.run_dir if job is not None else None)
        except ToolkitError as exc:
            return (
                str(exc),
                _empty_curves(),
                _empty_curves(),
                pd.DataFrame(columns=EVAL_HEADERS),
                pd.DataFrame(columns=EVENT_HEADERS),
                pd.DataFrame(columns=HPARAM_HEADERS),
            )
        if job is not None and shown and (job.run_dir is None or job.run_dir.name != shown):
            job = None  # another run is shown: its own folder tells its story
        lines = self._job_lines(job)
        steps = self.engine.step_progress(job) if job is not None else []
        if steps and job is not None and job.state in ("running", "stopping"):
            p = steps[-1]
            stage = f"{p['stage']} stage: " if p.get("stage") not in (None, "gpt") else ""
            lines.append(stage + step_line(p))
        if run_dir is None or not run_dir.is_dir():
            lines.append("no run yet: prepare a dataset, then start a training")
            return (
                "\n".join(lines),
                _loss_curves([], steps),
                _empty_curves(),
                pd.DataFrame(columns=EVAL_HEADERS),
                pd.DataFrame(columns=EVENT_HEADERS),
                pd.DataFrame(columns=HPARAM_HEADERS),
            )
        view = self.engine.run_view(run_dir)
        lines += _run_lines(view)
        evals = [
            [
                m.get("step"),
                m.get("optimizer_step"),
                _fmt(m.get("train_loss")),
                _fmt(m.get("eval_loss")),
                _fmt(m.get("lr"), ".3g"),
                _fmt(m.get("train_samples_per_s"), ".3g"),
            ]
            for m in view.metrics
        ]
        events = [
            [e.get("step"), e.get("event"), e.get("message"), e.get("recommendation"), e.get("action")]
            for e in view.events
        ]
        return (
            "\n".join(lines),
            _loss_curves(view.metrics, steps),
            _lr_curve(view.metrics),
            pd.DataFrame(evals, columns=EVAL_HEADERS),
            pd.DataFrame(events, columns=EVENT_HEADERS),
            pd.DataFrame(view.hparams(), columns=HPARAM_HEADERS),
        )

    def _job_lines(self, job: Job | None) -> list[str]:
        if job is None:
            return []
        lines = [f"training: {job.state}" + (f" (process {job.pid})" if job.state in ACTIVE_STATES else "")]
        if job.state == "exiting":
            lines[0] += f": {job.status.get('final_state')}, the process is ending"
        if job.state in ACTIVE_STATES and job.status.get("stage") and job.status.get("stage") != "train":
            lines.append(f"step of the recipe: {job.status['stage']}")
        if job.status.get("phase") == "search" and job.state in ACTIVE_STATES:
            lines.append(f"searching first: study {job.status.get('study')} (trials below); the training follows")
        lines += _stop_lines(job, self.engine.jobs.stop_overdue(job))
        if job.status.get("error"):
            lines.append(f"error: {job.status['error']}")
        return lines

    # --- Listen ----------------------------------------------------------------------------

    def listen_runs(self) -> gr.Dropdown:
        runs = self.engine.runs()
        return gr.Dropdown(choices=runs, value=runs[0] if runs else None)

    @guard
    def pick_run(self, run: str | None) -> tuple[gr.Dropdown, gr.Dropdown, str, str, str]:
        if not run:
            return gr.Dropdown(choices=[]), gr.Dropdown(choices=[]), "", "", "pick a run"
        sources = self.engine.model_sources(run)
        clips, auto, why = self.engine.references(run)
        language = str(self.engine.run_view(run).toolkit.get("language") or "en")
        return (
            gr.Dropdown(choices=[(_source_label(x), x) for x in sources], value=sources[0] if sources else None),
            gr.Dropdown(choices=[(Path(c).name, c) for c in clips], value=auto),
            language,
            self.test_sentences_html(run),
            f"automatic reference: {Path(auto).name if auto else 'none'} ({why})",
        )

    @guard
    def speak(
        self,
        source: str,
        text: str,
        language: str,
        reference: str,
        temperature: float,
        top_p: float,
        speed: float,
        seed: float | None,
        max_new_tokens: float | None,
    ) -> str:
        path = self.engine.speak(
            source,
            text,
            language=language or None,
            reference=reference or None,
            temperature=temperature,
            top_p=top_p,
            speed=speed,
            seed=int(seed) if seed is not None else None,
            max_new_tokens=int(max_new_tokens) if max_new_tokens else None,
        )
        return str(path)

    def test_sentences_html(self, run: str | None) -> str:
        """The test sentences of every evaluation side by side: a row per sentence, a column per step."""
        if not run:
            return ""
        evals = self.engine.test_sentences(run)
        if not evals:
            return "<p>no test sentences yet (they are spoken at each evaluation)</p>"
        texts = evals[-1]["texts"]
        head = "".join(f"<th>step {e['step']}</th>" for e in evals)
        body = []
        for i, text in enumerate(texts):
            cells = []
            for e in evals:
                wav = e["wavs"][i] if i < len(e["wavs"]) else None
                cells.append(
                    '<td><audio class="wui-test" controls preload="metadata" '
                    f'src="/gradio_api/file={html.escape(str(wav))}"></audio></td>'
                    if wav
                    else "<td>-</td>"
                )
            body.append(f"<tr><td>{html.escape(text)}</td>{''.join(cells)}</tr>")
        return f'<table class="wui-tests"><tr><th>sentence</th>{head}</tr>{"".join(body)}</table>'

    # --- Evaluate / export -----------------------------------------------------------------

    @guard
    def eval_pick(self, run: str | None) -> tuple[gr.CheckboxGroup, gr.Dropdown, pd.DataFrame, pd.DataFrame, str]:
        if not run:
            return (
                gr.CheckboxGroup(choices=[]),
                gr.Dropdown(choices=[]),
                pd.DataFrame(columns=REPORT_HEADERS),
                _empty_curves(),
                "",
            )
        ckpts = [str(c) for c in self.engine.run_view(run).checkpoints]
        per_step = self.engine.checkpoints_by_step(run)
        table, plot, best = self._report_outputs(self.engine.eval_report(run))
        return (
            gr.CheckboxGroup(choices=[(Path(c).name, c) for c in ckpts], value=per_step),
            gr.Dropdown(choices=[(Path(c).name, c) for c in ckpts], value=ckpts[-1] if ckpts else None),
            table,
            plot,
            best,
        )

    @guard
    def evaluate(self, run: str, checkpoints: list[str], progress: gr.Progress = gr.Progress(track_tqdm=True)) -> tuple:
        if not checkpoints:
            raise gr.Error("choose at least one checkpoint to evaluate", print_exception=False)
        report = self.engine.evaluate(run, checkpoints)
        return self._report_outputs(report)

    def _report_outputs(self, report: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame, str]:
        rows, points = [], []
        for c in report.get("checkpoints", []):
            s = c["summary"]
            rows.append(
                [
                    c["name"],
                    c["step"],
                    _fmt(s.get("cer")),
                    _fmt(s.get("wer")),
                    _fmt(s.get("similarity_ge2e")),
                    _fmt(s.get("similarity_xtts")),
                    _fmt(s.get("dnsmos_ovrl")),
                    _fmt(s.get("trailing_s")),
                    _fmt(s.get("after_last_word_s")),
                    f"{s.get('flagged', 0)}/{s.get('n', 0)}",
                    _fmt(c["score"]),
                ]
            )
            for key in ("cer", "similarity_ge2e", "dnsmos_ovrl"):
                if s.get(key) is not None:
                    points.append({"step": c["step"] or 0, "value": s[key], "series": key})
            points.append({"step": c["step"] or 0, "value": c["score"], "series": "score (lower is better)"})
        best = report.get("best")
        text = (
            f"best: {best['name']} (score {best['score']:.3f}); rule: {report.get('select_rule', '')}"
            if best
            else "no evaluation yet"
        )
        if report.get("asr") and not str(report["asr"]).startswith("faster-whisper"):
            text += f"\n\nCER/WER skipped: {report['asr']}"
        plot = pd.DataFrame(points) if points else _empty_curves()
        return pd.DataFrame(rows, columns=REPORT_HEADERS), plot, text

    @guard
    def select_best(self, run: str) -> str:
        return f"best checkpoint copied to {self.engine.select_best(run)}"

    @guard
    def export(self, run: str, checkpoint: str | None, progress: gr.Progress = gr.Progress(track_tqdm=True)) -> str:
        out = self.engine.export(run, checkpoint or None)
        name = Path(out["checkpoint"]).name
        return f"exported {name} to `{out['folder']}` ({out['size']})\n\nUse it:\n\n```\n{out['command']}\n```"


def _stop_message(job: Job, asked_before: bool, grace_s: float) -> str:
    """What the page says after Stop: asked, asked again (nothing harsher yet), or a hard stop."""
    if job.stop_request.get("hard"):
        return (
            f"hard stop (job {job.job_id}): the training process is ended now; "
            "continue the run from its last checkpoint"
        )
    if asked_before:
        return (
            f"stop already requested {job.stop_waited_s() or 0.0:.0f} s ago (job {job.job_id}); if the training has "
            f"not stopped {grace_s:.0f} s after it, Stop again ends it at once"
        )
    return f"stop requested (job {job.job_id}): a checkpoint is written, then the process ends"


def _stop_lines(job: Job, overdue: bool) -> list[str]:
    """The status lines of a stop under way; once overdue, that it did not stop and what Stop does next."""
    waited = job.stop_waited_s()
    if waited is None:
        return []
    if not overdue:
        return [f"stop requested {waited:.0f} s ago: a checkpoint is being written, then the process ends"]
    last = job.last_checkpoint_name()
    return [
        f"not stopped {waited:.0f} s after Stop: the training process does not answer. Press Stop again for a hard "
        "stop: it ends the process now, and the run can be continued from "
        + (f"its last checkpoint ({last})" if last else "its last checkpoint (none written yet)")
    ]


def step_line(p: dict[str, Any]) -> str:
    """One trainer step as one count: steps done in the run of steps planned, with the epoch.

    ``step`` in a progress record counts inside the epoch; the run's own count is ``total_steps``
    (after this step), and what is left comes from the same record (as its ETA does).
    """
    done = p.get("total_steps")
    try:
        per_epoch, epoch, epochs = int(p["steps_in_epoch"]), int(p["epoch"]), int(p["epochs"])
        left = (epochs - epoch) * per_epoch + (per_epoch - int(p["step"]) - 1)
        planned = f"{int(done) + max(0, left):,}"
    except (KeyError, TypeError, ValueError):
        planned = "?"
    done_text = f"{int(done):,}" if isinstance(done, (int, float)) else "?"
    return (
        f"trainer step {done_text} of {planned} (epoch {p.get('epoch', '?')} of {p.get('epochs', '?')}), "
        f"loss {_fmt(p.get('loss'))}, ETA {_hms(p.get('eta_s'))}"
    )


def _source_label(path: str) -> str:
    p = Path(path)
    return f"{p.name} (export)" if p.is_dir() else p.name


def _empty_curves() -> pd.DataFrame:
    return pd.DataFrame(
        {"step": pd.Series(dtype=float), "value": pd.Series(dtype=float), "series": pd.Series(dtype=str)}
    )


def _run_lines(view: Any) -> list[str]:
    p = view.progress()
    share = f" ({p['share']:.0%})" if p["share"] is not None else ""
    gpu = f"{p['gpu_peak_gib']} GiB peak" if p["gpu_peak_gib"] is not None else "no GPU in use (CPU)"
    return [
        f"run: {view.run_dir.name}",
        f"optimizer step {p['optimizer_step']} of {p['planned_steps'] or '?'}{share}; evaluations: {p['evaluations']}",
        f"train loss {_fmt(p['train_loss'])}, eval loss {_fmt(p['eval_loss'])}, LR {_fmt(p['lr'], '.3g')}",
        f"samples/s {_fmt(p['samples_per_s'], '.3g')}, ETA {_hms(p['eta_s'])}, GPU memory: {gpu}",
        f"checkpoints: {', '.join(c.name for c in view.checkpoints) or 'none yet'}; export: "
        f"{'yes' if view.has_export else 'no'}",
        *(f"stage {line}" for line in view.stage_lines()),
    ]


def _loss_curves(metrics: list[dict[str, Any]], steps: list[dict[str, Any]] | None = None) -> pd.DataFrame:
    """Train and eval loss per evaluation, plus the per-step training loss while a job reports it."""
    points = [
        {"step": m["optimizer_step"], "value": m[k], "series": k.replace("_", " ")}
        for m in metrics
        for k in ("train_loss", "eval_loss")
        if m.get(k) is not None
    ]
    points += [
        {"step": p["optimizer_step"], "value": p["loss"], "series": "train loss (each step)"}
        for p in steps or []
        if p.get("loss") is not None and p.get("optimizer_step") is not None
    ]
    return pd.DataFrame(points) if points else _empty_curves()


def _lr_curve(metrics: list[dict[str, Any]]) -> pd.DataFrame:
    points = [
        {"step": m["optimizer_step"], "value": m["lr"], "series": "LR"} for m in metrics if m.get("lr") is not None
    ]
    return pd.DataFrame(points) if points else _empty_curves()


def build_app(engine: Engine, *, refresh_s: float = 2.0) -> gr.Blocks:
    """The Blocks app with the four screens wired to a :class:`Screens` over ``engine``."""
    s = Screens(engine)
    # analytics off: Gradio would otherwise call its own servers at start (a version check, usage data)
    with gr.Blocks(title=TITLE, analytics_enabled=False) as app:
        gr.Markdown(f"# {TITLE}\nData folder: `{engine.data_root}` - runs folder: `{engine.runs_root}`")
        with gr.Tabs():
            with gr.Tab("Data", id="data"):
                data = _data_screen(s)
            with gr.Tab("Train", id="train"):
                train = _train_screen(s, data, refresh_s)
            with gr.Tab("Listen", id="listen"):
                listen = _listen_screen(s)
            with gr.Tab("Evaluate / export", id="evaluate"):
                evaluate = _evaluate_screen(s)
        app.load(s.dataset_choices, outputs=data["dataset"], api_name="load_datasets")
        app.load(
            s.train_lists,
            outputs=[train["base"], train["dataset"], train["shown"], train["restore"]],
            api_name="load_train_lists",
        )
        app.load(s.refresh_train, inputs=train["shown"], outputs=train["live"], api_name="load_train_status")
        app.load(train["search"].studies, outputs=train["study"], api_name="load_studies")
        app.load(s.listen_runs, outputs=listen["run"], api_name="load_listen_runs")
        app.load(s.listen_runs, outputs=evaluate["run"], api_name="load_evaluate_runs")
    return app


def _data_screen(s: Screens) -> dict[str, Any]:
    gr.Markdown(
        "Point at a dataset folder (`metadata_train.csv` + `metadata_eval.csv` + wavs) or upload recordings; "
        "preparation transcribes recordings and checks every row."
    )
    with gr.Row():
        dataset = gr.Dropdown(
            label="dataset or recordings folder (inside the data folder)",
            allow_custom_value=True,
            scale=3,
            elem_id="data-dataset",
        )
        language = gr.Textbox(label="language", value="en", scale=1, elem_id="data-language")
        demo = gr.Button("Use the bundled demo data", elem_id="data-demo", scale=1)
    with gr.Accordion("Upload recordings or a dataset", open=False):
        files = gr.File(label="files", file_count="multiple", elem_id="data-files")
        upload_name = gr.Textbox(label="folder name for the upload", value="recordings", elem_id="data-upload-name")
        upload = gr.Button("Upload", elem_id="data-upload")
    prepare = gr.Button("Prepare and check", variant="primary", elem_id="data-prepare")
    message = gr.Markdown(label="data message", elem_id="data-message")
    summary = gr.Markdown(label="dataset summary", elem_id="data-summary")
    excluded = gr.Dataframe(
        headers=EXCLUDED_HEADERS,
        label="preflight: every excluded row and its reason",
        interactive=False,
        elem_id="data-excluded",
    )
    gr.Markdown("### Review the flagged clips")
    flagged_table = gr.Dataframe(headers=FLAGGED_HEADERS, label="flagged clips", interactive=False)
    flagged = gr.State([])  # the flagged clips as dicts (not part of the API's inputs or outputs)
    with gr.Row():
        pick = gr.Dropdown(label="clip", choices=[], scale=2, elem_id="data-pick")
        audio = gr.Audio(label="clip audio", type="filepath", interactive=False, scale=2, elem_id="data-clip")
    why = gr.Markdown(label="why the clip is flagged")
    text = gr.Textbox(label="transcript (edit it, then Fix)", elem_id="data-text")
    with gr.Row():
        keep = gr.Button("Keep", elem_id="data-keep")
        fix = gr.Button("Fix", variant="primary", elem_id="data-fix")
        drop = gr.Button("Drop", variant="stop", elem_id="data-drop")
    outs = [summary, excluded, flagged_table, flagged, pick, dataset]
    demo.click(s.use_demo, inputs=language, outputs=[dataset, message], api_name="use_demo")
    upload.click(s.upload, inputs=[files, upload_name], outputs=[dataset, message, files], api_name="upload")
    prepare.click(s.prepare, inputs=[dataset, language], outputs=outs, api_name="prepare")
    pick.change(s.pick_flagged, inputs=[flagged, pick], outputs=[audio, text, why], api_name="pick_flagged")
    for button, action in ((keep, "keep"), (fix, "fix"), (drop, "drop")):
        button.click(
            _review_fn(s, action),
            inputs=[dataset, language, flagged, pick, text],
            outputs=[message] + outs,
            api_name=f"review_{action}",
        )
    return {"dataset": dataset, "language": language}


def _review_fn(s: Screens, action: str) -> Callable[..., tuple]:
    def review(
        dataset: str,
        language: str,
        flagged: list,
        index: int | None,
        text: str,
        progress: gr.Progress = gr.Progress(track_tqdm=True),
    ) -> tuple:
        return s.review(dataset, language, flagged, index, action, text)

    review.__name__ = f"review_{action}"
    return review


def _train_screen(s: Screens, data: dict[str, Any], refresh_s: float) -> dict[str, Any]:
    from utils.webui import search_screen

    w = _train_inputs()
    choice = search_screen.search_choice()
    with gr.Row():
        w["start"] = gr.Button("Start training", variant="primary", elem_id="train-start")
        stop = gr.Button("Stop (writes a checkpoint)", variant="stop", elem_id="train-stop")
    w["shown"], epochs, cont, restore, restore_btn = _run_controls()
    w["message"] = message = gr.Markdown(label="train message", elem_id="train-message")
    live = _train_live()
    panel = search_screen.search_panel()  # below the training's live view, which the study's training fills
    base, dataset, preset, name, hparams, shown = (
        w[k] for k in ("base", "dataset", "preset", "name", "hparams", "shown")
    )
    w["download"].click(s.download_base, outputs=[base, message], api_name="download_base")
    w["resolve"].click(s.resolve, inputs=[dataset, base, preset], outputs=hparams, api_name="show_hyperparameters")
    stop.click(s.stop, outputs=message, api_name="stop_training")
    cont.click(s.continue_run, inputs=[shown, epochs], outputs=[message, shown], api_name="continue_training")
    restore_btn.click(
        s.restore_run,
        inputs=[restore, preset, name, dataset, base, hparams],
        outputs=[message, shown],
        api_name="restore_training",
    )
    data["dataset"].change(_same_dataset, inputs=data["dataset"], outputs=dataset, api_name="use_dataset")
    shown.change(s.refresh_train, inputs=shown, outputs=live, show_progress="hidden", api_name="show_run")
    timer = gr.Timer(refresh_s)
    timer.tick(s.refresh_train, inputs=shown, outputs=live, show_progress="hidden", api_name="train_status")
    searches = search_screen.SearchScreens(s)
    search_screen.wire(searches, w, choice, panel, timer)
    return {
        "base": base,
        "dataset": dataset,
        "shown": shown,
        "restore": restore,
        "live": live,
        "search": searches,
        "study": panel["study"],
    }


def _train_inputs() -> dict[str, Any]:
    """Base model, dataset, language, preset, run name, stages and the hyperparameter table."""
    with gr.Row():
        base = gr.Dropdown(
            label="base model",
            choices=[TINY_BASE],
            value=TINY_BASE,
            allow_custom_value=True,
            scale=3,
            elem_id="train-base",
        )
        download = gr.Button("Download XTTS v2", scale=1)
    with gr.Row():
        dataset = gr.Dropdown(label="dataset", allow_custom_value=True, scale=3, elem_id="train-dataset")
        language = gr.Textbox(label="language", value="en", scale=1)
        preset = gr.Dropdown(label="preset", choices=PRESETS, value="", scale=1)
        name = gr.Textbox(label="run name", value="xtts_ft", scale=1)
    stages = gr.CheckboxGroup(
        label="stages, trained in this order (DVAE: audio -> codes; GPT: text -> codes; decoder: latents -> audio)",
        choices=[("DVAE", "dvae"), ("GPT", "gpt"), ("decoder", "decoder")],
        value=["gpt"],
        elem_id="train-stages",
    )
    resolve = gr.Button("Show the hyperparameters", elem_id="train-resolve")
    hparams = gr.Dataframe(
        headers=HPARAM_HEADERS,
        label="hyperparameters: value and where it comes from (edit a value to override it)",
        interactive=True,
        static_columns=[0, 2],
        elem_id="train-hparams",
    )
    return {
        "base": base,
        "download": download,
        "dataset": dataset,
        "language": language,
        "preset": preset,
        "name": name,
        "stages": stages,
        "resolve": resolve,
        "hparams": hparams,
    }


def _run_controls() -> tuple[Any, ...]:
    """The run shown, continue (with a new total of epochs) and restore."""
    with gr.Row():
        shown = gr.Dropdown(
            label="run shown (empty: the current training)",
            choices=[""],
            value="",
            allow_custom_value=True,
            scale=2,
            elem_id="train-shown",
        )
        epochs = gr.Number(
            label="continue: new total epochs (0: as planned)", value=0, precision=0, scale=1, elem_id="train-epochs"
        )
        cont = gr.Button("Continue this run", scale=1, elem_id="train-continue")
    with gr.Row():
        restore = gr.Dropdown(
            label="restore: a checkpoint to start a new run from", choices=[], allow_custom_value=True, scale=3
        )
        restore_btn = gr.Button("Restore into a new run", scale=1)
    return shown, epochs, cont, restore, restore_btn


def _same_dataset(dataset: str | None) -> gr.Dropdown:
    """The Train screen follows the dataset chosen on the Data screen."""
    return gr.Dropdown(value=dataset)


def _train_live() -> list[Any]:
    """The Train screen's live panel: status, curves, evaluations, health events, the run's values."""
    status = gr.Textbox(
        label="live status", lines=7, interactive=False, elem_id="train-status", elem_classes="wui-status"
    )
    with gr.Row():
        loss = gr.LinePlot(
            x="step",
            y="value",
            color="series",
            title="loss",
            label="loss curves",
            x_title="optimizer step",
            elem_id="train-loss",
        )
        lr = gr.LinePlot(
            x="step",
            y="value",
            color="series",
            title="learning rate",
            label="learning rate curve",
            x_title="optimizer step",
            elem_id="train-lr",
        )
    evals = gr.Dataframe(headers=EVAL_HEADERS, label="evaluations", interactive=False, elem_id="train-evals")
    events = gr.Dataframe(
        headers=EVENT_HEADERS, label="health events and recommendations", interactive=False, wrap=True
    )
    run_hp = gr.Dataframe(
        headers=HPARAM_HEADERS, label="the run's hyperparameters (from its config.json)", interactive=False
    )
    return [status, loss, lr, evals, events, run_hp]


def _listen_screen(s: Screens) -> dict[str, Any]:
    with gr.Row():
        run = gr.Dropdown(label="run", choices=[], allow_custom_value=True, scale=2, elem_id="listen-run")
        reload = gr.Button("Refresh runs", scale=1)
        source = gr.Dropdown(
            label="checkpoint or export", choices=[], allow_custom_value=True, scale=3, elem_id="listen-source"
        )
    text = gr.Textbox(label="text", value="The model learns how this speaker sounds.", elem_id="listen-text")
    with gr.Row():
        language = gr.Textbox(label="language", value="en", scale=1)
        reference = gr.Dropdown(
            label="reference clip (the automatic choice is pre-selected)", choices=[], allow_custom_value=True, scale=3
        )
    why = gr.Markdown(label="why this reference")
    with gr.Accordion("sampling", open=False):
        with gr.Row():
            temperature = gr.Slider(0.05, 1.5, value=0.75, step=0.05, label="temperature")
            top_p = gr.Slider(0.05, 1.0, value=0.85, step=0.05, label="top p")
            speed = gr.Slider(0.5, 2.0, value=1.0, step=0.05, label="speed")
            seed = gr.Number(label="seed", value=0, precision=0)
            max_new = gr.Number(label="max new audio tokens (empty: the run's cap)", value=None, precision=0)
    speak = gr.Button("Speak", variant="primary", elem_id="listen-speak")
    out = gr.Audio(label="result (play or download)", type="filepath", interactive=False, elem_id="listen-audio")
    gr.Markdown("### Test sentences of each evaluation, side by side")
    tests = gr.HTML(label="test sentences", elem_id="listen-tests")
    picked = [source, reference, language, tests, why]
    reload.click(s.listen_runs, outputs=run, api_name="listen_refresh_runs").then(
        s.pick_run, inputs=run, outputs=picked, api_name="listen_refresh_pick"
    )
    run.change(s.pick_run, inputs=run, outputs=picked, api_name="listen_pick_run")
    speak.click(
        s.speak,
        inputs=[source, text, language, reference, temperature, top_p, speed, seed, max_new],
        outputs=out,
        api_name="speak",
    )
    return {"run": run}


def _evaluate_screen(s: Screens) -> dict[str, Any]:
    with gr.Row():
        run = gr.Dropdown(label="run", choices=[], allow_custom_value=True, scale=3, elem_id="eval-run")
        reload = gr.Button("Refresh runs", scale=1)
    ckpts = gr.CheckboxGroup(label="checkpoints to evaluate", choices=[])
    evaluate = gr.Button("Evaluate", variant="primary", elem_id="eval-run-button")
    best = gr.Markdown(label="best checkpoint", elem_id="eval-best")
    with gr.Row():
        table = gr.Dataframe(
            headers=REPORT_HEADERS,
            label="objective report per checkpoint",
            interactive=False,
            scale=3,
            elem_id="eval-table",
        )
        plot = gr.ScatterPlot(
            x="step",
            y="value",
            color="series",
            title="report by step",
            label="report by step",
            x_title="step",
            scale=2,
        )
    select = gr.Button("Select the best (copy to best_eval_model.pth)")
    with gr.Row():
        export_ckpt = gr.Dropdown(label="checkpoint to export", choices=[], allow_custom_value=True, scale=3)
        export = gr.Button("Export", variant="primary", scale=1, elem_id="eval-export")
    exported = gr.Markdown(label="export message", elem_id="eval-exported")
    picked = [ckpts, export_ckpt, table, plot, best]
    reload.click(s.listen_runs, outputs=run, api_name="evaluate_refresh_runs").then(
        s.eval_pick, inputs=run, outputs=picked, api_name="evaluate_refresh_pick"
    )
    run.change(s.eval_pick, inputs=run, outputs=picked, api_name="evaluate_pick_run")
    evaluate.click(s.evaluate, inputs=[run, ckpts], outputs=[table, plot, best], api_name="evaluate")
    select.click(s.select_best, inputs=run, outputs=exported, api_name="select_best")
    export.click(s.export, inputs=[run, export_ckpt], outputs=exported, api_name="export")
    return {"run": run}


def launch(
    app: gr.Blocks,
    engine: Engine,
    *,
    host: str,
    port: int,
    auth: Sequence[tuple[str, str]] | None,
    allowed_hosts: Sequence[str] = (),
    block: bool = True,
) -> Any:
    """Serve ``app``; only the data and runs folders are reachable as files.

    Requests pass :class:`utils.webui.access.AccessGuard` first: only the host names the server
    was started for (``allowed_hosts`` adds names), and a growing delay after failed logins.
    Uploads over ``engine.max_upload_bytes`` are refused before they are sent.
    """
    from starlette.middleware import Middleware

    from utils.webui import access

    names = access.allowed_hosts(host, allowed_hosts)
    guard_mw = Middleware(access.AccessGuard, allowed=names, any_address=host in access.WILDCARD_BINDS)
    logger.info("web UI at http://%s:%d (answers to the host names %s)", host, port, ", ".join(sorted(names)))
    result = app.queue(default_concurrency_limit=2).launch(
        server_name=host,
        server_port=port,
        auth=list(auth) if auth else None,
        prevent_thread_lock=not block,
        show_error=False,
        quiet=True,
        allowed_paths=[str(engine.data_root), str(engine.runs_root)],
        max_file_size=engine.max_upload_bytes,
        app_kwargs={"middleware": [guard_mw]},
        css=CSS,
        theme=gr.themes.Soft(),
        footer_links=[],
        ssr_mode=False,
    )
    return result
