"""Does a search beat the hours table, and what does it cost? (``scripts/bench_search.py``)

For each dataset: one final run with the table's values (its wall time is "one run"), a search
(:func:`utils.search.start_search`), and one final run with the search's best.json as the recipe
layer at the same number of epochs. Reported: both final runs' best eval loss, the search's wall
time as a multiple of one run, and the trials by state. Every run goes through the recipe object
(:class:`utils.finetune.FineTune`), as a user's would.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger("bench.search")

SUBJECTS = ("The old farmer", "A quiet student", "My neighbour", "The young pilot", "Our teacher", "The tired baker")
VERBS = ("carried", "painted", "found", "described", "wanted", "remembered", "counted", "opened")
OBJECTS = ("a heavy box", "the blue door", "seven apples", "an empty letter", "the small garden", "a long story")
ENDINGS = ("before noon.", "on a rainy day.", "with great care.", "near the river.", "after the meeting.", "again.")
VOICES = (("en-us", "anna", 40), ("en-gb+f3", "beth", 70))  # espeak-ng voice, speaker name, pitch


@dataclass
class DatasetBench:
    """One dataset's settings: the final runs' budget and batch, the search's size."""

    name: str
    final_epochs: int
    batch_size: int
    grad_accum: int
    trials: int
    budget_epochs: int
    subset: float
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)  # --range for the search


@dataclass
class FinalRun:
    seconds: float
    cpu_seconds: float  # this process's CPU time: the fair measure on a shared machine
    best_eval_loss: float | None
    eval_losses: list[float | None]
    values: dict[str, Any] = field(default_factory=dict)


def two_voice_dataset(out: Path, clips: int, eval_clips: int, seed: int = 0) -> Path:
    """``clips`` espeak-ng clips of two voices (half each), distinct generated sentences; the
    last ``eval_clips`` (half of each voice) are the eval set."""
    from utils.demo import espeak_to_wav

    if (out / "metadata_train.csv").is_file():
        return out
    rng = random.Random(seed)
    sentences = sorted({f"{s} {v} {o} {e}" for s in SUBJECTS for v in VERBS for o in OBJECTS for e in ENDINGS})
    rng.shuffle(sentences)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    rows: dict[str, list[str]] = {"train": [], "eval": []}
    per_voice = clips // len(VOICES)
    for v, (voice, speaker, pitch) in enumerate(VOICES):
        for i in range(per_voice):
            text = sentences[v * per_voice + i]
            name = f"wavs/{speaker}_{i:04d}.wav"
            espeak_to_wav(text, tmp / name, voice=voice, speed=140 + (i * 7) % 30, pitch=pitch + (i * 5) % 15)
            split = "eval" if i >= per_voice - eval_clips // len(VOICES) else "train"
            rows[split].append(f"{name}|{text}|{speaker}")
    for split, lines in rows.items():
        (tmp / f"metadata_{split}.csv").write_text(
            "audio_file|text|speaker_name\n" + "\n".join(lines) + "\n", encoding="utf-8"
        )
    tmp.rename(out)
    logger.info("two-voice dataset: %d train + %d eval clips in %s", len(rows["train"]), len(rows["eval"]), out)
    return out


def final_run(dataset: Path, base: Path, out: Path, spec: DatasetBench, recipe: Path | None = None) -> FinalRun:
    """One fine-tune of ``spec.final_epochs`` epochs: the table's values, or a recipe file's under them."""
    from utils.finetune import FineTune, RunConfig
    from utils.finetune.recipe_file import read_recipe_file

    layer, sources = ({}, {})
    if recipe is not None:
        loaded = read_recipe_file(recipe)
        layer, sources = loaded.values, loaded.sources
    config = RunConfig.build(
        recipe=layer,
        recipe_sources=sources,
        dataset=dataset,
        base_model=base,
        language="en",
        output_path=out,
        epochs=spec.final_epochs,
        batch_size=spec.batch_size,
        grad_accum=spec.grad_accum,
        num_loader_workers=0,
        test_sentences=0,
        quality_eval=False,
        export=False,
        plots=False,
        progress=False,
    )
    started, cpu = time.time(), time.process_time()
    result = FineTune(config).run()
    seconds, cpu = time.time() - started, time.process_time() - cpu
    assert result is not None
    losses = [r.get("eval_loss") for r in result.records]
    finite = [v for v in losses if v is not None]
    for path in result.run_dir.glob("*.pth"):
        path.unlink()  # the bench keeps numbers, not weights
    hp = {k: v for k, v in layer.items() if k in ("lr", "weight_decay", "warmup_steps", "plateau_patience")}
    return FinalRun(round(seconds, 1), round(cpu, 1), min(finite) if finite else None, losses, hp)


