"""Fine-tune XTTS v2 on your own data (its GPT; with --stages also its DVAE and HiFi-GAN decoder), with Coqui's Trainer.

    python utils/gpt_train.py --dataset-hours 37.7 --dataset DATA_DIR --base-model XTTS_DIR --language en
    python utils/gpt_train.py --stages dvae,gpt,decoder --dataset DATA_DIR --base-model XTTS_DIR --language en
    python utils/gpt_train.py --demo                    # tiny base + bundled demo data, CPU or GPU
    python utils/gpt_train.py --dataset-hours 37.7 --dry-run   # the resolved configuration as JSON
    python utils/gpt_train.py --continue RUN_DIR        # resume a run exactly (kill, crash, more epochs)
    python utils/gpt_train.py --restore RUN_DIR/best_model.pth --lr 5e-6 ...   # new run from those weights
    python utils/gpt_train.py --gpus 4 ...              # data parallel on 4 GPUs (torch.distributed.run)
    torchrun --nproc_per_node 4 utils/gpt_train.py ...  # the same; --nnodes M for several machines (README)

Learning rate and weight decay come from the dataset-hours table (utils/hparams.py); the LR
scheduler is ReduceLROnPlateau on the eval loss (or cosine, inverse_sqrt, MultiStepLR; all in
optimizer steps), stepped by the toolkit's bridge. Without --dataset-hours, the hours are measured
from the training rows the preflight keeps. A health monitor watches the run (divergence, loss
spikes, plateaus, overfitting, clipping, LR scale) and writes events.jsonl; see
RESTART_TRAINING_GUIDE.md for --continue and --restore. The run folder is printed on the last line.

Stages train in the order DVAE (audio -> the GPT's target codes), GPT (text -> codes), decoder
(the GPT's latents -> 24 kHz audio): the GPT stage in the run folder, the others in RUN_DIR/dvae
and RUN_DIR/decoder, each with its own metrics, curves and checkpoints; RUN_DIR/stages.json says
where each stands, and --continue goes on inside the stage that stopped.

This command is one front end of ``utils.finetune``: it parses the options into a
``RunConfig`` and hands it to ``utils.finetune.launch`` (this process, ``--gpus N`` workers or a
torchrun worker), which runs ``FineTune(config)``; the command prints the summary. From Python
use that API.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if __name__ == "__main__":  # run as a script: make the repository root importable
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from utils import cli
from utils.finetune.config import HEALTH_OPTIONS, LOGGERS, RUN_HPARAMS, SPEED_PRESETS, SPEED_SWITCHES, RunConfig

# The Python API, re-exported for callers of the earlier module-level functions.
from utils.finetune.training import TrainResult, build_config, summary_lines, train  # noqa: F401
from utils.hparams import DEFAULTS, SCHEDULERS

if TYPE_CHECKING:
    from utils.finetune import FineTune

logger = logging.getLogger("utils.gpt_train")

CLI_HPARAMS = RUN_HPARAMS  # the hyperparameter options (dest names)

# Switches named for what they turn off ("no_kv_cache"): the flag turns the lever off, so it
# names what comes back (--kv-cache), not a double negative.
SPEED_FLAGS = {"no_kv_cache": "kv-cache"}
SPEED_HELP = {
    "auto_batch": "pick the micro-batch from GPU memory, keeping the effective batch (off: the table's "
    "micro-batch, or --batch-size)",
    "oom_backoff": "on CUDA out of memory: at most half the micro-batch, the same effective batch, go on",
    "compile": "torch.compile of the GPT2 (and conditioning) blocks' training forward (about 30 s of compiling "
    "in the first steps, then about 9%% more samples/s; BENCHMARKS.md)",
    "compile_conditioning": "the conditioning encoder's six attention blocks compiled with the GPT2 blocks "
    "(less GPU time per step, a few more seconds of compiling at the start)",
    "packed_attention": "the loss forward on packed rows: causal attention with no mask (flash or cuDNN kernels), "
    "no per-row loops; same losses as Coqui's forward (off: Coqui's masked forward)",
    "round_lengths": "pad packed rows to a multiple of 16 positions, so attention sees a few shapes (cuDNN "
    "attention plans each new shape; off: rows keep their exact length)",
    "cudnn_attention": "SDPA's cuDNN attention backend (on a Hopper card faster than flash on packed rows; "
    "off: flash and memory-efficient kernels only, as --speed low-vram does)",
    "no_kv_cache": "let GPT2 fill its (unused) KV cache in training forwards",
}

# Options that map one to one onto RunConfig fields (dest name = field name).
_FIELDS = (
    "dataset",
    "train_csv",
    "eval_csv",
    "language",
    "dataset_hours",
    "new_tokens",
    "new_token_warmup_steps",
    "max_excluded_share",
    "allow_mixed_script",
    "base_model",
    "output_path",
    "run_name",
    "preset",
    "restore",
    "speed",
    "test_sentences",
    "quality_eval",
    "logger",
    "gpus",
    "demo",
    "stages",
    "max_minutes",
    "dvae_lr",
    "dvae_epochs",
    "dvae_batch_size",
    "dvae_max_minutes",
    "decoder_lr",
    "decoder_disc_lr",
    "decoder_epochs",
    "decoder_batch_size",
    "decoder_warmup_steps",
    "decoder_max_minutes",
)


def parse_args(argv: Sequence[str] | None, defaults: dict[str, Any] | None = None) -> argparse.Namespace:
    """The options; an option not given is None (the run configuration holds the defaults)."""
    p = argparse.ArgumentParser(
        prog="gpt_train.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    _data_options(p.add_argument_group("data"))
    _model_options(p.add_argument_group("model and output"))
    _hparam_options(p.add_argument_group("hyperparameters (override the table)"))
    health = p.add_argument_group("health monitor thresholds (events in RUN_DIR/events.jsonl)")
    for name, kind, text in HEALTH_OPTIONS:
        health.add_argument(f"--{name.replace('_', '-')}", type=kind, help=f"{text} (default {DEFAULTS[name]})")
    _stage_options(p.add_argument_group("stages (each stage's defaults and their sources: --dry-run)"))
    _mode_options(p.add_argument_group("modes"))
    _speed_options(p.add_argument_group("speed and memory (see BENCHMARKS.md)"))
    after = p.add_argument_group("during and after training")
    after.add_argument(
        "--test-sentences",
        type=int,
        help="eval sentences spoken at each evaluation into <run>/test_sentences and TensorBoard (0: off; default 3)",
    )
    after.add_argument(
        "--quality-eval",
        dest="quality_eval",
        action="store_const",
        const=True,
        help="at each save, score held-out sentences (CER, GE2E similarity, DNSMOS, trailing "
        "seconds) into metrics.jsonl (default: on with a CUDA GPU, off on the CPU)",
    )
    after.add_argument("--no-quality-eval", dest="quality_eval", action="store_const", const=False)
    after.add_argument(
        "--no-export",
        action="store_true",
        help="skip the compact inference export (<run>/export) at the end of training",
    )
    after.add_argument(
        "--events-jsonl",
        type=Path,
        metavar="FILE",
        help="also append every run event (stages, progress, evaluations, health) to FILE as JSON lines",
    )
    if defaults:
        p.set_defaults(**defaults)
    return p.parse_args(argv)


def _data_options(g: Any) -> None:
    g.add_argument("--dataset", type=Path, help="folder with metadata_train.csv and metadata_eval.csv")
    g.add_argument("--train-csv", type=Path, help="training metadata (coqui format: audio_file|text|speaker_name)")
    g.add_argument("--eval-csv", type=Path, help="evaluation metadata (same format)")
    g.add_argument("--language", help="language code of the transcripts (default en)")
    g.add_argument("--dataset-hours", help="hours of training audio; picks the table row")
    g.add_argument(
        "--new-tokens",
        type=int,
        help="for a language XTTS lacks: BPE tokens learned from the training text (default 2000)",
    )
    g.add_argument(
        "--new-token-warmup-steps",
        type=int,
        help="for a new language: optimizer steps that train only the new token rows first (default 0)",
    )
    g.add_argument(
        "--max-excluded-share",
        type=float,
        help="refuse to train when the preflight excludes more than this share of rows (default 0.2)",
    )
    g.add_argument(
        "--allow-mixed-script",
        action="store_const",
        const=True,
        help="train on transcripts whose letters are mostly outside the language's script (e.g. English text "
        "with --language ru); without it more than 20%% of such letters are refused and rows mostly in "
        "another script are excluded",
    )


def _model_options(g: Any) -> None:
    g.add_argument("--base-model", type=Path, help="folder with the XTTS v2 files (model.pth, config.json, ...)")
    g.add_argument("--output-path", type=Path, help="where run folders are created (default runs)")
    g.add_argument("--run-name", help="prefix of the run folder name (default xtts_ft)")


def _hparam_options(g: Any) -> None:
    g.add_argument("--epochs", type=int)
    g.add_argument("--batch-size", type=int, help="micro-batch size (samples per forward pass)")
    g.add_argument("--grad-accum", type=int, help="micro-batches per optimizer step")
    g.add_argument("--lr", type=float)
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--plateau-factor", type=float, help="LR multiplier on a plateau (default 0.5)")
    g.add_argument("--plateau-patience", type=int, help="evaluations without improvement before a cut (default 5)")
    g.add_argument("--min-lr", type=float, help="the LR never goes below this (default 1e-7)")
    g.add_argument("--warmup-steps", type=int, help="optimizer steps of linear LR warmup (default 0)")
    g.add_argument(
        "--lr-scheduler", choices=SCHEDULERS, help="LR schedule (default ReduceLROnPlateau); units: optimizer steps"
    )
    g.add_argument(
        "--milestones", type=_int_list, help="MultiStepLR: optimizer steps, comma-separated (e.g. 2000,4000)"
    )
    g.add_argument("--gamma", type=float, help="MultiStepLR: LR multiplier at each milestone (default 0.1)")
    g.add_argument(
        "--anneal-steps", type=_int_list, help="inverse_sqrt: optimizer steps, comma-separated, of LR annealing"
    )
    g.add_argument("--anneal-rate", type=float, help="inverse_sqrt: LR multiplier at each anneal step (default 0.3)")
    g.add_argument("--keep-checkpoints", type=int, help="checkpoint_N.pth files kept (default 2)")
    g.add_argument("--eval-every-steps", type=int, help="evaluate every N optimizer steps (default: once per epoch)")
    g.add_argument("--save-every-steps", type=int, help="checkpoint every N trainer steps (default: by time only)")
    g.add_argument(
        "--save-every-minutes",
        type=float,
        help="checkpoint (weights + optimizer state, for --continue) every N minutes (default 15)",
    )
    g.add_argument("--grad-clip", type=float)
    g.add_argument("--seed", type=int)
    g.add_argument("--num-workers", type=int, dest="num_loader_workers", help="data loader worker processes")
    g.add_argument(
        "--early-stop-patience", type=int, help="stop after this many evaluations without improvement (default off)"
    )
    g.add_argument(
        "--early-stop-min-delta", type=float, help="eval-loss improvement that counts for early stopping (default 0)"
    )


def _stage_options(g: Any) -> None:
    g.add_argument(
        "--stages",
        metavar="LIST",
        help="what to train, comma-separated, in this order: dvae (audio -> the GPT's codes), gpt (text -> "
        "codes), decoder (latents -> audio); any subset, e.g. dvae,gpt,decoder (default gpt)",
    )
    g.add_argument(
        "--max-minutes",
        type=float,
        help="the GPT stage stops cleanly after this many minutes (evaluation, checkpoint, best model), "
        "then the next stage starts (default: no limit)",
    )
    g.add_argument("--dvae-lr", type=float, help="DVAE stage: learning rate (default 5e-6)")
    g.add_argument("--dvae-epochs", type=int, help="DVAE stage: epochs (default 5)")
    g.add_argument("--dvae-batch-size", type=int, help="DVAE stage: crops of 1.49 s per step (default 64)")
    g.add_argument("--dvae-max-minutes", type=float, help="DVAE stage: wall-time limit in minutes (default none)")
    g.add_argument("--decoder-lr", type=float, help="decoder stage: the generator's learning rate (default 2e-5)")
    g.add_argument("--decoder-disc-lr", type=float, help="decoder stage: the discriminators' learning rate (2e-4)")
    g.add_argument("--decoder-epochs", type=int, help="decoder stage: epochs (default 20)")
    g.add_argument("--decoder-batch-size", type=int, help="decoder stage: segments per step (default 16)")
    g.add_argument(
        "--decoder-warmup-steps",
        type=int,
        help="decoder stage: steps with the mel loss only before the discriminators join (default 500)",
    )
    g.add_argument("--decoder-max-minutes", type=float, help="decoder stage: wall-time limit in minutes (default none)")


def _mode_options(g: Any) -> None:
    g.add_argument(
        "--continue",
        dest="continue_run",
        type=Path,
        metavar="RUN_DIR",
        help="resume RUN_DIR exactly from its last complete checkpoint, inside the stage that stopped (only "
        "--epochs and the stages' --max-minutes may change; --base-model/--dataset say where moved inputs now lie)",
    )
    g.add_argument(
        "--restore",
        type=Path,
        metavar="CHECKPOINT",
        help="start a new run from these weights (a .pth, or a run folder: its best_model.pth) "
        "with new hyperparameters",
    )
    g.add_argument(
        "--preset",
        choices=list(_presets()),
        help="an optimization level: stable, fast, plateau-breaker (see --dry-run)",
    )
    g.add_argument(
        "--preview-schedule",
        nargs="?",
        const=True,
        default=None,
        metavar="PNG",
        help="write a PNG of the LR over the planned optimizer steps and exit (default OUTPUT/lr_schedule.png)",
    )
    g.add_argument("--no-progress", action="store_true", help="no progress bar (Coqui's console prints instead)")
    g.add_argument("--no-plots", action="store_true", help="do not refresh training_curves.png at each evaluation")
    g.add_argument(
        "--logger",
        choices=LOGGERS,
        help="where the numbers of metrics.jsonl are also shown, per step and per evaluation (default tensorboard; "
        "wandb and mlflow need the trackers extra, clearml and aim their own package; README)",
    )
    g.add_argument("--dry-run", action="store_true", help="print the resolved configuration as JSON and exit")
    g.add_argument("--demo", action="store_true", default=None, help="tiny base + bundled demo data, a few epochs")
    g.add_argument(
        "--gpus",
        type=int,
        help="data-parallel training on N GPUs of this host (torch.distributed.run starts one worker each; on a "
        "machine without CUDA, N CPU processes). --grad-accum counts micro-batches over all GPUs, so the "
        "table's LR stays valid. Several machines: run this script under torchrun instead (README)",
    )
    g.add_argument(
        "--recipe",
        type=Path,
        metavar="FILE",
        help="a recipe file (JSON): its values are a layer under the command line, each with its source "
        "(e.g. STUDY_DIR/best.json from scripts/search_hparams.py)",
    )
    g.add_argument("--recipe-json", help=argparse.SUPPRESS)  # a recipe's values, passed on to --gpus workers
    g.add_argument("-v", "--verbose", action="store_true")


def _speed_options(g: Any) -> None:
    g.add_argument(
        "--speed",
        choices=SPEED_PRESETS,
        help="fast: every safe lever (default); low-vram: gradient checkpointing + 8-bit AdamW + frozen "
        "modules off the GPU (full GPT on an 8 GB card); stock: Coqui's own step",
    )
    g.add_argument(
        "--compile",
        dest="speed_compile",
        action="store_true",
        default=None,
        help="torch.compile the GPT2 blocks' training forward (on by default with --speed fast "
        "and --speed low-vram; --no-compile turns it off)",
    )
    for name in SPEED_SWITCHES:
        flag = SPEED_FLAGS.get(name, f"no-{name.replace('_', '-')}")
        text = SPEED_HELP.get(name, f"the {name} lever")
        g.add_argument(
            f"--{flag}",
            dest=f"speed_{name}",
            action="store_false",
            default=None,
            help=text if name in SPEED_FLAGS else f"turn off: {text}",
        )


def _presets() -> tuple[str, ...]:
    from utils.hparams import PRESETS

    return tuple(PRESETS)


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated optimizer steps, e.g. 2000,4000 (got {text!r})"
        ) from None


def run_config(
    args: argparse.Namespace, recipe: dict[str, Any] | None = None, recipe_sources: dict[str, str] | None = None
) -> RunConfig:
    """The run configuration: defaults, then ``recipe``, then the options given on the command line."""
    given: dict[str, Any] = {name: getattr(args, name, None) for name in (*_FIELDS, *RUN_HPARAMS)}
    switches = {
        n: bool(getattr(args, f"speed_{n}")) for n in SPEED_SWITCHES if getattr(args, f"speed_{n}", None) is not None
    }
    given["speed_switches"] = switches or None
    for flag, name in (("no_export", "export"), ("no_progress", "progress"), ("no_plots", "plots")):
        if getattr(args, flag, False):
            given[name] = False
    return RunConfig.build(recipe=recipe, recipe_sources=recipe_sources, **given)


def recipe_layer(path: Path | None, recipe: dict[str, Any] | None) -> tuple[dict[str, Any] | None, dict[str, str]]:
    """``--recipe FILE`` on top of a recipe module's values (the file was named on the command
    line, so it wins over the module); returns the merged recipe and the file's sources."""
    if path is None:
        return recipe, {}
    from utils.finetune.recipe_file import read_recipe_file

    loaded = read_recipe_file(path)
    return {**(recipe or {}), **loaded.values}, loaded.sources


