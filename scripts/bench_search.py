"""Benchmark the hyperparameter search against the hours table on two datasets (BENCHMARKS.md).

    python scripts/bench_search.py --workdir /tmp/bench_search --results bench_results/search

For the bundled demo set (10 clips) and a generated two-voice espeak-ng set (--clips, default
200): a final run with the table's values, a search, and a final run with the search's best.json
at the same number of epochs; the search's wall time as a multiple of one run. On a CPU the
tiny random base stands in for XTTS v2 (--base-model to use another). Writes DATASET.json, PNGs
and summary.md into --results; the run folders stay in --workdir.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import json

from utils import cli


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", type=Path, required=True, help="datasets, studies and run folders (not kept)")
    p.add_argument("--results", type=Path, default=Path("bench_results/search"), help="JSON and PNG results")
    p.add_argument("--base-model", type=Path, help="default: the tiny random base (built once in --workdir)")
    p.add_argument("--datasets", default="demo,two_voice", help="comma-separated: demo, demo_wide, two_voice")
    p.add_argument("--clips", type=int, default=200, help="two_voice: clips of both voices (default 200)")
    p.add_argument("--trials", type=int, default=8)
    args = p.parse_args(argv)
    cli.setup_logging()
    from bench.search import DatasetBench, bench_dataset, markdown, two_voice_dataset
    from utils.base_model import make_tiny_base
    from utils.demo import DEMO_ROOT

    args.workdir.mkdir(parents=True, exist_ok=True)
    args.results.mkdir(parents=True, exist_ok=True)
    base = args.base_model
    if base is None:
        base = args.workdir / "tiny_base"
        if not (base / "model.pth").is_file():
            make_tiny_base(base)
    specs = {
        # 10 training clips at 2 a step: 5 optimizer steps an epoch, 50 in the final run
        "demo": (DEMO_ROOT / "en", DatasetBench("demo", 10, 2, 1, args.trials, 2, 1.0)),
        # the same with the LR range widened upwards (the default range's best LR sat at its top)
        "demo_wide": (DEMO_ROOT / "en", DatasetBench("demo_wide", 10, 2, 1, args.trials, 2, 1.0, {"lr": (5e-7, 5e-3)})),
        # clips x 0.9 training clips at 4 x 2 a step: 23 optimizer steps an epoch at 200 clips; trials on half
        "two_voice": (None, DatasetBench("two_voice", 6, 4, 2, args.trials, 2, 0.5)),
    }
    for name in args.datasets.split(","):
        dataset, spec = specs[name]
        if dataset is None:
            dataset = two_voice_dataset(args.workdir / f"two_voice_{args.clips}", args.clips, args.clips // 10)
        bench_dataset(dataset, base, args.workdir, args.results, spec)
    # every dataset measured so far (an earlier call may have measured the others)
    records = [
        json.loads((args.results / f"{n}.json").read_text()) for n in specs if (args.results / f"{n}.json").is_file()
    ]
    table = markdown(records)
    (args.results / "summary.md").write_text(table, encoding="utf-8")
    sys.stdout.write(table)
    sys.stdout.write(json.dumps([r["notes"] for r in records], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
