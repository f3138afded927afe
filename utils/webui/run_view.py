"""Read a run folder back: what every screen shows comes from the files training writes.

Run-folder names and files are read through :mod:`utils.runs` (checkpoint names and steps,
JSON lines); nothing here imports torch or the training code, so the page re-attaches to a run
(running, finished, stopped or crashed) from its folder alone, after a closed tab or a server
restart:

- ``config.json``: the toolkit section (language, data, base model, hyperparameters and their
  sources, planned optimizer steps);
- ``metrics.jsonl``: one row per evaluation (losses, LR, throughput, GPU memory);
- ``events.jsonl``: health events with their recommendations;
- ``checkpoint_N.pth`` / ``best_model_N.pth`` / ``best_model.pth``; ``export/``;
  ``test_sentences/step_N/``; ``eval/eval_report.json``;
- ``stages.json``: each stage's state (DVAE, GPT, decoder), best checkpoint and metrics file;
  the DVAE and decoder stages' own metrics.jsonl in ``dvae/`` and ``decoder/``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from utils.errors import DataError
from utils.runs import StageState, checkpoint_files, read_jsonl, read_stages

logger = logging.getLogger(__name__)


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object, or {} when the file is missing or being rewritten."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def is_run_dir(path: Path) -> bool:
    """A folder training made: config.json with a toolkit section, metrics.jsonl or stages.json."""
    return path.is_dir() and any((path / n).is_file() for n in ("config.json", "metrics.jsonl", "stages.json"))


def list_runs(runs_root: Path) -> list[Path]:
    """Run folders under ``runs_root``, newest first (hidden and staging folders skipped)."""
    if not runs_root.is_dir():
        return []
    found = [p for p in runs_root.iterdir() if not p.name.startswith(".") and is_run_dir(p)]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def test_sentences(run_dir: Path) -> list[dict[str, Any]]:
    """One entry per evaluation that spoke test sentences: step, texts and wav paths, by step."""
    root = run_dir / "test_sentences"
    if not root.is_dir():
        return []
    out = []
    for folder in root.glob("step_*"):
        try:
            step = int(folder.name.split("_", 1)[1])
        except ValueError:
            continue
        texts_file = folder / "sentences.txt"
        if not texts_file.is_file():  # written last: the evaluation's wavs are complete
            continue
        texts = [t for t in texts_file.read_text(encoding="utf-8").splitlines() if t.strip()]
        wavs = sorted(folder.glob("*.wav"))
        out.append({"step": step, "texts": texts, "wavs": wavs})
    return sorted(out, key=lambda e: e["step"])


@dataclass
class RunView:
    """Everything the Train screen shows about one run, read from its folder."""

    run_dir: Path
    toolkit: dict[str, Any] = field(default_factory=dict)
    epochs: int | None = None
    metrics: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    checkpoints: list[Path] = field(default_factory=list)
    has_export: bool = False
    stages: list[StageState] = field(default_factory=list)  # [] for a run that trained the GPT only

    @property
    def planned_steps(self) -> int | None:
        steps = self.toolkit.get("planned_optimizer_steps")
        return int(steps) if steps else None

    @property
    def last(self) -> dict[str, Any]:
        return self.metrics[-1] if self.metrics else {}

    def progress(self) -> dict[str, Any]:
        """Step, share done, samples/s, ETA (s) and GPU memory from the newest evaluation row."""
        last = self.last
        step = int(last.get("optimizer_step") or 0)
        planned = self.planned_steps
        elapsed = float(last.get("elapsed_s") or 0.0)
        eta = None
        if planned and step and elapsed:
            eta = max(0.0, elapsed / step * (planned - step))
        return {
            "optimizer_step": step,
            "planned_steps": planned,
            "share": (step / planned) if planned else None,
            "samples_per_s": last.get("train_samples_per_s"),
            "eta_s": eta,
            "gpu_peak_gib": last.get("gpu_peak_reserved_gib"),
            "train_loss": last.get("train_loss"),
            "eval_loss": last.get("eval_loss"),
            "lr": last.get("lr"),
            "evaluations": len(self.metrics),
        }

    def stage_lines(self) -> list[str]:
        """One line per stage: its state, and for a stage that is not the GPT its last evaluation."""
        lines = []
        for stage in self.stages:
            text = f"{stage.name}: {stage.state}" + (f" ({stage.stop_reason})" if stage.stop_reason else "")
            if stage.name != "gpt":
                rows = read_jsonl(self.run_dir / stage.metrics)
                if rows:
                    last = rows[-1]
                    loss = last.get("eval_loss")
                    loss_text = f"{loss:.4g}" if isinstance(loss, float) else "n/a"
                    text += f", optimizer step {last.get('optimizer_step')}, eval loss {loss_text}"
            lines.append(text)
        return lines

    def hparams(self) -> list[tuple[str, Any, str]]:
        """(name, value, source) of the run's resolved hyperparameters."""
        hp = dict(self.toolkit.get("hparams") or {})
        sources = dict(hp.pop("sources", {}) or {})
        return [(k, v, sources.get(k, "")) for k, v in hp.items() if not isinstance(v, dict)]


def read_run(run_dir: Path) -> RunView:
    """A :class:`RunView` of ``run_dir`` (empty parts while training has not written them yet)."""
    config = read_json(run_dir / "config.json")
    return RunView(
        run_dir=run_dir,
        toolkit=dict(config.get("toolkit") or {}),
        epochs=config.get("epochs"),
        metrics=read_jsonl(run_dir / "metrics.jsonl"),
        events=read_jsonl(run_dir / "events.jsonl"),
        checkpoints=checkpoint_files(run_dir),
        has_export=(run_dir / "export" / "model.pth").is_file(),
        stages=_stages(run_dir),
    )


def _stages(run_dir: Path) -> list[StageState]:
    """The run's stages.json ([] when missing or being rewritten)."""
    try:
        return read_stages(run_dir)
    except DataError:
        return []


def folder_size(path: Path) -> int:
    """Bytes in every file below ``path``."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
