"""Benchmark the preflight: validate N synthetic clips and print clips/s (goal: 10,000 in <= 60 s on 2 cores).

python scripts/bench_preflight.py --clips 10000 --cores 2
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import json

from bench.preflight import bench_preflight
from utils import cli


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, default=10000)
    p.add_argument("--workers", type=int, default=2, help="preflight worker processes")
    p.add_argument("--cores", type=int, default=2, help="pin to this many CPU cores (0: no pinning)")
    p.add_argument("--vocab", help="vocab.json for the text checks (default: a small English BPE)")
    p.add_argument("--work-dir", help="keep the synthetic clips here (default: a temporary folder)")
    p.add_argument("--cold", action="store_true", help="drop the clips from the page cache before timing")
    args = p.parse_args(argv)
    cli.setup_logging()

    result = bench_preflight(
        args.clips,
        workers=args.workers,
        cores=args.cores or None,
        vocab_path=args.vocab,
        work_dir=args.work_dir,
        cold=args.cold,
    )
    sys.stdout.write(
        f"preflight: {result['clips']} clips ({result['hours']} h) in {result['seconds']} s "
        f"= {result['clips_per_s']} clips/s on {result['cores']} cores, {result['workers']} workers"
        f"{' (cold page cache)' if result['cold_cache'] else ''}\n"
    )
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
