"""Samples per second of the DVAE, GPT and HiFi-GAN decoder stages, in one run of utils/gpt_train.py.

    python scripts/bench_stages.py --workdir /tmp/bench_stages --clips 256 --out stages.json
    python scripts/bench_stages.py --workdir /tmp/bench_stages --clips 16 --decoder-batch-size 4   # a CPU

Trains --stages dvae,gpt,decoder on a synthetic workload (a random XTTS v2 base: full size on a GPU,
tiny on a CPU) and writes a JSON report with each stage's training samples/s and audio seconds per
second (bench/stages.py). Options it does not know go to utils/gpt_train.py.
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils import cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--clips", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2, help="epochs of each stage")
    parser.add_argument("--workers", type=int, default=2, help="data loader workers of the GPT stage")
    parser.add_argument("--base-model", type=Path, default=None, help="an XTTS v2 folder (default: a random base)")
    parser.add_argument("--tiny", action="store_true", help="the tiny random base even on a GPU")
    parser.add_argument("--out", type=Path, default=None)
    args, extra = parser.parse_known_args(argv)
    cli.setup_logging()
    from bench.stages import measure_stages

    result = measure_stages(
        args.workdir,
        clips=args.clips,
        epochs=args.epochs,
        workers=args.workers,
        base_model=args.base_model,
        full_size=False if args.tiny else None,
        extra_args=extra,
    )
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text)
    sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
