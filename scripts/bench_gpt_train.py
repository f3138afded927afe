"""Time utils/gpt_train.py's default path end to end on a full-size random XTTS v2 GPT.

    python scripts/bench_gpt_train.py --workdir /tmp/bench_gt --clips 2048 --batch-size 128 --out gt.json

Writes a JSON report (samples/s over the epochs after the first, which builds the clip cache).
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils import cli  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--clips", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None)
    args, extra = parser.parse_known_args(argv)
    cli.setup_logging()
    from utils.training.bench import measure_gpt_train

    result = measure_gpt_train(args.workdir, clips=args.clips, batch_size=args.batch_size, epochs=args.epochs,
                               workers=args.workers, extra_args=extra)  # fmt: skip
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text)
    sys.stdout.write(text + "\n")
    return 0 if result["exit_code"] == 0 else 1


if __name__ == "__main__":
    sys.exit(cli.run(main))
