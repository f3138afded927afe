"""LR range test on the real model and data: prints a suggested LR and writes a loss-vs-LR PNG.

    python scripts/lr_find.py --dataset DATA_DIR --base-model XTTS_DIR --language en --steps 300
    python scripts/lr_find.py --demo --steps 60          # tiny base + demo data

Then train with it: python utils/gpt_train.py ... --lr SUGGESTED (or --restore RUN_DIR --lr SUGGESTED).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import logging

from utils import cli
from utils.finetune import FineTune, RunConfig

logger = logging.getLogger("scripts.lr_find")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for flag, kw in (
        ("--dataset", {"type": Path}),
        ("--train-csv", {"type": Path}),
        ("--eval-csv", {"type": Path}),
        ("--base-model", {"type": Path}),
        ("--language", {}),
        ("--dataset-hours", {}),
        ("--output-path", {"type": Path, "default": Path("runs")}),
        ("--batch-size", {"type": int}),
        ("--grad-accum", {"type": int}),
        ("--num-workers", {"type": int, "dest": "num_loader_workers"}),
    ):
        p.add_argument(flag, **kw)
    p.add_argument("--start-lr", type=float, default=1e-8)
    p.add_argument("--end-lr", type=float, default=1e-2)
    p.add_argument("--steps", type=int, default=300, help="optimizer steps over the LR range (default 300)")
    p.add_argument(
        "--divergence-factor", type=float, default=4.0, help="stop when the smoothed loss passes this x its minimum"
    )
    p.add_argument("--demo", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    cli.setup_logging(args.verbose)
    from utils.training.lr_find import lr_range_test

    # the fine-tune's own steps up to the trainer config (base, data, language, preflight, table)
    ft = FineTune(
        RunConfig.build(
            dataset=args.dataset,
            train_csv=args.train_csv,
            eval_csv=args.eval_csv,
            base_model=args.base_model,
            language=args.language,
            dataset_hours=args.dataset_hours,
            output_path=args.output_path,
            demo=args.demo or None,
            batch_size=args.batch_size,
            grad_accum=args.grad_accum,
            num_loader_workers=args.num_loader_workers,
            test_sentences=0,
            export=False,
            progress=False,
        )
    )
    config = ft.prepare()
    result = lr_range_test(
        config,
        ft.data.train_samples,
        start_lr=args.start_lr,
        end_lr=args.end_lr,
        num_steps=args.steps,
        divergence_factor=args.divergence_factor,
        progress=not args.no_progress,
    )
    for note in result.notes:
        logger.warning("%s", note)
    logger.info(
        "%d steps, LR %.2g .. %.2g; plot: %s",
        len(result.lrs),
        result.lrs[0] if result.lrs else 0,
        result.lrs[-1] if result.lrs else 0,
        result.run_dir / "lr_find.png",
    )
    if result.suggestion is None:
        return 1
    logger.info(
        "suggested LR %.2g (steepest descent); LR at the loss minimum / 10: %.2g",
        result.suggestion,
        result.lr_at_min_over_10,
    )
    sys.stdout.write(f"{result.suggestion:.3g}\n")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
