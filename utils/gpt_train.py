"""Fine-tune the GPT part of XTTS v2 on your own data, with Coqui's Trainer.

    python utils/gpt_train.py --dataset-hours 37.7 --dataset DATA_DIR --base-model XTTS_DIR --language en
    python utils/gpt_train.py --demo                    # tiny base + bundled demo data, CPU or GPU
    python utils/gpt_train.py --dataset-hours 37.7 --dry-run   # the resolved configuration as JSON

Learning rate and weight decay come from the dataset-hours table (utils/hparams.py); the LR
scheduler is ReduceLROnPlateau on the eval loss, stepped after every evaluation by the toolkit's
bridge. Without --dataset-hours, the hours are measured from the training rows the preflight keeps.
The run folder is printed on the last line of the output.

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
from utils.hparams import Resolved, check_hours, resolve

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
    hp.add_argument("--eval-every-steps", type=int, help="evaluate every N optimizer steps (default: once per epoch)")
    hp.add_argument("--save-every-steps", type=int, help="checkpoint every N trainer steps")
    hp.add_argument("--grad-clip", type=float)
    hp.add_argument("--seed", type=int)
    hp.add_argument("--num-workers", type=int, dest="num_loader_workers", help="data loader worker processes")
    mode = p.add_argument_group("modes")
    mode.add_argument("--dry-run", action="store_true", help="print the resolved configuration as JSON and exit")
    mode.add_argument("--demo", action="store_true", help="tiny base + bundled demo data, a few epochs")
    mode.add_argument("-v", "--verbose", action="store_true")
    if defaults:
        p.set_defaults(**defaults)
    return p.parse_args(argv)


CLI_HPARAMS = (
    "epochs", "batch_size", "grad_accum", "lr", "weight_decay", "plateau_factor", "plateau_patience", "min_lr",
    "warmup_steps", "eval_every_steps", "save_every_steps", "grad_clip", "seed", "num_loader_workers",
)  # fmt: skip


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
    args: argparse.Namespace, measured_hours: float | None, recipe: dict[str, Any] | None = None
) -> Resolved:
    """Step 3: defaults -> table row -> recipe (the demo's or a recipe file's) -> command line."""
    cli_values = {k: getattr(args, k) for k in CLI_HPARAMS}
    if args.dataset_hours is not None:
        hours, source = check_hours(args.dataset_hours), "cli" if args.hours_from_cli else "recipe"
    else:
        hours, source = measured_hours, "measured from the training metadata"
    layer = dict(DEMO_RECIPE) if args.demo else {}
    layer.update({k: v for k, v in (recipe or {}).items() if k in CLI_HPARAMS})
    return resolve(dataset_hours=hours, hours_source=source, cli=cli_values, recipe=layer or None)


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
    split.eval_report = run_preflight(split.eval_csv, language=language, tokenizer=tokenizer)
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


def train(
    config: Any,
    train_samples: list[dict[str, Any]],
    eval_samples: list[dict[str, Any]],
    *,
    preflight_reports: dict[str, Any] | None = None,
) -> TrainResult:
    """Fine-tune with Coqui's Trainer (through the toolkit's subclasses) and return the result.

    Args:
        config: a config from :func:`build_config`.
        train_samples / eval_samples: rows as dicts (audio_file, text, speaker_name, language).
        preflight_reports: {"train": report, "eval": report} to save as preflight_report.json.
    """
    from trainer import TrainerArgs

    from utils.training.dataset import read_runtime_exclusions
    from utils.training.model import ToolkitGPTTrainer
    from utils.training.trainer import ToolkitTrainer

    if not eval_samples:
        raise DataError("the eval set is empty; put at least one clip in metadata_eval.csv")
    base_name = config.run_name
    config.run_name = f"{base_name}_{time.strftime('%Y%m%d-%H%M%S')}_{secrets.token_hex(2)}"
    model = ToolkitGPTTrainer(config)
    toolkit = config.toolkit
    trainer = ToolkitTrainer(
        TrainerArgs(grad_accum_steps=int(toolkit.get("grad_accum", 1))),
        config,
        output_path=config.output_path,
        model=model,
        train_samples=train_samples,
        eval_samples=eval_samples,
        eval_every_steps=toolkit.get("eval_every_steps"),
    )
    config.run_name = base_name
    run_dir = Path(trainer.output_path)
    model.run_dir = run_dir
    _keep_vocab_with_run(config, run_dir)
    if preflight_reports:
        merged = {name: report.to_dict() for name, report in preflight_reports.items()}
        (run_dir / "preflight_report.json").write_text(json.dumps(merged, indent=2), encoding="utf-8")
    logger.info("run folder: %s", run_dir)
    trainer.fit()
    exclusions = read_runtime_exclusions(run_dir)
    if exclusions:
        logger.warning("%d rows failed to load during training; see %s", len(exclusions), run_dir / "runtime_exclusions.jsonl")
    return TrainResult(
        run_dir=run_dir,
        records=list(trainer.evaluation_records),
        total_steps=trainer.total_steps_done,
        optimizer_steps=trainer.optimizer_steps,
        runtime_exclusions=exclusions,
    )


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
    lines.append(f"run folder: {result.run_dir}")
    return lines


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None, *, recipe: dict[str, Any] | None = None) -> int:
    """Run the command. ``recipe`` maps option names (dest form, e.g. ``grad_accum``) to values:
    hyperparameters form the "recipe" layer (under the command line); other options become defaults.
    """
    recipe = dict(recipe or {})
    args = parse_args(argv, {k: v for k, v in recipe.items() if k not in CLI_HPARAMS})
    args.hours_from_cli = args.dataset_hours is not None and args.dataset_hours != recipe.get("dataset_hours")
    cli.setup_logging(args.verbose)
    language = args.language or "en"
    # 1. base model (dry runs without --base-model or --demo resolve hyperparameters only)
    base = locate_base_model(args) if (args.base_model or args.demo or not args.dry_run) else None
    # 2. data (a dry run without data is fine when --dataset-hours is given)
    have_data = args.demo or args.dataset or args.train_csv or args.eval_csv
    train_csv, eval_csv = locate_data(args) if (have_data or not args.dry_run) else (None, None)
    _check_language(language)
    # 3. hyperparameters; a dry run reads only wav headers, and only when the hours are not given
    if args.dry_run:
        hours = measure_header_hours(train_csv) if (args.dataset_hours is None and train_csv) else None
        hparams = resolve_hparams(args, hours, recipe)
        out = hparams.as_dict()
        out.update({"language": language, "base_model": str(base.root) if base else None,
                    "train_csv": str(train_csv) if train_csv else None, "eval_csv": str(eval_csv) if eval_csv else None})  # fmt: skip
        sys.stdout.write(json.dumps(out, indent=2) + "\n")
        return 0
    # 4. language: a language XTTS lacks gets an extended vocabulary (BPE on the training text)
    vocab, extension = prepare_language(
        language, base, train_csv, args.output_path / ".staging",
        new_tokens=args.new_tokens, warmup_steps=args.new_token_warmup_steps,
    )  # fmt: skip
    # 5. preflight: every row of both CSVs, with the vocabulary training will use
    split = check_data(DataSplit(train_csv, eval_csv), language, vocab, args.max_excluded_share)
    hparams = resolve_hparams(args, split.train_report.hours_kept, recipe)
    logger.info(
        "dataset hours %.4g (kept by the preflight%s): lr %.3g (%s), weight decay %.3g (%s)",
        hparams.dataset_hours or 0.0, ", overridden by --dataset-hours" if args.dataset_hours else "",
        hparams["lr"], hparams.sources["lr"], hparams["weight_decay"], hparams.sources["weight_decay"],
    )  # fmt: skip
    # 6. config and training
    config = build_config(
        hparams, base, output_path=args.output_path, language=language, run_name=args.run_name,
        vocab_path=vocab, vocab_extension=extension,
    )  # fmt: skip
    result = train(
        config, split.train_samples, split.eval_samples,
        preflight_reports={"train": split.train_report, "eval": split.eval_report},
    )  # fmt: skip
    # 7. summary; the run folder is the last line
    for line in summary_lines(result)[:-1]:
        logger.info("%s", line)
    sys.stdout.write(f"{result.run_dir}\n")
    return 0


def _check_language(language: str) -> None:
    from utils.language import check_language

    check_language(language)


if __name__ == "__main__":
    sys.exit(cli.run(main))
