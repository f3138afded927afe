"""Transcribe long recordings with faster-whisper and cut them into an XTTS training set.

    python scripts/prepare_dataset.py interviews/ talk.mp4 --out dataset/ \
        --whisper-model /models/faster-whisper-large-v3 --language en --speaker anna

Writes dataset/wavs/ (22.05 kHz mono 16-bit), metadata_train.csv, metadata_eval.csv and
dataset_report.json. Running it again on the same --out skips inputs already done.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import json  # noqa: E402

from utils import cli  # noqa: E402
from utils.data.prepare import prepare_dataset  # noqa: E402
from utils.data.segment import SegmentLimits  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", help="audio/video files or folders")
    p.add_argument("--out", required=True, help="dataset folder (created or extended)")
    p.add_argument("--whisper-model", required=True, help="local CTranslate2 model folder or model name (e.g. large-v3)")
    p.add_argument("--language", help="language of the speech (default: detect)")
    p.add_argument("--speaker", default="speaker", help="speaker_name for these clips")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    p.add_argument("--compute-type", help="CTranslate2 compute type (default: float16 on GPU, int8 on CPU)")
    p.add_argument("--batch-size", type=int, default=16, help="batched inference size on GPU")
    p.add_argument("--eval-fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pad", type=float, default=0.15, help="seconds of padding around each clip")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    from utils.fs import check_writable_dir

    check_writable_dir(args.out, "--out")  # before any slow work
    cli.setup_logging()

    report = prepare_dataset(
        args.inputs, args.out, whisper_model=args.whisper_model, language=args.language, speaker=args.speaker,
        device=args.device, compute_type=args.compute_type, batch_size=args.batch_size,
        limits=SegmentLimits(pad_s=args.pad), eval_fraction=args.eval_fraction, seed=args.seed,
        progress=not args.no_progress,
    )
    summary = {"out": args.out, **report["last_run"], "split": report["split"],
               "failed_inputs": report["failed_inputs"], "hours_train": report["stats"]["train"]["hours"]}
    sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
