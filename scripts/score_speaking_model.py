"""Score the held-out speech of scripts/train_speaking_model.py (Whisper tiny.en CER, GE2E, DNSMOS, flags).

    python scripts/score_speaking_model.py OUT_DIR [--report FILE.json]

Prints one line per set of wavs (the export, earlier GPT checkpoints, espeak-ng itself) and writes
OUT_DIR/scores.json (every sample's measures and each set's means).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])

from bench.speaking_score import score_folder  # noqa: E402
from utils import cli  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, help="the folder train_speaking_model.py wrote (or returned from a GPU call)")
    p.add_argument("--report", type=Path, help="also copy scores.json here")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    cli.setup_logging(args.verbose)
    report = score_folder(args.out)
    for tag, s in report["sets"].items():
        voices = {k: v for k, v in s.items() if k.startswith("voice_")}
        sys.stdout.write(f"{tag}: CER {s['cer']} WER {s['wer']} DNSMOS {s['dnsmos_ovrl']} {json.dumps(voices)}\n")
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(args.out / "scores.json", args.report)
    return 0


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
