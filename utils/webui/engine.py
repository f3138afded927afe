"""The web UI's one door into the toolkit: every screen calls this module, never the training code.

Each public method is one user action (prepare data, resolve hyperparameters, start a run, speak
a text, evaluate, export) and returns plain data the screens render. Problems a user can fix
raise :class:`utils.errors.ToolkitError` with the fix in the message; the screens show it as one
line. Paths the page sends are confined to the data and runs folders (:mod:`utils.webui.paths`).

Training runs in a child process (:mod:`utils.webui.jobs` starts :mod:`utils.webui.worker`).
The Data screen's work is in :mod:`utils.webui.datasets`.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from utils.errors import ConfigError, DataError
from utils.runs import checkpoint_files
from utils.webui import datasets, evaluation
from utils.webui import run_view as runs_mod
from utils.webui.datasets import DataSummary, is_dataset
from utils.webui.jobs import Job, JobManager
from utils.webui.paths import confine, safe_name, word_name

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY_BASE = "tiny demo base (random weights, built once)"


class Engine:
    """The toolkit as the web UI sees it, confined to ``data_root`` and ``runs_root``."""

    max_upload_bytes: int | None = None  # the largest file an upload may hold (None: no limit)

    def __init__(self, data_root: str | Path, runs_root: str | Path, cache_dir: str | Path | None = None) -> None:
        self.data_root = Path(data_root).resolve()
        self.runs_root = Path(runs_root).resolve()
        self.cache_dir = Path(cache_dir).resolve() if cache_dir else REPO_ROOT / ".cache"
        for folder in (self.data_root, self.runs_root):
            folder.mkdir(parents=True, exist_ok=True)
        self.jobs = JobManager(self.runs_root)
        self._model_key: tuple[str, float] | None = None
        self._model: Any = None
        self._progress_cache: dict[str, tuple[int, list[dict[str, Any]]]] = {}

    # --- paths -----------------------------------------------------------------------------

    def data_path(self, path: str | Path, *, what: str = "dataset folder", must_exist: bool = True) -> Path:
        return confine(path, [self.data_root], what=what, must_exist=must_exist)

    def run_path(self, path: str | Path, *, what: str = "run folder") -> Path:
        return confine(path, [self.runs_root], what=what)

    def datasets(self) -> list[str]:
        """Dataset folders (with both CSVs) under the data folder, as paths relative to it."""
        found = {p.parent for p in self.data_root.rglob("metadata_train.csv") if is_dataset(p.parent)}
        return sorted(str(p.relative_to(self.data_root)) for p in found)

    # --- data ------------------------------------------------------------------------------

    def copy_demo(self, language: str = "en") -> Path:
        """Copy the bundled demo dataset into the data folder (once) and return its folder."""
        return datasets.copy_demo(self.data_root, language)

    def save_uploads(self, files: Sequence[str | Path], name: str, *, temp_root: Path | None = None) -> datasets.Upload:
        """Put uploads into ``DATA/uploads/NAME/``, none overwritten (:func:`utils.webui.datasets.save_uploads`)."""
        return datasets.save_uploads(self.data_root, files, name, max_bytes=self.max_upload_bytes, temp_root=temp_root)

    def prepare(
        self, source: str | Path, *, language: str = "en", name: str | None = None, speaker: str = "speaker"
    ) -> DataSummary:
        """A dataset folder: preflight it. A folder of recordings: transcribe and cut it into
        ``DATA/NAME`` with faster-whisper, then preflight the result."""
        folder = self.data_path(source)
        if not is_dataset(folder):
            out = self.data_root / safe_name(name or f"{folder.name}_dataset")
            folder = datasets.transcribe_media(folder, out, language=language, speaker=speaker)
        return self.preflight(folder, language=language)

    def preflight(self, dataset: str | Path, *, language: str = "en") -> DataSummary:
        """Check every row of both CSVs (the training start checks again with the model's vocabulary)."""
        return datasets.preflight_summary(self.data_path(dataset), language)

    def apply_review(self, dataset: str | Path, decisions: Sequence[dict[str, Any]]) -> dict[str, int]:
        """Write the reviewed CSVs (:func:`utils.webui.datasets.apply_review`)."""
        return datasets.apply_review(self.data_path(dataset), decisions)

    # --- base model and hyperparameters -------------------------------------------------------

    def base_models(self) -> list[str]:
        """The tiny demo base, then model folders (model.pth + config.json) in the cache and data folders."""
        found = [TINY_BASE]
        for root in (self.cache_dir, self.data_root):
            if root.is_dir():
                for p in sorted(root.glob("*/model.pth")):
                    if p.parent.name != "tiny_base" and (p.parent / "config.json").is_file():
                        found.append(str(p.parent))
        return found

    def tiny_base(self) -> Path:
        """The tiny random base in the cache (built the first time, about 10 s)."""
        from utils.finetune import RunConfig
        from utils.finetune.steps import locate_base_model

        return Path(locate_base_model(RunConfig.build(demo=True), self.cache_dir).root)

    def download_base(self, base_url: str | None = None) -> Path:
        """Download XTTS v2 into the cache (tqdm progress; idempotent; ``base_url``: a mirror)."""
        from utils.base_model import download_xtts_v2

        kwargs = {"base_url": base_url} if base_url else {}
        return Path(download_xtts_v2(self.cache_dir / "xtts_v2", **kwargs))

    def base_path(self, choice: str) -> Path | None:
        """None for the tiny base; else the checked folder (cache or data folder only)."""
        if not choice or choice == TINY_BASE:
            return None
        from utils.base_model import check_base_model

        folder = confine(choice, [self.cache_dir, self.data_root], what="base model folder")
        return Path(check_base_model(folder).root)

    def run_config(
        self,
        dataset: str | Path,
        *,
        base_model: str = TINY_BASE,
        language: str = "en",
        preset: str | None = None,
        overrides: dict[str, Any] | None = None,
        name: str = "xtts_ft",
        test_sentences: int = 1,
        stages: Sequence[str] | None = None,
    ) -> Any:
        """The :class:`utils.finetune.RunConfig` of a new run (the page's edits are the caller's layer).

        ``stages``: the stages to train (``dvae``, ``gpt``, ``decoder``; None: the GPT only).
        """
        from utils.finetune import RunConfig

        folder = self.data_path(dataset)
        if not is_dataset(folder):
            raise DataError(
                f"{folder.name} is not a prepared dataset (metadata_train.csv + metadata_eval.csv); prepare it first"
            )
        base = self.base_path(base_model)
        return RunConfig.build(
            dataset=folder,
            demo=base is None,
            base_model=base,
            language=language or "en",
            preset=preset or None,
            output_path=self.runs_root,
            run_name=f"{word_name(name, 'run')[:40]}_{time.strftime('%H%M%S')}",
            test_sentences=int(test_sentences),
            progress=False,
            plots=True,
            stages=tuple(stages) if stages else None,
            **dict(overrides or {}),
        )

    def describe(self, config: Any) -> dict[str, Any]:
        """What the run would do (hyperparameters and sources, planned steps, schedule checks)."""
        from utils.finetune import FineTune

        return FineTune(config, cache_dir=self.cache_dir).describe()

    def resolve_hparams(
        self,
        dataset: str | Path,
        *,
        tiny: bool = True,
        base_model: str | None = None,
        preset: str | None = None,
        overrides: dict[str, Any] | None = None,
        language: str = "en",
    ) -> list[list[Any]]:
        """[name, value, source] for every hyperparameter a run can take (defaults -> table ->
        preset -> recipe -> the page's edits, which show as "cli")."""
        from utils.finetune import RUN_HPARAMS

        base = base_model if base_model is not None else (TINY_BASE if tiny else "")
        if not tiny and not base:
            return self._table_only(dataset, preset, overrides)
        plan = self.describe(
            self.run_config(dataset, base_model=base, language=language, preset=preset, overrides=overrides)
        )
        return [[k, _show(plan.get(k)), plan["sources"].get(k, "default")] for k in RUN_HPARAMS if k in plan]

    def _table_only(self, dataset: str | Path, preset: str | None, overrides: dict[str, Any] | None) -> list[list[Any]]:
        """The resolution for a base model not chosen yet (no base files needed for the values)."""
        from utils.finetune import RUN_HPARAMS, RunConfig
        from utils.finetune import steps as recipe_steps

        folder = self.data_path(dataset)
        cfg = RunConfig.build(dataset=folder, preset=preset or None, progress=False, **dict(overrides or {}))
        hours = recipe_steps.measure_header_hours(datasets.csvs(folder)["train"])
        resolved = recipe_steps.resolve_hparams(cfg, hours)
        return [
            [k, _show(resolved.values.get(k)), resolved.sources.get(k, "default")]
            for k in RUN_HPARAMS
            if k in resolved.values
        ]

    def edited_overrides(
        self,
        rows: Sequence[Sequence[Any]],
        dataset: str | Path,
        *,
        tiny: bool = True,
        base_model: str | None = None,
        preset: str | None = None,
    ) -> dict[str, Any]:
        """The values the page changed (compared with a fresh resolution), parsed to their types."""
        base = {r[0]: r[1] for r in self.resolve_hparams(dataset, tiny=tiny, base_model=base_model, preset=preset)}
        out: dict[str, Any] = {}
        for row in rows:
            name, value = str(row[0]), row[1]
            if name in base and str(value).strip() != str(base[name]).strip():
                out[name] = _parse_value(name, value)
        if out:  # validated now, so a bad value is refused before anything starts
            self.resolve_hparams(dataset, tiny=tiny, base_model=base_model, preset=preset, overrides=out)
        return out

    # --- training ----------------------------------------------------------------------------

    def start_training(
        self,
        *,
        dataset: str | Path,
        base_model: str,
        language: str = "en",
        overrides: dict[str, Any] | None = None,
        preset: str | None = None,
        name: str = "xtts_ft",
        test_sentences: int = 1,
        stages: Sequence[str] | None = None,
    ) -> Job:
        """Start a new run in a child process (refused while another training runs, or when the
        planned schedule has errors). ``stages``: what to train (None: the GPT only)."""
        config = self.run_config(
            dataset,
            base_model=base_model,
            language=language,
            preset=preset,
            overrides=overrides,
            name=name,
            test_sentences=test_sentences,
            stages=stages,
        )
        plan = self.describe(config)
        if plan.get("schedule_errors"):
            raise ConfigError("; ".join(plan["schedule_errors"]))
        spec = {
            "mode": "new",
            "config": config.to_dict(),
            "run_name": config.run_name,
            "output_path": str(self.runs_root),
            "planned_optimizer_steps": plan.get("planned_optimizer_steps"),
        }
        return self.jobs.start(spec)

    def continue_training(self, run: str | Path, epochs: int | None = None) -> Job:
        """Resume a run exactly from its last complete checkpoint (``epochs``: a new total)."""
        from utils.finetune import FineTune, RunConfig

        run_dir = self.run_path(run)
        FineTune.resume(run_dir, epochs=epochs, config=RunConfig.build(progress=False))  # refuses a bad request here
        spec = {
            "mode": "continue",
            "continue_run": str(run_dir),
            "epochs": int(epochs) if epochs else None,
            "output_path": str(self.runs_root),
        }
        return self.jobs.start(spec)

    def restore_training(
        self,
        checkpoint: str | Path,
        *,
        overrides: dict[str, Any] | None = None,
        preset: str | None = None,
        name: str = "restored",
        test_sentences: int = 1,
    ) -> Job:
        """A new run from a checkpoint's weights with (possibly) new hyperparameters."""
        ckpt = self.run_path(checkpoint, what="checkpoint")
        run_dir = ckpt if ckpt.is_dir() else ckpt.parent
        tk = runs_mod.read_run(run_dir).toolkit
        tiny = Path(str(tk.get("base_model", ""))).name == "tiny_base"
        values = dict(
            overrides or {},
            preset=preset or None,
            output_path=str(self.runs_root),
            progress=False,
            run_name=f"{word_name(name, 'run')[:40]}_{time.strftime('%H%M%S')}",
            test_sentences=int(test_sentences),
        )
        if tiny and tk.get("train_csv"):  # the demo recipe again, on the run's own data
            values.update(demo=True, dataset=str(Path(tk["train_csv"]).parent))
        spec = {
            "mode": "restore",
            "restore": str(ckpt),
            "values": values,
            "run_name": values["run_name"],
            "output_path": str(self.runs_root),
        }
        return self.jobs.start(spec)

    def step_progress(self, job: Job, max_points: int = 400) -> list[dict[str, Any]]:
        """The job's per-step ``progress`` events (thinned to ``max_points``), re-read only when the file grew."""
        from utils.events import EventKind, read_events

        path = job.events_path
        size = path.stat().st_size if path.is_file() else 0
        cached = self._progress_cache.get(str(path))
        if cached is None or cached[0] != size:
            rows = [dict(e.data) for e in read_events(path) if e.kind == EventKind.PROGRESS]
            self._progress_cache[str(path)] = (size, rows)
        rows = self._progress_cache[str(path)][1]
        stride = max(1, len(rows) // max_points)
        return rows[::stride] + ([rows[-1]] if rows and (len(rows) - 1) % stride else [])

    def stop_training(self) -> Job:
        return self.jobs.stop()

    def current_job(self) -> Job | None:
        return self.jobs.latest()

    def runs(self) -> list[str]:
        return [p.name for p in runs_mod.list_runs(self.runs_root)]

    def run_view(self, run: str | Path) -> runs_mod.RunView:
        return runs_mod.read_run(self.run_path(run))

    # --- listen ------------------------------------------------------------------------------

    def model_sources(self, run: str | Path) -> list[str]:
        """What can speak for a run: its export (if any), then its checkpoints, newest first."""
        run_dir = self.run_path(run)
        out = [str(p) for p in sorted(run_dir.glob("export*")) if (p / "model.pth").is_file()]
        return out + [str(p) for p in reversed(checkpoint_files(run_dir))]

    def checkpoints_by_step(self, run: str | Path) -> list[str]:
        """One checkpoint per step (``checkpoint_N`` over ``best_model_N``): what an evaluation compares."""
        from utils.runs import list_checkpoints

        return [str(p) for p in list_checkpoints(self.run_path(run))]

    def references(self, run: str | Path) -> tuple[list[str], str | None, str]:
        """(candidate clips, the automatic choice, why) from the run's training rows."""
        from utils.after.reference import choose_references_for_run, run_rows

        run_dir = self.run_path(run)
        rows = run_rows(run_dir, "train")
        choice = choose_references_for_run(run_dir, count=1)
        auto = str(choice.chosen[0].path) if choice.chosen else None
        return [str(r.path) for r in rows], auto, choice.note

    def speak(
        self,
        source: str | Path,
        text: str,
        *,
        language: str | None = None,
        reference: str | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        speed: float = 1.0,
        seed: int | None = 0,
        max_new_tokens: int | None = None,
    ) -> Path:
        """Synthesize ``text``; the wav goes to ``RUN/listen/`` and its path is returned."""
        from utils.after.synthesize import SynthesisOptions, synthesize
        from utils.data.audio import write_wav

        src = self.run_path(source, what="model")
        run_dir = src if src.is_dir() and not (src / "model.pth").is_file() else src.parent
        refs = [confine(reference, [self.runs_root, self.data_root], what="reference clip")] if reference else None
        if max_new_tokens is None:
            max_new_tokens = runs_mod.read_run(run_dir).toolkit.get("test_max_new_tokens")
        loaded = self._load(src)
        options = SynthesisOptions(
            temperature=temperature,
            top_p=top_p,
            speed=float(speed or 1.0),
            seed=seed,
            max_new_tokens=int(max_new_tokens) if max_new_tokens else None,
        )
        wav = synthesize(loaded, text, language=language or None, speaker_wav=refs, options=options)
        out = run_dir / "listen" / f"{time.strftime('%Y%m%d-%H%M%S')}-{word_name(text[:24], 'text')}.wav"
        return Path(write_wav(out, wav, loaded.sample_rate))

    def _load(self, src: Path) -> Any:
        """One loaded model at a time, reloaded when the file changes."""
        from utils.after.synthesize import load_model

        weights = src / "model.pth" if src.is_dir() else src
        key = (str(src), weights.stat().st_mtime if weights.exists() else 0.0)
        if self._model_key != key:
            self._model, self._model_key = None, None
            self._model = load_model(src)
            self._model_key = key
        return self._model

    def test_sentences(self, run: str | Path) -> list[dict[str, Any]]:
        return runs_mod.test_sentences(self.run_path(run))

    # --- evaluate and export ---------------------------------------------------------------

    def evaluate(
        self, run: str | Path, checkpoints: Sequence[str] | None = None, max_sentences: int = 2
    ) -> dict[str, Any]:
        """Score checkpoints (CER/WER, speaker similarity, timing); writes RUN/eval/eval_report.json."""
        ckpts = [self.run_path(c, what="checkpoint") for c in checkpoints] if checkpoints else None
        return evaluation.evaluate_run(self.run_path(run), ckpts, max_sentences)

    def eval_report(self, run: str | Path) -> dict[str, Any]:
        return evaluation.eval_report(self.run_path(run))

    def select_best(self, run: str | Path) -> Path:
        """Copy the evaluation's best checkpoint to RUN/best_eval_model.pth."""
        return evaluation.select_best(self.run_path(run))

    def export(self, run: str | Path, checkpoint: str | None = None) -> dict[str, Any]:
        """Export one checkpoint (default: the best) to RUN/export-STEP; size and the command to use it."""
        ckpt = self.run_path(checkpoint, what="checkpoint") if checkpoint else None
        return evaluation.export_checkpoint(self.run_path(run), ckpt)


# ------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------


def _show(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value)
    return "" if value is None else str(value)


def _parse_value(name: str, value: Any) -> Any:
    """A hyperparameter typed from the page's text, by the type of its default."""
    from utils.hparams import DEFAULTS

    text = str(value).strip()
    default = DEFAULTS.get(name)
    try:
        if name in ("milestones", "anneal_steps"):
            return tuple(int(x) for x in text.split(",") if x.strip())
        if text == "" or text.lower() == "none":
            return None
        if isinstance(default, bool):
            return text.lower() in ("1", "true", "yes", "on")
        if isinstance(default, str):
            return text
        if isinstance(default, int) or (default is None and re.fullmatch(r"-?\d+", text)):
            return int(text)
        return float(text)
    except ValueError:
        raise ConfigError(f"hyperparameter {name}: {text!r} is not a number; type a number (e.g. 5e-6 or 2)") from None