def main(argv: Sequence[str] | None = None, *, recipe: dict[str, Any] | None = None) -> int:
    """Run the command. ``recipe`` maps run options and hyperparameters (``grad_accum``, ``language``)
    to values: a layer under the command line (``--dry-run`` shows each value's source)."""
    from utils.events import JsonlWriter
    from utils.finetune import launch

    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    cli.setup_logging(args.verbose)
    if args.recipe_json:
        recipe = {**(recipe or {}), **json.loads(args.recipe_json)}
    elif recipe:  # --gpus N workers run this command line again: the recipe's values go with it
        argv = [*argv, "--recipe-json", json.dumps(recipe)]
    recipe, recipe_sources = recipe_layer(args.recipe, recipe)
    plan_only = args.continue_run is None and bool(args.preview_schedule or args.dry_run)
    return launch.run(
        run_config(args, recipe, recipe_sources),
        argv,
        command=Path(__file__).resolve(),
        then=_then(args) if plan_only else _train_and_report,
        resume=args.continue_run,
        subscribers=[JsonlWriter(args.events_jsonl)] if args.events_jsonl else [],
        plan_only=plan_only,
    )


def _then(args: argparse.Namespace) -> Callable[[FineTune], int]:
    """``--preview-schedule`` or ``--dry-run``: what to show, and exit."""
    if args.preview_schedule:
        png = None if args.preview_schedule is True else Path(args.preview_schedule)
        return lambda ft: _preview(ft, png)
    return _dry_run


def _preview(ft: FineTune, png: Path | None) -> int:
    path = ft.preview_schedule(png)
    logger.info("LR schedule written to %s", path)
    sys.stdout.write(f"{path}\n")
    return 0


def _dry_run(ft: FineTune) -> int:
    out = ft.describe()
    logger.info("presets (--preset NAME; the command line always wins):")
    for row in out["presets"]:
        logger.info("  %-16s %-18s %-8s %s", row["preset"], row["setting"], row["value"], row["why"])
    sys.stdout.write(json.dumps(out, indent=2) + "\n")
    return 0


def _train_and_report(ft: FineTune) -> int:
    """Train; the summary to the log, the run folder as the last line of stdout (rank 0 only under DDP)."""
    result = ft.run()
    if result is None:  # a data-parallel rank other than 0
        return 0
    for line in summary_lines(result)[:-1]:
        logger.info("%s", line)
    sys.stdout.write(f"{result.run_dir}\n")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