def search(dataset: Path, base: Path, out: Path, spec: DatasetBench) -> tuple[Any, float, float]:
    """The search as a user runs it (default space, successive halving); its outcome, wall and CPU time."""
    from utils.search import RunOptions, SearchRequest, start_search

    fix = {"batch_size": spec.batch_size, "grad_accum": spec.grad_accum, "num_loader_workers": 0}
    request = SearchRequest(
        out=out,
        dataset=dataset,
        base_model=base,
        budget_epochs=spec.budget_epochs,
        subset=spec.subset,
        fix=fix,
        ranges=spec.ranges,
    )
    started, cpu = time.time(), time.process_time()
    outcome = start_search(request, RunOptions(trials=spec.trials, progress=False))
    return outcome, time.time() - started, time.process_time() - cpu


def bench_dataset(dataset: Path, base: Path, work: Path, results: Path, spec: DatasetBench) -> dict[str, Any]:
    """Table run, search, searched run; the record and a curves PNG in ``results``."""
    shutil.rmtree(work / spec.name, ignore_errors=True)
    table = final_run(dataset, base, work / spec.name / "table_run", spec)
    outcome, search_s, search_cpu = search(dataset, base, work / spec.name / "study", spec)
    if outcome.best_path is None:
        raise RuntimeError(f"{spec.name}: no trial completed; see {outcome.folder / 'summary.md'}")
    searched = final_run(dataset, base, work / spec.name / "searched_run", spec, recipe=outcome.best_path)
    best = json.loads(outcome.best_path.read_text(encoding="utf-8"))
    c = outcome.counts
    record = {
        "dataset": spec.name,
        "settings": asdict(spec),
        "table_run": asdict(table),
        "searched_run": asdict(searched),
        "search_seconds": round(search_s, 1),
        "search_cost_runs": round(search_s / table.seconds, 2),
        "search_cpu_seconds": round(search_cpu, 1),
        "search_cpu_cost_runs": round(search_cpu / table.cpu_seconds, 2),
        "trials": {"complete": c.complete, "pruned": c.pruned, "failed": c.failed},
        "trial_seconds": [r.seconds for r in outcome.rows],
        "trial_states": [r.state for r in outcome.rows],
        "best": {k: v["value"] for k, v in best["values"].items()},
        "best_source": next(iter(best["values"].values()))["source"],
        "table_trial": best["about"].get("table_trial"),
        "notes": best["about"].get("notes", []),
        "dataset_hours": best["about"].get("dataset_hours"),
        "table_row": best["about"].get("table_row"),
        "table_lr": best["about"].get("table_lr"),
    }
    _plot(record, results / f"{spec.name}_final_runs.png")
    for name in ("lr_vs_eval_loss.png", "eval_curves.png"):
        shutil.copy(outcome.folder / name, results / f"{spec.name}_{name}")
    (results / f"{spec.name}.json").write_text(json.dumps(record, indent=2), encoding="utf-8")
    return record


def _plot(record: dict[str, Any], path: Path) -> None:
    from utils.search.plots import pyplot, save_png

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    for key, label in (("table_run", "table's values"), ("searched_run", "search's best.json")):
        losses = record[key]["eval_losses"]
        ax.plot(range(1, len(losses) + 1), losses, marker="o", label=f"{label} ({record[key]['seconds']:.0f} s)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("eval loss")
    ax.set_title(
        f"{record['dataset']}: final runs of {record['settings']['final_epochs']} epochs; the search cost "
        f"{record['search_cost_runs']:.2f} runs (wall), {record['search_cpu_cost_runs']:.2f} (CPU)",
        fontsize=9,
    )
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_png(fig, path)
    plt.close(fig)


def markdown(records: list[dict[str, Any]]) -> str:
    """The BENCHMARKS.md table."""
    lines = [
        "| dataset | table row (LR) | final run | table's values: best eval loss | searched: best eval loss | "
        "searched LR | trials (complete / pruned / failed) | search cost (wall) | search cost (CPU) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        t, s = r["table_run"], r["searched_run"]
        lines.append(
            f"| {r['dataset']} ({r['dataset_hours']:.3g} h) | {r['table_row']} ({r['table_lr']:.3g}) | "
            f"{r['settings']['final_epochs']} epochs, {t['seconds']:.0f} s | {t['best_eval_loss']:.4f} | "
            f"{s['best_eval_loss']:.4f} | {r['best'].get('lr', float('nan')):.3g} | "
            f"{r['trials']['complete']} / {r['trials']['pruned']} / {r['trials']['failed']} | "
            f"{r['search_seconds']:.0f} s = {r['search_cost_runs']:.2f} runs | "
            f"{r['search_cpu_seconds']:.0f} s = {r['search_cpu_cost_runs']:.2f} runs |"
        )
    return "\n".join(lines) + "\n"
