"""Cut a media file into training clips at its subtitle cues (SRT or WebVTT).

    python scripts/import_srt.py episode.mkv episode.srt --out dataset/ --speaker host

Tags, speaker labels and bracketed sound notes are removed; WebVTT voice tags (<v Name>) become
the clips' speakers; adjacent cues of one voice are merged up to XTTS's limits, cues of two
voices never; every cue not turned into a clip (empty, sound notes only, several voices,
overlapping another voice, ...) is listed with its cue number and reason in dataset_report.json.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import json

from utils import cli
from utils.data.segment import SegmentLimits
from utils.data.subtitles import import_subtitles


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("media", help="audio or video file")
    p.add_argument("subtitles", help=".srt or .vtt file")
    p.add_argument("--out", required=True, help="dataset folder (created or extended)")
    p.add_argument("--speaker", default="speaker", help="speaker_name of cues without a <v Name> voice tag")
    p.add_argument("--encoding", help="subtitle text encoding when not UTF-8 (e.g. cp1252)")
    p.add_argument("--max-gap", type=float, default=1.0, help="merge cues at most this many seconds apart")
    p.add_argument("--pad", type=float, default=0.1, help="seconds of padding around each clip")
    p.add_argument("--eval-fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    from utils.fs import check_writable_dir

    check_writable_dir(args.out, "--out")  # before any slow work
    cli.setup_logging()

    report = import_subtitles(
        args.media,
        args.subtitles,
        args.out,
        speaker=args.speaker,
        encoding=args.encoding,
        limits=SegmentLimits(max_merge_gap_s=args.max_gap, pad_s=args.pad),
        eval_fraction=args.eval_fraction,
        seed=args.seed,
        progress=not args.no_progress,
    )
    summary = {"out": args.out, **report.get("last_run", {}), "split": report.get("split")}
    sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
