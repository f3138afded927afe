"""Download the official XTTS v2 files (model.pth, config.json, vocab.json, dvae.pth,
mel_stats.pth, speakers_xtts.pth) into DEST.

    python scripts/download_xtts_v2.py DEST

Idempotent: files already complete are skipped; each file is verified (size, format) before it
gets its final name. Set XTTS_V2_BASE_URL to use a mirror.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils import cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dest", type=Path, help="folder for the XTTS v2 files")
    parser.add_argument("--base-url", default=None, help="where the files are served (default: the official repo)")
    args = parser.parse_args(argv)
    cli.setup_logging()
    from utils.base_model import XTTS_V2_URL, download_xtts_v2

    out = download_xtts_v2(args.dest, base_url=args.base_url or XTTS_V2_URL)
    sys.stdout.write(f"{out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
