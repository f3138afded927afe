"""Rebuild a bundled demo dataset with espeak-ng.

python scripts/make_demo_dataset.py demo/en
python scripts/make_demo_dataset.py demo/am --language am
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils import cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path, help="empty folder for wavs/ and the metadata CSVs")
    parser.add_argument("--language", default="en", help="en (default) or am")
    args = parser.parse_args(argv)
    cli.setup_logging()
    from utils.demo import ENGLISH_DEMO_SENTENCES, make_espeak_dataset
    from utils.language.demo_sentences import make_language_demo

    if args.language == "en":
        make_espeak_dataset(args.out_dir, ENGLISH_DEMO_SENTENCES, voice="en-us", prefix="en")
    else:
        make_language_demo(args.out_dir, args.language)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
