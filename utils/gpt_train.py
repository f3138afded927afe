"""Fine-tune the GPT part of XTTS v2 on your own data, with Coqui's Trainer.

    python utils/gpt_train.py --dataset-hours 37.7 --dataset DATA_DIR --base-model XTTS_DIR --language en
    python utils/gpt_train.py --demo                    # tiny base + bundled demo data, CPU or GPU
    python utils/gpt_train.py --dataset-hours 37.7 --dry-run   # the resolved configuration as JSON
    python utils/gpt_train.py --continue RUN_DIR        # resume a run exactly (kill, crash, more epochs)
    python utils/gpt_train.py --restore RUN_DIR/best_model.pth --lr 5e-6 ...   # new run from those weights

Learning rate and weight decay come from the dataset-hours table (utils/hparams.py); the LR
scheduler is ReduceLROnPlateau on the eval loss (or cosine, inverse_sqrt, MultiStepLR; all in
optimizer steps), stepped by the toolkit's bridge. Without --dataset-hours, the hours are measured
from the training rows the preflight keeps. A health monitor watches the run (divergence, loss
spikes, plateaus, overfitting, clipping, LR scale) and writes events.jsonl; see
RESTART_TRAINING_GUIDE.md for --continue and --restore. The run folder is printed on the last line.

From Python (notebooks, recipes): ``build_config(...)`` returns the GPTTrainerConfig and
``train(...)`` runs it; ``main([...])`` runs the whole command.
"""

from __future__ import annotations

import argparse
import json
import logging
import secrets
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

if __name__ == "__main__":  # run as a script: make the repository root importable
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from utils import cli
from utils.errors import ConfigError, DataError
from utils.hparams import DEFAULTS, PRESETS, SCHEDULERS, Resolved, check_hours, preset_table, resolve

logger = logging.getLogger("utils.gpt_train")

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CACHE = REPO_ROOT / ".cache"

# The demo's values: a recipe layer, so --dry-run --demo shows them with source "recipe".
DEMO_RECIPE: dict[str, Any] = {
    "epochs": 4,
    "batch_size": 2,
    "grad_accum": 1,
    "lr": 5e-5,  # the table's < 1 h row (5e-7) would not move a random tiny model in 20 steps
    "plateau_patience": 1,
    "save_every_steps": 10_000,
    "keep_checkpoints": 1,
    "num_loader_workers": 0,
}


