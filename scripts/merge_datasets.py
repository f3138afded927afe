"""Merge dataset folders (or CSVs) into a new dataset folder.

    python scripts/merge_datasets.py ds_a/ ds_b/ --out ds_all/ [--keep-text-duplicates]

File names are namespaced per input; duplicates (same audio, or same speaker and text) are
removed and listed; each row keeps its source; the result is split and re-validated.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import json

from utils import cli
from utils.data.merge import merge_datasets


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", help="dataset folders or metadata CSVs")
    p.add_argument("--out", required=True, help="new dataset folder")
    p.add_argument("--keep-text-duplicates", action="store_true", help="only remove identical audio")
    p.add_argument("--language", default="en", help="language for the re-validation")
    p.add_argument("--vocab", help="vocab.json for the [UNK]/token checks of the re-validation")
    p.add_argument("--eval-fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    from utils.fs import check_writable_dir

    check_writable_dir(args.out, "--out")  # before any slow work
    cli.setup_logging()

    report = merge_datasets(
        args.inputs,
        args.out,
        dedupe_text=not args.keep_text_duplicates,
        eval_fraction=args.eval_fraction,
        seed=args.seed,
        language=args.language,
        vocab_path=args.vocab,
        progress=not args.no_progress,
    )
    merge = report["merge"]
    summary = {
        "out": args.out,
        "inputs": merge["inputs"],
        "removed": len(merge["removed"]),
        "split": report["split"],
        "excluded_by_validation": {k: v["excluded_count"] for k, v in report["validation"].items()},
    }
    sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
