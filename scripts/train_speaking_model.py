"""Train a small XTTS from random weights, all three stages, on espeak-ng speech, and speak held-out text.

    python scripts/train_speaking_model.py OUT_DIR [--hours 2] [--minutes 8.4] [--espeak .espeak]
    python scripts/score_speaking_model.py OUT_DIR      # then, where Whisper tiny.en and GE2E are

Meant for one GPU call of at most 10 minutes (bench/speaking.py says what it trains and why);
``--tiny`` is a CPU-sized run of the same flow (a few minutes on two cores). OUT_DIR gets the
dataset, the run folder, ``wavs/`` (held-out sentences from the export, from earlier GPT
checkpoints and from espeak-ng itself) and ``summary.json``.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])

from bench.speaking import SpeakingPlan, train_speaking_model  # noqa: E402
from utils import cli  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, help="an empty folder for the data, the run and the spoken wavs")
    p.add_argument("--hours", type=float, default=2.0, help="hours of espeak-ng speech, both voices (default 2)")
    p.add_argument("--minutes", type=float, default=6.4, help="training minutes, split DVAE/GPT/decoder 1:3.6:1.8")
    p.add_argument("--espeak", type=Path, help="a bundled espeak-ng folder (bin/, lib/, espeak-ng-data/)")
    p.add_argument("--tiny", action="store_true", help="a CPU-sized run: 0.05 hours, a tiny GPT, two minutes")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    cli.setup_logging(args.verbose)
    plan = SpeakingPlan()
    share = args.minutes / (plan.dvae_minutes + plan.gpt_minutes + plan.decoder_minutes)
    plan = replace(
        plan,
        hours=args.hours,
        dvae_minutes=plan.dvae_minutes * share,
        gpt_minutes=plan.gpt_minutes * share,
        decoder_minutes=plan.decoder_minutes * share,
    )
    if args.tiny:
        plan = replace(plan, hours=0.05, heldout=4, gpt_batch_size=4, eval_every_steps=20, tiny=True)
    summary = train_speaking_model(args.out, plan, espeak_dir=args.espeak)
    sys.stdout.write(f"spoke {sum(v['n'] for v in summary['spoken'].values())} clips into {args.out / 'wavs'}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