def parse_args(argv: Sequence[str] | None, defaults: dict[str, Any] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="gpt_train.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    data = p.add_argument_group("data")
    data.add_argument("--dataset", type=Path, help="folder with metadata_train.csv and metadata_eval.csv")
    data.add_argument("--train-csv", type=Path, help="training metadata (coqui format: audio_file|text|speaker_name)")
    data.add_argument("--eval-csv", type=Path, help="evaluation metadata (same format)")
    data.add_argument("--language", default=None, help="language code of the transcripts (default en)")
    data.add_argument("--dataset-hours", default=None, help="hours of training audio; picks the table row")
    data.add_argument(
        "--new-tokens", type=int, default=2000,
        help="for a language XTTS lacks: BPE tokens learned from the training text (default 2000)",
    )  # fmt: skip
    data.add_argument(
        "--new-token-warmup-steps", type=int, default=0,
        help="for a new language: optimizer steps that train only the new token rows first (default 0)",
    )  # fmt: skip
    data.add_argument(
        "--max-excluded-share", type=float, default=0.2,
        help="refuse to train when the preflight excludes more than this share of rows (default 0.2)",
    )  # fmt: skip
    model = p.add_argument_group("model and output")
    model.add_argument("--base-model", type=Path, help="folder with the XTTS v2 files (model.pth, config.json, ...)")
    model.add_argument("--output-path", type=Path, default=Path("runs"), help="where run folders are created")
    model.add_argument("--run-name", default="xtts_ft", help="prefix of the run folder name")
    hp = p.add_argument_group("hyperparameters (override the table)")
    hp.add_argument("--epochs", type=int)
    hp.add_argument("--batch-size", type=int, help="micro-batch size (samples per forward pass)")
    hp.add_argument("--grad-accum", type=int, help="micro-batches per optimizer step")
    hp.add_argument("--lr", type=float)
    hp.add_argument("--weight-decay", type=float)
    hp.add_argument("--plateau-factor", type=float, help="LR multiplier on a plateau (default 0.5)")
    hp.add_argument("--plateau-patience", type=int, help="evaluations without improvement before a cut (default 5)")
    hp.add_argument("--min-lr", type=float, help="the LR never goes below this (default 1e-7)")
    hp.add_argument("--warmup-steps", type=int, help="optimizer steps of linear LR warmup (default 0)")
    hp.add_argument("--lr-scheduler", choices=SCHEDULERS, help="LR schedule (default ReduceLROnPlateau); units: optimizer steps")
    hp.add_argument("--milestones", type=_int_list, help="MultiStepLR: optimizer steps, comma-separated (e.g. 2000,4000)")
    hp.add_argument("--gamma", type=float, help="MultiStepLR: LR multiplier at each milestone (default 0.1)")
    hp.add_argument("--anneal-steps", type=_int_list, help="inverse_sqrt: optimizer steps, comma-separated, of LR annealing")
    hp.add_argument("--anneal-rate", type=float, help="inverse_sqrt: LR multiplier at each anneal step (default 0.3)")
    hp.add_argument("--keep-checkpoints", type=int, help="checkpoint_N.pth files kept (default 2)")
    hp.add_argument("--eval-every-steps", type=int, help="evaluate every N optimizer steps (default: once per epoch)")
    hp.add_argument("--save-every-steps", type=int, help="checkpoint every N trainer steps (default: by time only)")
    hp.add_argument("--save-every-minutes", type=float,
                    help="checkpoint (weights + optimizer state, for --continue) every N minutes (default 15)")
    hp.add_argument("--grad-clip", type=float)
    hp.add_argument("--seed", type=int)
    hp.add_argument("--num-workers", type=int, dest="num_loader_workers", help="data loader worker processes")
    hp.add_argument("--early-stop-patience", type=int, help="stop after this many evaluations without improvement (default off)")
    hp.add_argument("--early-stop-min-delta", type=float, help="eval-loss improvement that counts for early stopping (default 0)")
    health = p.add_argument_group("health monitor thresholds (events in RUN_DIR/events.jsonl)")
    for name, kind, text in HEALTH_OPTIONS:
        health.add_argument(f"--{name.replace('_', '-')}", type=kind, help=f"{text} (default {DEFAULTS[name]})")
    mode = p.add_argument_group("modes")
    mode.add_argument("--continue", dest="continue_run", type=Path, metavar="RUN_DIR",
                      help="resume RUN_DIR exactly from its last complete checkpoint (only --epochs may change)")
    mode.add_argument("--restore", type=Path, metavar="CHECKPOINT",
                      help="start a new run from these weights (a .pth, or a run folder: its best_model.pth) with new hyperparameters")
    mode.add_argument("--preset", choices=list(PRESETS), help="an optimization level: stable, fast, plateau-breaker (see --dry-run)")
    mode.add_argument("--preview-schedule", nargs="?", const=True, default=None, metavar="PNG",
                      help="write a PNG of the LR over the planned optimizer steps and exit (default OUTPUT/lr_schedule.png)")
    mode.add_argument("--no-progress", action="store_true", help="no progress bar (Coqui's console prints instead)")
    mode.add_argument("--no-plots", action="store_true", help="do not refresh training_curves.png at each evaluation")
    mode.add_argument("--dry-run", action="store_true", help="print the resolved configuration as JSON and exit")
    mode.add_argument("--demo", action="store_true", help="tiny base + bundled demo data, a few epochs")
    speed = p.add_argument_group("speed and memory (see BENCHMARKS.md)")
    speed.add_argument(
        "--speed", choices=("fast", "low-vram", "stock"), default="fast",
        help="fast: every safe lever (default); low-vram: gradient checkpointing + 8-bit AdamW + frozen "
        "modules off the GPU (full GPT on an 8 GB card); stock: Coqui's own step",
    )  # fmt: skip
    speed.add_argument("--compile", dest="speed_compile", action="store_true", default=None,
                       help="torch.compile the GPT2 blocks' training forward (on by default with --speed fast; "
                       "this turns it on with --speed low-vram)")  # fmt: skip
    for name in SPEED_SWITCHES:
        speed.add_argument(f"--no-{name.replace('_', '-')}", dest=f"speed_{name}", action="store_false", default=None,
                           help=f"turn off: {SPEED_HELP[name]}" if name in SPEED_HELP else f"turn off the {name} lever")  # fmt: skip
    after = p.add_argument_group("during and after training")
    after.add_argument("--test-sentences", type=int, default=3,
                       help="eval sentences spoken at each evaluation into <run>/test_sentences and TensorBoard "
                       "(0: off; default 3)")  # fmt: skip
    after.add_argument("--no-export", action="store_true",
                       help="skip the compact inference export (<run>/export) at the end of training")
    mode.add_argument(
        "--gpus", type=int, default=1,
        help="data-parallel training on N GPUs of this host (one worker process each; on a machine without CUDA, "
        "N CPU processes). --grad-accum counts micro-batches over all GPUs, so the table's LR stays valid",
    )  # fmt: skip
    mode.add_argument("-v", "--verbose", action="store_true")
    if defaults:
        p.set_defaults(**defaults)
    return p.parse_args(argv)


HEALTH_OPTIONS = (
    ("divergence_max_recoveries", int, "non-finite loss/gradient: checkpoint reloads with an LR cut before stopping"),
    ("divergence_lr_factor", float, "LR multiplier after each divergence recovery"),
    ("spike_ratio", float, "loss spike: smoothed train loss this much (relative) above its minimum"),
    ("spike_window", int, "loss spike: for this many optimizer steps"),
    ("plateau_window", int, "plateau: evaluations over which the best eval loss must improve"),
    ("plateau_min_improvement", float, "plateau: relative improvement needed over that window"),
    ("overfit_window", int, "overfitting: evaluations in a row with eval rising and train falling"),
    ("clip_window", int, "clipping saturation: optimizer steps in the window"),
    ("clip_share", float, "clipping saturation: share of clipped steps that triggers it"),
    ("update_ratio_every", int, "LR scale check: optimizer steps between update/weight ratio measurements (0 off)"),
    ("update_ratio_low", float, "LR too small below this update/weight norm ratio"),
    ("update_ratio_high", float, "LR too large above this update/weight norm ratio"),
)

# SpeedOptions switches that get a --no-NAME flag.
SPEED_SWITCHES = (
    "bf16", "tf32", "fused_adamw", "fast_gelu", "sdpa_conditioning", "fast_heads", "no_cudnn_attention",
    "host_lengths", "no_kv_cache", "cache_dvae_codes", "bucket_lengths", "pin_memory", "compile",
    "grad_checkpointing", "optimizer_8bit", "offload_frozen", "expandable_segments", "auto_batch", "oom_backoff",
)  # fmt: skip
SPEED_HELP = {
    "auto_batch": "pick the micro-batch from GPU memory, keeping the effective batch (off: the table's "
    "micro-batch, or --batch-size)",
    "oom_backoff": "on CUDA out of memory: halve the micro-batch, double the accumulation, go on",
    "compile": "torch.compile of the GPT2 blocks' training forward (about 30 s of compiling in the first steps, "
    "then about 9%% more samples/s; BENCHMARKS.md)",
}


def speed_options(args: argparse.Namespace, num_loader_workers: int) -> dict[str, Any]:
    """The speed levers for this run (as a dict for the config): preset, then --no-NAME flags."""
    from utils.training.speed_options import SpeedOptions

    preset = {"fast": SpeedOptions, "low-vram": SpeedOptions.low_vram, "stock": SpeedOptions.stock}[
        getattr(args, "speed", "fast")
    ]
    opts = preset().to_dict()
    for name in SPEED_SWITCHES:
        value = getattr(args, f"speed_{name}", None)
        if value is not None:  # --no-NAME (False), or --compile (True)
            opts[name] = bool(value)
    opts["num_workers"] = int(num_loader_workers)
    return opts


CLI_HPARAMS = (
    "epochs", "batch_size", "grad_accum", "lr", "weight_decay", "plateau_factor", "plateau_patience", "min_lr",
    "warmup_steps", "eval_every_steps", "save_every_steps", "save_every_minutes", "grad_clip", "seed", "num_loader_workers",
    "lr_scheduler", "milestones", "gamma", "anneal_steps", "anneal_rate", "keep_checkpoints",
    "early_stop_patience", "early_stop_min_delta", *(name for name, _, _ in HEALTH_OPTIONS),
)  # fmt: skip


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated optimizer steps, e.g. 2000,4000 (got {text!r})") from None


# ------------------------------------------------------------------------------------------------
# Steps
# ------------------------------------------------------------------------------------------------


@dataclass
class DataSplit:
    """The metadata files of a run and what the preflight kept of them."""

    train_csv: Path
    eval_csv: Path
    train_report: Any = None
    eval_report: Any = None
    train_samples: list[dict[str, Any]] = field(default_factory=list)
    eval_samples: list[dict[str, Any]] = field(default_factory=list)


def locate_data(args: argparse.Namespace) -> tuple[Path, Path]:
    """Step 2: the train and eval CSVs from --dataset or --train-csv/--eval-csv (or the demo)."""
    if args.demo and not (args.dataset or args.train_csv):
        args.dataset = REPO_ROOT / "demo" / (args.language or "en")
    if args.dataset is not None:
        if args.train_csv or args.eval_csv:
            raise ConfigError("give either --dataset DIR or --train-csv/--eval-csv, not both")
        train_csv, eval_csv = args.dataset / "metadata_train.csv", args.dataset / "metadata_eval.csv"
    else:
        if not (args.train_csv and args.eval_csv):
            raise ConfigError(
                "no data: give --dataset DIR (with metadata_train.csv and metadata_eval.csv) or both --train-csv and "
                "--eval-csv, or try --demo"
            )
        train_csv, eval_csv = args.train_csv, args.eval_csv
    for path in (train_csv, eval_csv):
        if not path.is_file():
            raise DataError(f"metadata file not found: {path}; check the path (prepare one with scripts/prepare_dataset.py)")
    return train_csv, eval_csv


def locate_base_model(args: argparse.Namespace, cache_dir: Path = DEFAULT_CACHE):
    """Step 1: the checked base-model files; --demo builds (once) a tiny base in .cache/."""
    from utils.base_model import check_base_model, make_tiny_base

    if args.base_model is not None:
        return check_base_model(args.base_model)
    if not args.demo:
        raise ConfigError(
            "no base model: give --base-model DIR with the XTTS v2 files (get them with "
            "`python scripts/download_xtts_v2.py DIR`), or try --demo"
        )
    tiny = cache_dir / "tiny_base"
    if not (tiny / "model.pth").is_file():
        tmp = cache_dir / f"tiny_base.tmp-{secrets.token_hex(3)}"
        logger.info("building the tiny demo base model in %s (once)", tiny)
        make_tiny_base(tmp)
        tmp.rename(tiny)
    return check_base_model(tiny)


def resolve_hparams(
    args: argparse.Namespace,
    measured_hours: float | None,
    recipe: dict[str, Any] | None = None,
    lr_reference: tuple[float, str] | None = None,
) -> Resolved:
    """Step 3: defaults -> table row -> preset -> recipe (the demo's or a recipe file's) -> command line."""
    cli_values = {k: getattr(args, k, None) for k in CLI_HPARAMS}
    if args.dataset_hours is not None:
        hours, source = check_hours(args.dataset_hours), "cli" if getattr(args, "hours_from_cli", True) else "recipe"
    else:
        hours, source = measured_hours, "measured from the training metadata"
    preset = getattr(args, "preset", None)
    if preset and PRESETS[preset].needs_restore and not getattr(args, "restore", None):
        raise ConfigError(
            f"preset {preset} restarts from a checkpoint: add --restore RUN_DIR (its best_model.pth) or --restore CHECKPOINT.pth"
        )
    layer = dict(DEMO_RECIPE) if args.demo else {}
    layer.update({k: v for k, v in (recipe or {}).items() if k in CLI_HPARAMS})
    resolved = resolve(
        dataset_hours=hours, hours_source=source, cli=cli_values, recipe=layer or None,
        preset_name=preset, lr_reference=lr_reference,
    )  # fmt: skip
    for note in resolved.notes:
        logger.info("%s", note)
    return resolved


def plan_schedule(hparams: Resolved, num_train_rows: int, num_gpus: int = 1):
    """Step 3c: the LR schedule over the planned optimizer steps, checked before training.

    Returns:
        (ScheduleSpec with total_steps, planned optimizer steps, ScheduleCheck).
    """
    from utils.training.distributed import plan_batch
    from utils.training.lr_schedule import ScheduleSpec, check_schedule

    v = hparams.values
    batch_plan = plan_batch(int(v["batch_size"]), int(v["grad_accum"]), num_gpus)
    per_epoch = batch_plan.optimizer_steps_per_epoch(num_train_rows)
    total = max(1, per_epoch * int(v["epochs"]))
    params = {k: val for k, val in hparams.scheduler_params().items() if k != "mode"}
    spec = ScheduleSpec(name=v["lr_scheduler"], base_lr=float(v["lr"]), total_steps=total, **params)
    check = check_schedule(
        spec, total, table_lr=hparams.row.lr if hparams.row else None,
        effective_batch=batch_plan.effective_batch,
    )  # fmt: skip
    return spec, total, check


def report_schedule_check(check: Any) -> None:
    for warning in check.warnings:
        logger.warning("schedule: %s", warning)
    if check.errors:
        raise ConfigError("; ".join(check.errors))


def preview_schedule(spec: Any, total: int, path: Path) -> Path:
    """Write the LR over the planned optimizer steps as a PNG (``--preview-schedule``)."""
    from utils.training.lr_schedule import sample_steps
    from utils.training.plots import plot_schedule

    steps = sample_steps(total, spec)
    note = " (plateau cuts depend on the eval loss and are not shown)" if spec.name == "ReduceLROnPlateau" else ""
    title = (f"{spec.name}, peak LR {spec.base_lr:.3g}, warmup {spec.warmup_steps}, {total} optimizer steps{note}")
    path.parent.mkdir(parents=True, exist_ok=True)
    return plot_schedule(steps, spec.lrs(steps), path, title=title)


def count_rows(csv_path: Path) -> int:
    from utils.data.csv_io import read_coqui_csv

    return sum(1 for _ in read_coqui_csv(csv_path))


def measure_header_hours(csv_path: Path) -> float | None:
    """Hours of audio in a metadata CSV from the wav headers (no decoding); None if unreadable."""
    import soundfile as sf

    from utils.data.csv_io import read_coqui_csv

    seconds = 0.0
    for row in read_coqui_csv(csv_path):
        try:
            info = sf.info(str(row.path))
        except (RuntimeError, OSError, sf.LibsndfileError):
            continue
        seconds += info.frames / info.samplerate
    return seconds / 3600 if seconds else None


def check_data(split: DataSplit, language: str, vocab_path: Path, max_excluded_share: float) -> DataSplit:
    """Step 4: preflight every row of both CSVs; keep what passes, refuse unusable data."""
    from utils.data.preflight import check_usable, run_preflight

    tokenizer = _tokenizer(vocab_path, language)
    split.train_report = run_preflight(split.train_csv, language=language, tokenizer=tokenizer)
    # a clip in both train and eval is excluded from eval (duplicate_row): eval must be held out
    split.eval_report = run_preflight(
        split.eval_csv, language=language, tokenizer=tokenizer, exclude_duplicates_of=split.train_report
    )
    for name, report in (("train", split.train_report), ("eval", split.eval_report)):
        for line in report.summary_lines():
            logger.info("preflight %s: %s", name, line)
    check_usable(split.train_report, split.eval_report, max_excluded_share=max_excluded_share)
    split.train_samples = [_sample(r, language) for r in split.train_report.kept_rows]
    split.eval_samples = [_sample(r, language) for r in split.eval_report.kept_rows]
    return split


def _tokenizer(vocab_path: Path, language: str):
    from utils.language import load_tokenizer

    return load_tokenizer(vocab_path)


def prepare_language(
    language: str, base: Any, train_csv: Path, staging_dir: Path, *, new_tokens: int, warmup_steps: int = 0
) -> tuple[Path, dict[str, Any] | None]:
    """Step 3b: the vocabulary to train with; extends the base one for a language XTTS lacks.

    Returns:
        (vocab path, vocab-extension record or None). The record goes into the config so the
        model grows its text embedding the same way at every start (first run and resume).
    """
    from utils.data.csv_io import read_coqui_csv
    from utils.language import check_language
    from utils.language.registry import language_tokens
    from utils.language.vocab import extend_vocab

    if language in language_tokens(base.vocab):
        return base.vocab, None
    check_language(language)  # a well-formed code with a normaliser (or the basic one)
    staging_dir.mkdir(parents=True, exist_ok=True)
    out = staging_dir / f"vocab-{language}-{secrets.token_hex(3)}.json"
    texts = [row.text for row in read_coqui_csv(train_csv)]
    ext = extend_vocab(base.vocab, texts, language, num_new_tokens=new_tokens, out_path=out)
    logger.info(
        "vocabulary extended for %s: %d -> %d tokens (%d new characters, %d merged tokens)", language,
        ext.base_size, ext.new_size, len(ext.new_characters), len(ext.new_tokens),
    )  # fmt: skip
    record = ext.to_dict()
    record.update({"base_vocab": str(base.vocab), "warmup_steps": int(warmup_steps)})
    return out, record


def _sample(row: Any, language: str) -> dict[str, Any]:
    return {
        "audio_file": str(row.path),
        "text": row.text,
        "speaker_name": row.speaker_name,
        "language": language,
        "root_path": str(Path(row.path).parent),
        "audio_unique_name": str(row.path),
    }


# ------------------------------------------------------------------------------------------------
# Public API
# ------------------------------------------------------------------------------------------------


def build_config(
    hparams: Resolved,
    base_model: Any,
    *,
    output_path: str | Path = "runs",
    language: str = "en",
    run_name: str = "xtts_ft",
    vocab_path: str | Path | None = None,
    vocab_extension: dict[str, Any] | None = None,
):
    """Return the GPTTrainerConfig for a fine-tune (see :func:`utils.training.config.build_config`).

    ``base_model`` is a folder path or :class:`utils.base_model.BaseModelFiles`;
    ``vocab_path``/``vocab_extension`` come from :func:`prepare_language` for a new language.
    """
    from utils.base_model import BaseModelFiles, check_base_model
    from utils.training.config import build_config as _build

    base = base_model if isinstance(base_model, BaseModelFiles) else check_base_model(base_model)
    config = _build(hparams, base, output_path=output_path, language=language, run_name=run_name, vocab_path=vocab_path)
    if vocab_extension:
        config.toolkit["vocab_extension"] = dict(vocab_extension)
    return config


@dataclass
class TrainResult:
    """What a training run produced."""

    run_dir: Path
    records: list[dict[str, Any]]
    total_steps: int
    optimizer_steps: int
    runtime_exclusions: list[dict[str, Any]]
    events: list[dict[str, Any]] = field(default_factory=list)
    stop_reason: str | None = None


def train(
    config: Any,
    train_samples: list[dict[str, Any]],
    eval_samples: list[dict[str, Any]],
    *,
    preflight_reports: dict[str, Any] | None = None,
    continue_path: str | Path | None = None,
    restore_path: str | Path | None = None,
    progress: bool = True,
    plots: bool = True,
) -> TrainResult:
    """Fine-tune with Coqui's Trainer (through the toolkit's subclasses) and return the result.

    Args:
        config: a config from :func:`build_config` (for ``continue_path``: the run's config.json).
        train_samples / eval_samples: rows as dicts (audio_file, text, speaker_name, language).
        preflight_reports: {"train": report, "eval": report} to save as preflight_report.json.
        continue_path: resume this run folder from its last complete checkpoint.
        restore_path: start a new run from this checkpoint's weights (step, LR, optimizer reset).
        progress: a tqdm bar per epoch instead of Coqui's console prints.
        plots: refresh training_curves.png in the run folder at each evaluation.
    """
    from trainer import TrainerArgs

    from utils.training import distributed
    from utils.training.dataset import read_runtime_exclusions
    from utils.training.health import EarlyStopping, HealthConfig, HealthMonitor
    from utils.training.model import ToolkitGPTTrainer
    from utils.training.trainer import ToolkitTrainer

    if not eval_samples:
        raise DataError("the eval set is empty; put at least one clip in metadata_eval.csv")
    toolkit = config.toolkit
    hp = dict(toolkit.get("hparams") or {})
    health = HealthMonitor(HealthConfig.from_values(hp), grad_clip=float(config.grad_clip or 0.0))
    early = None
    if hp.get("early_stop_patience"):
        early = EarlyStopping(int(hp["early_stop_patience"]), float(hp.get("early_stop_min_delta") or 0.0))
    base_name = config.run_name
    if continue_path is None:
        config.run_name = f"{base_name}_{time.strftime('%Y%m%d-%H%M%S')}_{secrets.token_hex(2)}"
    args = TrainerArgs(grad_accum_steps=int(toolkit.get("grad_accum", 1)))
    if continue_path is not None:
        args.continue_path = str(continue_path)
    elif restore_path is not None:
        args.restore_path = str(restore_path)
    model = ToolkitGPTTrainer(config)
    _apply_speed(model, config, distributed.world_size())
    trainer = distributed.build_trainer(
        ToolkitTrainer,
        args,
        config,
        output_path=config.output_path,
        model=model,
        train_samples=train_samples,
        eval_samples=eval_samples,
        eval_every_steps=toolkit.get("eval_every_steps"),
        on_evaluation=_evaluation_hooks(config, plots=plots) if distributed.is_rank_zero() else [],
        health=health,
        early_stopping=early,
        progress=progress,
        save_every_minutes=hp.get("save_every_minutes"),
    )
    config.run_name = base_name
    run_dir = Path(trainer.output_path)
    model.run_dir = run_dir
    if distributed.is_rank_zero():
        _keep_vocab_with_run(config, run_dir)
    if preflight_reports and distributed.is_rank_zero():
        merged = {name: report.to_dict() for name, report in preflight_reports.items()}
        (run_dir / "preflight_report.json").write_text(json.dumps(merged, indent=2), encoding="utf-8")
    logger.info("run folder: %s", run_dir)
    _size_micro_batch(trainer, config, continuing=continue_path is not None)
    try:
        trainer.fit()
    finally:
        if plots and trainer.evaluation_records and distributed.is_rank_zero():
            _refresh_plots(trainer, force=True)
    if toolkit.get("export") and distributed.is_rank_zero() and trainer.stop_reason != "divergence":
        from utils.export import export_run

        export_dir = export_run(run_dir)
        logger.info("inference export: %s (load it with scripts/synthesize.py --model %s)", export_dir, export_dir)
    exclusions = read_runtime_exclusions(run_dir)
    if exclusions:
        logger.warning("%d rows failed to load during training; see %s", len(exclusions), run_dir / "runtime_exclusions.jsonl")
    return TrainResult(
        run_dir=run_dir,
        records=list(trainer.evaluation_records),
        total_steps=trainer.total_steps_done,
        optimizer_steps=trainer.optimizer_steps,
        runtime_exclusions=exclusions,
        events=list(health.events),
        stop_reason=trainer.stop_reason,
    )


PLOT_MIN_INTERVAL_S = 10.0  # evaluations closer than this (tiny runs) skip the refresh; the end of training plots anyway


def _refresh_plots(trainer: Any, _record: dict[str, Any] | None = None, *, force: bool = False) -> None:
    """Redraw training_curves.png in the run folder (about 0.5 s)."""
    from utils.training.plots import plot_training

    now = time.time()
    if not force and now - getattr(trainer, "_last_plot_time", 0.0) < PLOT_MIN_INTERVAL_S:
        return
    trainer._last_plot_time = now
    try:
        plot_training(trainer.output_path)
    except (OSError, ValueError, RuntimeError) as exc:  # a plot must never stop training
        logger.warning("could not refresh training_curves.png: %s", exc)


def _evaluation_hooks(config: Any, *, plots: bool) -> list[Any]:
    """What runs after each evaluation on rank 0: plot refresh and test sentences."""
    hooks: list[Any] = [_refresh_plots] if plots else []
    count = int(config.toolkit.get("test_sentences") or 0)
    if count:
        from utils.synthesize import SynthesisOptions, test_sentences_hook

        options = SynthesisOptions(seed=0, max_new_tokens=config.toolkit.get("test_max_new_tokens"))
        hooks.append(test_sentences_hook(max_sentences=count, options=options))
    return hooks


def _apply_speed(model: Any, config: Any, world_size: int) -> None:
    """Apply the run's speed levers (config.toolkit["speed"]; default: all safe ones) to the model."""
    import dataclasses

    import torch

    from utils.training.speed import SpeedOptions, apply_speed_options

    values = dict(config.toolkit.get("speed") or {"num_workers": config.num_loader_workers})
    known = {f.name for f in dataclasses.fields(SpeedOptions)}
    opts = SpeedOptions(**{k: v for k, v in values.items() if k in known})
    if world_size > 1:  # the cached-code loader has no rank sharding yet: the sharded toolkit dataset;
        # compile is unmeasured under DDP (no multi-GPU machine so far)
        opts = dataclasses.replace(opts, cache_dvae_codes=False, bucket_lengths=False, compile=False)
    model.speed = opts
    device = "cuda" if torch.cuda.is_available() else "cpu"
    applied = apply_speed_options(model, config, opts, device)
    applied += [name for name in ("cache_dvae_codes", "bucket_lengths") if getattr(opts, name)]  # loader levers
    config.toolkit["speed_applied"] = applied


def _size_micro_batch(trainer: Any, config: Any, *, continuing: bool) -> None:
    """The automatic micro-batch (speed option auto_batch): GPU memory decides the micro-batch, the
    effective batch stays. Not when resuming (the run keeps its sizes), when --batch-size was
    given, or with several GPUs (each rank would probe alone)."""
    from utils.training import distributed
    from utils.training.autobatch import autosize_micro_batch

    speed = trainer._get_model().speed
    source = ((config.toolkit.get("hparams") or {}).get("sources") or {}).get("batch_size", "")
    if not getattr(speed, "auto_batch", False) or continuing:
        return
    if source == "cli":
        logger.info("micro-batch %d from --batch-size (automatic sizing off)", config.batch_size)
        return
    if distributed.world_size() > 1:
        logger.info("automatic micro-batch: off with several GPUs; micro-batch %d per GPU", config.batch_size)
        return
    autosize_micro_batch(trainer)


def _keep_vocab_with_run(config: Any, run_dir: Path) -> None:
    """Copy the vocabulary into the run folder and point the saved config at the copy.

    The Trainer wrote config.json at start-up; it is rewritten so that --continue, export and
    inference find run_dir/vocab.json (for a new language, the extended one).
    """
    src = Path(config.model_args.tokenizer_file)
    dest = run_dir / "vocab.json"
    if src.resolve() != dest.resolve():
        shutil.copy2(src, dest)
    ext = config.toolkit.get("vocab_extension")
    if ext:
        if src.parent.name == ".staging":
            src.unlink(missing_ok=True)
        ext["path"] = str(dest)
    config.model_args.tokenizer_file = str(dest)
    config.save_json(str(run_dir / "config.json"))


def summary_lines(result: TrainResult) -> list[str]:
    """A short human summary: steps, LR and eval loss per evaluation, run folder."""
    lines = [f"trained {result.total_steps} steps ({result.optimizer_steps} optimizer steps), {len(result.records)} evaluations"]
    for rec in result.records:
        ev = "n/a" if rec["eval_loss"] is None else f"{rec['eval_loss']:.4f}"
        lines.append(f"  eval at step {rec['step']:>6}: eval loss {ev}  LR {rec['lr']:.3g}{'  (reduced)' if rec['lr_reduced'] else ''}")
    if result.events:
        counts: dict[str, int] = {}
        for ev in result.events:
            counts[ev["event"]] = counts.get(ev["event"], 0) + 1
        lines.append("health events: " + ", ".join(f"{k} x{v}" for k, v in sorted(counts.items())) + " (events.jsonl)")
    if result.stop_reason:
        lines.append(f"stopped early: {result.stop_reason}")
    lines.append(f"run folder: {result.run_dir}")
    return lines


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------


@dataclass
class RestoreSource:
    """A checkpoint to start a new run from, and what its run folder says about it."""

    checkpoint: Path
    run_dir: Path
    toolkit: dict[str, Any]
    lr: float | None  # the LR the run had reached at this checkpoint


def locate_restore(path: Path) -> RestoreSource:
    """``--restore``: a checkpoint file, or a run folder (its best_model.pth, else the last checkpoint)."""
    from utils.training.checkpoints import last_checkpoint, load_checkpoint
    from utils.training.lr_schedule import ScheduleSpec

    if path.is_dir():
        ckpt = path / "best_model.pth" if (path / "best_model.pth").is_file() else last_checkpoint(path)
        if ckpt is None:
            raise ConfigError(f"--restore {path}: no checkpoint in this folder; give a .pth file or a run folder with one")
    elif path.is_file():
        ckpt = path
    else:
        raise ConfigError(f"--restore {path}: no such checkpoint file or run folder")
    run_dir = ckpt.parent
    toolkit: dict[str, Any] = {}
    if (run_dir / "config.json").is_file():
        toolkit = json.loads((run_dir / "config.json").read_text(encoding="utf-8")).get("toolkit") or {}
    state = load_checkpoint(ckpt, mmap=True)
    lr = None
    sched = (state.get("scheduler") or [None])[0]
    if isinstance(sched, dict) and "spec" in sched:
        spec = dict(sched["spec"])
        lr = ScheduleSpec(**spec).lr_at(int(sched["optimizer_steps"]), float(sched["plateau_scale"]),
                                        float(sched.get("health_scale", 1.0)))  # fmt: skip
    del state
    return RestoreSource(checkpoint=ckpt, run_dir=run_dir, toolkit=toolkit, lr=lr)


def _apply_restore_defaults(args: argparse.Namespace, src: RestoreSource) -> None:
    """Language, base model and data default to the restored run's (the weights fit them)."""
    tk = src.toolkit
    if args.language and tk.get("language") and args.language != tk["language"]:
        raise ConfigError(
            f"--restore keeps the restored run's language ({tk['language']}); drop --language {args.language} or "
            "start from the base model"
        )
    args.language = args.language or tk.get("language")
    if args.base_model is None and tk.get("base_model"):
        args.base_model = Path(tk["base_model"])
    if not (args.dataset or args.train_csv or args.eval_csv or args.demo) and tk.get("train_csv"):
        args.train_csv, args.eval_csv = Path(tk["train_csv"]), Path(tk["eval_csv"])


def _restored_vocab(src: RestoreSource) -> tuple[Path, dict[str, Any] | None]:
    vocab = src.run_dir / "vocab.json"
    if not vocab.is_file():
        raise ConfigError(f"--restore: {vocab} is missing; the vocabulary must come with the checkpoint's run folder")
    ext = src.toolkit.get("vocab_extension")
    return vocab, (dict(ext) if ext else None)


CONTINUE_ALLOWED = {"epochs"}


def continue_training(args: argparse.Namespace) -> TrainResult:
    """``--continue RUN_DIR``: resume exactly (weights, optimizer, LR schedule, step, health, vocabulary).

    Coqui's Trainer loads RUN_DIR/config.json in place of any config it is given; the only
    change allowed is ``--epochs N`` (the new total, counted from the run's start), written into
    that config.json first.
    """
    from utils.training.checkpoints import last_checkpoint, load_checkpoint, remove_partial_files
    from utils.training.config import ToolkitGPTConfig

    run_dir = args.continue_run
    if not (run_dir / "config.json").is_file():
        raise ConfigError(f"--continue {run_dir}: no config.json there; give a run folder made by utils/gpt_train.py")
    changed = [k for k in CLI_HPARAMS if getattr(args, k, None) is not None and k not in CONTINUE_ALLOWED]
    changed += [k for k in ("preset", "restore", "base_model") if getattr(args, k, None)]
    if getattr(args, "hours_from_cli", False):  # a recipe's dataset_hours is a default, not a change
        changed.append("dataset_hours")
    if changed:
        raise ConfigError(
            f"--continue resumes {run_dir} exactly and takes only --epochs; to change {', '.join(changed)} start a new "
            f"run from its weights: --restore {run_dir} plus the new values (see RESTART_TRAINING_GUIDE.md)"
        )
    remove_partial_files(run_dir)
    last = last_checkpoint(run_dir)
    if last is None:
        raise ConfigError(f"--continue {run_dir}: no complete checkpoint in the folder; start the run again")
    state = load_checkpoint(last, mmap=True)
    done = int((state.get("toolkit_state") or {}).get("epochs_done", state.get("epoch", 0)))
    del state
    config = ToolkitGPTConfig()
    config.load_json(str(run_dir / "config.json"))
    tk = config.toolkit
    if args.epochs is not None:
        if args.epochs <= done:
            raise ConfigError(f"--epochs {args.epochs}: {run_dir} has already completed {done} epochs; --epochs is the new total, give more than {done}")
        if config.lr_scheduler in ("cosine",) and args.epochs > config.epochs:
            logger.warning("cosine schedule: its horizon stays the original %s optimizer steps; the extra epochs run at min_lr",
                           config.lr_scheduler_params.get("total_steps"))  # fmt: skip
        config.epochs = int(args.epochs)
        tk.setdefault("hparams", {})["epochs"] = config.epochs
        tk["hparams"].setdefault("sources", {})["epochs"] = "cli (--continue)"
        config.save_json(str(run_dir / "config.json"))
    elif done >= config.epochs:
        raise ConfigError(f"{run_dir} has finished its {config.epochs} epochs; to train longer: --continue {run_dir} --epochs N with N > {config.epochs}")
    logger.info("continuing %s from %s (%d of %d epochs done)", run_dir, last.name, done, config.epochs)
    if args.dataset or args.train_csv:
        train_csv, eval_csv = locate_data(args)
    else:
        train_csv, eval_csv = Path(tk["train_csv"]), Path(tk["eval_csv"])
    language = tk.get("language", "en")
    split = check_data(DataSplit(train_csv, eval_csv), language, run_dir / "vocab.json", args.max_excluded_share)
    return run_training(args, config, split.train_samples, split.eval_samples, run_dir.parent / ".staging",
                        continue_path=run_dir)  # fmt: skip


def _dry_run(args: argparse.Namespace, base: Any, train_csv: Path | None, eval_csv: Path | None, language: str,
             lr_reference: tuple[float, str] | None, recipe: dict[str, Any] | None = None) -> int:  # fmt: skip
    hours = measure_header_hours(train_csv) if (args.dataset_hours is None and train_csv) else None
    hparams = resolve_hparams(args, hours, recipe, lr_reference)
    rows = count_rows(train_csv) if train_csv else None
    plan = plan_schedule(hparams, rows, args.gpus) if rows else None
    if args.preview_schedule:
        if plan is None:
            raise ConfigError("--preview-schedule counts the planned steps from the training rows: give --dataset or --train-csv")
        spec, total, check = plan
        for line in check.warnings + check.errors:
            logger.warning("schedule: %s", line)
        dest = args.output_path / "lr_schedule.png" if args.preview_schedule is True else Path(args.preview_schedule)
        path = preview_schedule(spec, total, dest)
        logger.info("LR schedule over %d optimizer steps written to %s", total, path)
        sys.stdout.write(f"{path}\n")
        return 0
    out = hparams.as_dict()
    out.update({"language": language, "base_model": str(base.root) if base else None,
                "train_csv": str(train_csv) if train_csv else None, "eval_csv": str(eval_csv) if eval_csv else None})  # fmt: skip
    if plan is not None:
        spec, total, check = plan
        out["planned_optimizer_steps"] = total
        out["schedule_warnings"], out["schedule_errors"] = check.warnings, check.errors
    from utils.training.distributed import plan_batch

    out["batch_plan"] = plan_batch(hparams["batch_size"], hparams["grad_accum"], args.gpus).as_dict()
    out["speed"] = speed_options(args, int(hparams["num_loader_workers"]))  # auto_batch: sized on the GPU at the start
    out["presets"] = preset_table()
    logger.info("presets (--preset NAME; the command line always wins):")
    for row in out["presets"]:
        logger.info("  %-16s %-18s %-8s %s", row["preset"], row["setting"], row["value"], row["why"])
    sys.stdout.write(json.dumps(out, indent=2) + "\n")
    return 0


def prepare_training(
    args: argparse.Namespace,
    base: Any = None,
    train_csv: Path | None = None,
    eval_csv: Path | None = None,
    language: str | None = None,
    restored: RestoreSource | None = None,
    lr_reference: tuple[float, str] | None = None,
    recipe: dict[str, Any] | None = None,
) -> tuple[Any, DataSplit]:
    """Steps 4-7: vocabulary, preflight, hyperparameters, schedule plan and checks, config.

    Also used by scripts/lr_find.py, which passes only ``args`` (base model and data are then
    located from it).
    """
    if base is None:
        base = locate_base_model(args)
    if train_csv is None or eval_csv is None:
        train_csv, eval_csv = locate_data(args)
    language = language or args.language or "en"
    # 4. language: a language XTTS lacks gets an extended vocabulary (BPE on the training text);
    #    a restored run brings its own
    if restored is not None:
        vocab, extension = _restored_vocab(restored)
    else:
        vocab, extension = prepare_language(
            language, base, train_csv, args.output_path / ".staging",
            new_tokens=getattr(args, "new_tokens", 2000), warmup_steps=getattr(args, "new_token_warmup_steps", 0),
        )  # fmt: skip
    # 5. preflight: every row of both CSVs, with the vocabulary training will use
    split = check_data(DataSplit(train_csv, eval_csv), language, vocab, getattr(args, "max_excluded_share", 0.2))
    hparams = resolve_hparams(args, split.train_report.hours_kept, recipe, lr_reference)
    logger.info(
        "dataset hours %.4g (kept by the preflight%s): lr %.3g (%s), weight decay %.3g (%s)",
        hparams.dataset_hours or 0.0, ", overridden by --dataset-hours" if args.dataset_hours else "",
        hparams["lr"], hparams.sources["lr"], hparams["weight_decay"], hparams.sources["weight_decay"],
    )  # fmt: skip
    # 6. the LR schedule over the planned steps, checked before any training
    _spec, total, check = plan_schedule(hparams, len(split.train_samples), getattr(args, "gpus", 1))
    report_schedule_check(check)
    # 7. config and training
    config = build_config(
        hparams, base, output_path=args.output_path, language=language, run_name=getattr(args, "run_name", "xtts_ft"),
        vocab_path=vocab, vocab_extension=extension,
    )  # fmt: skip
    config.lr_scheduler_params["total_steps"] = total
    config.toolkit["speed"] = speed_options(args, config.num_loader_workers)
    config.toolkit["test_sentences"] = int(getattr(args, "test_sentences", 0))
    # a random tiny GPT never emits its stop token: cap what the demo's test sentences generate
    config.toolkit["test_max_new_tokens"] = 20 if getattr(args, "demo", False) else None
    config.toolkit["export"] = not getattr(args, "no_export", False)
    config.toolkit.update({"planned_optimizer_steps": total, "train_csv": str(train_csv.resolve()),
                           "eval_csv": str(eval_csv.resolve()), "preset": getattr(args, "preset", None),
                           "restored_from": str(restored.checkpoint) if restored else None})  # fmt: skip
    return config, split


def main(argv: Sequence[str] | None = None, *, recipe: dict[str, Any] | None = None) -> int:
    """Run the command. ``recipe`` maps option names (dest form, e.g. ``grad_accum``) to values:
    hyperparameters form the "recipe" layer (under the command line); other options become defaults.
    """
    recipe = dict(recipe or {})
    args = parse_args(argv, {k: v for k, v in recipe.items() if k not in CLI_HPARAMS})
    args.hours_from_cli = args.dataset_hours is not None and args.dataset_hours != recipe.get("dataset_hours")
    cli.setup_logging(args.verbose)
    if args.gpus < 1:
        raise ConfigError(f"--gpus must be a whole number >= 1 (got {args.gpus})")
    # 0. resume: --continue takes everything from the run folder
    if args.continue_run is not None:
        return _finish(continue_training(args))
    restored = locate_restore(args.restore) if args.restore else None
    if restored is not None:
        _apply_restore_defaults(args, restored)
    lr_reference = (restored.lr, f"LR reached at {restored.checkpoint.name}") if restored and restored.lr else None
    language = args.language or "en"
    preview = args.dry_run or args.preview_schedule
    # 1. base model (dry runs without --base-model or --demo resolve hyperparameters only)
    need_base = (args.base_model or args.demo or not preview) and not args.preview_schedule
    base = locate_base_model(args) if need_base else None
    # 2. data (a dry run without data is fine when --dataset-hours is given)
    have_data = args.demo or args.dataset or args.train_csv or args.eval_csv
    train_csv, eval_csv = locate_data(args) if (have_data or not preview) else (None, None)
    _check_language(language)
    # 3. hyperparameters; a dry run reads only wav headers, and only when the hours are not given
    if preview:
        return _dry_run(args, base, train_csv, eval_csv, language, lr_reference, recipe)
    config, split = prepare_training(args, base, train_csv, eval_csv, language, restored, lr_reference, recipe)
    result = run_training(
        args, config, split.train_samples, split.eval_samples, args.output_path / ".staging",
        preflight_reports={"train": split.train_report, "eval": split.eval_report},
        restore_path=restored.checkpoint if restored else None,
    )  # fmt: skip
    return _finish(result)


def run_training(args: argparse.Namespace, config: Any, train_samples: list, eval_samples: list, staging: Path,
                 **kwargs: Any) -> TrainResult:  # fmt: skip
    """:func:`train` in this process, or in ``--gpus N`` worker processes (rank 0's result)."""
    kwargs.update(progress=not args.no_progress, plots=not args.no_plots)
    if args.gpus > 1:
        from utils.training.launch import launch_train

        return launch_train(args.gpus, train, config, train_samples, eval_samples, staging_dir=staging, **kwargs)
    return train(config, train_samples, eval_samples, **kwargs)


def _finish(result: TrainResult) -> int:
    """Step 8: summary; the run folder is the last line of stdout."""
    for line in summary_lines(result)[:-1]:
        logger.info("%s", line)
    sys.stdout.write(f"{result.run_dir}\n")
    return 0


def _check_language(language: str) -> None:
    from utils.language import check_language

    check_language(language)


if __name__ == "__main__":
    sys.exit(cli.run(main))
