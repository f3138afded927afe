"""Build a tiny random XTTS v2 base in the real on-disk layout (for demos and tests).

    python scripts/make_tiny_base.py OUT_DIR

Writes vocab.json, mel_stats.pth, dvae.pth, model.pth and config.json; loads through exactly the
code that loads the real XTTS v2 (``utils/gpt_train.py --base-model OUT_DIR``).
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils import cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path, help="folder to create (must not hold a base model yet)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    args = parser.parse_args(argv)
    cli.setup_logging()
    from utils.base_model import make_tiny_base

    out = make_tiny_base(args.out_dir, seed=args.seed)
    sys.stdout.write(f"{out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
