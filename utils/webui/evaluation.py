"""The Evaluate / export screen's work: score checkpoints, keep the best, export one.

:class:`utils.webui.engine.Engine` confines the page's paths to the runs folder and calls these
functions with the run folder and checkpoints it checked.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from utils.errors import ConfigError
from utils.runs import checkpoint_step, resolve_checkpoint
from utils.webui.run_view import read_json, read_run

REPORT = Path("eval") / "eval_report.json"


def evaluate_run(run_dir: Path, checkpoints: Sequence[Path] | None, max_sentences: int = 2) -> dict[str, Any]:
    """Score checkpoints (CER/WER, speaker similarity, timing); writes RUN/eval/eval_report.json."""
    from utils.after.evaluate import evaluate
    from utils.after.synthesize import SynthesisOptions

    cap = read_run(run_dir).toolkit.get("test_max_new_tokens")
    report = evaluate(
        run_dir,
        checkpoints=list(checkpoints) if checkpoints else None,
        max_sentences=max_sentences,
        short_probes=0,
        num_references=1,
        options=SynthesisOptions(seed=0, max_new_tokens=cap),
    )
    return report.to_dict()


def eval_report(run_dir: Path) -> dict[str, Any]:
    """The run's last evaluation report ({} before the first)."""
    return read_json(run_dir / REPORT)


def select_best(run_dir: Path) -> Path:
    """Copy the evaluation's best checkpoint to RUN/best_eval_model.pth."""
    from utils.after.evaluate import EvalReport, copy_best

    data = eval_report(run_dir)
    if not data.get("best"):
        raise ConfigError("no evaluation report for this run yet; evaluate its checkpoints first")
    report = EvalReport(run_dir, data.get("language", "en"), data.get("sentences", []), [], data.get("asr", ""))
    report.best = data["best"]
    return copy_best(report)


def export_checkpoint(run_dir: Path, checkpoint: Path | None = None) -> dict[str, Any]:
    """Export one checkpoint (default: the best) to RUN/export-STEP; its size and the command to use it."""
    from utils.after.export import export_model

    ckpt = checkpoint if checkpoint is not None else resolve_checkpoint(run_dir, which="best")[1]
    step = checkpoint_step(ckpt)
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
