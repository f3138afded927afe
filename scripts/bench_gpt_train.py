"""Time utils/gpt_train.py's default path end to end on a full-size random XTTS v2 GPT.

    python scripts/bench_gpt_train.py --workdir /tmp/bench_gt --clips 4096 --out gt.json
    python scripts/bench_gpt_train.py --workdir /tmp/bench_gt --memory-cap-gib 7 --speed low-vram   # an 8 GB card

Writes a JSON report: training samples/s (step time + loader wait, from metrics.jsonl) and all-in
samples/s (evaluation and checkpoint writes included), over the epochs after the first (which
builds the clip cache). Options it does not know go to utils/gpt_train.py.
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
    parser.add_argument("--clips", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=None, help="fixed micro-batch (default: automatic)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--memory-cap-gib", type=float, default=None, help="cap GPU memory (a smaller card)")
    parser.add_argument("--profile-steps", type=int, default=0, help="profile this many steps of epoch 2")
    parser.add_argument(
        "--measure-imports", action="store_true", help="also time a fresh process's import of torch and Coqui's trainer"
    )
    parser.add_argument(
        "--startup-profile",
        type=Path,
        default=None,
        metavar="PATH",
        help="sample the start-up's Python stack to the end of the first step; collapsed stacks to PATH",
    )
    parser.add_argument("--out", type=Path, default=None)
    args, extra = parser.parse_known_args(argv)
    cli.setup_logging()
    from bench.gpt_train import measure_gpt_train

    result = measure_gpt_train(
        args.workdir,
        clips=args.clips,
        batch_size=args.batch_size,
        epochs=args.epochs,
        workers=args.workers,
        extra_args=extra,
        memory_cap_gib=args.memory_cap_gib,
        profile_steps=args.profile_steps,
        measure_imports=args.measure_imports,
        startup_profile=args.startup_profile,
    )
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text)
    sys.stdout.write(text + "\n")
    return 0 if result["exit_code"] == 0 else 1


if __name__ == "__main__":
    sys.exit(cli.run(main))
