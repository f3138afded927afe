"""Hyperparameter search: short fine-tunes on your data find the LR (and more) the table guesses.

    python scripts/search_hparams.py --dataset DATA --base-model XTTS_DIR --language en --trials 12 --out studies/voice
    python scripts/search_hparams.py --continue studies/voice          # after Ctrl-C or kill -9: go on
    python utils/gpt_train.py --recipe studies/voice/best.json --dataset DATA --base-model XTTS_DIR --language en

An Optuna study (TPE sampler, successive-halving pruner on the eval loss of each evaluation):
each trial is a fine-tune of up to --budget-epochs epochs, in its own run folder under
STUDY_DIR/trials, with early stopping. Searched around the hours table's row for the dataset:
lr (log scale, a tenth to ten times the row's; the row's own values are the first trial),
weight_decay, warmup_steps, plateau_patience, plateau_factor. --fix NAME=VALUE sets any run
hyperparameter for every trial (and takes it out of the search); --range NAME=LO:HI changes or
adds a searched range (also early_stop_patience, grad_clip, min_lr).

STUDY_DIR gets best.json (a recipe layer: each value's source is "search STUDY trial K, eval
loss X"), summary.md, summary.csv, history.png, eval_curves.png, lr_vs_eval_loss.png and
importance.png; its path is the last line on stdout. Several GPUs: --gpus N (one trial per GPU).
Several machines: the same command on each with --storage postgresql://USER:PASSWORD@HOST/DB and
an --out folder they share (README: "Hyperparameter search").
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import logging

from utils import cli
from utils.errors import ConfigError

logger = logging.getLogger("utils.search.command")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", type=Path, help="folder with metadata_train.csv and metadata_eval.csv")
    p.add_argument("--base-model", type=Path, help="folder with the XTTS v2 files")
    p.add_argument("--language", default="en", help="language code of the transcripts (default en)")
    p.add_argument("--trials", type=int, help="trials in the study (finished ones; interrupted ones run again)")
    p.add_argument("--out", type=Path, metavar="STUDY_DIR", help="the study's folder (created)")
    p.add_argument(
        "--continue",
        dest="continue_dir",
        type=Path,
        metavar="STUDY_DIR",
        help="go on with this study (its data and settings; --trials N may raise the count)",
    )
    p.add_argument("--budget-epochs", type=int, default=3, help="epochs per trial at most (default 3)")
    p.add_argument(
        "--subset", type=float, default=1.0, help="share of the training rows trials train on (default 1: all)"
    )
    p.add_argument(
        "--fix", nargs="+", action="extend", default=[], metavar="NAME=VALUE", help="a value every trial uses"
    )
    p.add_argument(
        "--range", dest="ranges", nargs="+", action="extend", default=[], metavar="NAME=LO:HI", help="a searched range"
    )
    p.add_argument("--pruner", choices=("halving", "hyperband", "none"), default="halving")
    p.add_argument("--seed", type=int, default=0, help="the sampler's seed (default 0)")
    p.add_argument(
        "--storage", metavar="URL", help="a database shared by several machines (default: a journal file in STUDY_DIR)"
    )
    p.add_argument("--workers", type=int, default=1, help="worker processes on this machine sharing the study")
    p.add_argument("--gpus", type=int, default=0, help="one worker per GPU (trials run side by side)")
    p.add_argument("--keep-weights", action="store_true", help="keep each trial's checkpoints (about 1 GB each)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar over trials")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from utils.search import RunOptions, SearchRequest, continue_search, start_search
    from utils.search.space import parse_fixes, parse_ranges

    args = parse_args(argv)
    cli.setup_logging(args.verbose)
    if args.continue_dir is not None:
        if args.out is not None or args.fix or args.ranges or args.dataset is not None:
            raise ConfigError(
                "--continue STUDY_DIR takes the study's own data and settings; leave out --out/--fix/--range/--dataset"
            )
    elif args.out is None or args.trials is None:
        raise ConfigError("give --out STUDY_DIR and --trials N (or --continue STUDY_DIR)")
    options = RunOptions(
        trials=args.trials,
        workers=args.workers,
        gpus=args.gpus,
        storage=args.storage,
        keep_weights=args.keep_weights,
        progress=not args.no_progress,
    )
    if args.continue_dir is not None:
        outcome = continue_search(args.continue_dir, options)
    else:
        request = SearchRequest(
            out=args.out,
            dataset=args.dataset,
            base_model=args.base_model,
            language=args.language,
            budget_epochs=args.budget_epochs,
            subset=args.subset,
            fix=parse_fixes(args.fix),
            ranges=parse_ranges(args.ranges),
            pruner=args.pruner,
            seed=args.seed,
        )
        outcome = start_search(request, options)
    if outcome.best_path is None:
        raise ConfigError(
            f"no trial finished with a finite eval loss ({outcome.counts.pruned} pruned or diverged, "
            f"{outcome.counts.failed} failed; reasons in {outcome.folder / 'summary.md'}): lower or widen the LR range"
        )
    sys.stdout.write(f"{outcome.best_path}\n")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
