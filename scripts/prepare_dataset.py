"""Transcribe long recordings with faster-whisper and cut them into an XTTS training set.

    python scripts/prepare_dataset.py interviews/ talk.mp4 --out dataset/ \
        --whisper-model /models/faster-whisper-large-v3 --language en --speaker anna

Clips are cut only in pauses measured on the audio and never hold two voices: the voice with most
speech in each recording (or the one nearest --speaker-reference) is --speaker, the others are
dropped (or kept as their own speakers with --other-speakers keep). A second copy of a recording
(another container, rate or channel count) is reported and skipped. Writes dataset/wavs/
(22.05 kHz mono 16-bit), metadata_train.csv, metadata_eval.csv, dataset_report.json (every clip's
edge margins, speaker and checks; everything skipped, with its reason) and review.csv (clips whose
transcript looks wrong). Running it again on the same --out skips inputs already done.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import json

from utils import cli
from utils.data.prepare import SpeakerPlan, prepare_dataset
from utils.data.segment import SegmentLimits
from utils.data.speakers import SpeakerOptions
from utils.data.transcribe import load_transcriber
from utils.errors import ConfigError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", help="audio/video files or folders")
    p.add_argument("--out", required=True, help="dataset folder (created or extended)")
    p.add_argument(
        "--whisper-model", required=True, help="local CTranslate2 model folder or model name (e.g. large-v3)"
    )
    p.add_argument("--language", help="language of the speech (default: detect)")
    p.add_argument("--speaker", default="speaker", help="speaker_name of the target voice")
    p.add_argument(
        "--other-speakers",
        choices=["drop", "keep"],
        default="drop",
        help="voices other than the target: dropped (reported) or kept as their own speakers",
    )
    p.add_argument(
        "--speaker-reference", help="a few seconds of the target voice (default: the voice with most speech)"
    )
    p.add_argument("--num-speakers", type=int, help="voices per recording, when known (default: found by clustering)")
    p.add_argument("--no-diarize", action="store_true", help="treat each recording as one speaker (no speaker model)")
    p.add_argument("--recheck-model", help="second Whisper model: flag clips whose transcript it disagrees with")
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

    if args.num_speakers is not None and args.num_speakers < 1:
        raise ConfigError(f"--num-speakers {args.num_speakers}: give 1 or more")
    plan = SpeakerPlan(
        name=args.speaker,
        others=args.other_speakers,
        diarize=not args.no_diarize,
        options=SpeakerOptions(num_speakers=args.num_speakers),
        reference=args.speaker_reference,
    )
    recheck = None
    if args.recheck_model:
        recheck = load_transcriber(
            args.recheck_model,
            device=args.device,
            compute_type=args.compute_type,
            language=args.language,
            batch_size=args.batch_size,
        )
    report = prepare_dataset(
        args.inputs,
        args.out,
        whisper_model=args.whisper_model,
        language=args.language,
        speaker=plan,
        device=args.device,
        compute_type=args.compute_type,
        batch_size=args.batch_size,
        limits=SegmentLimits(pad_s=args.pad),
        eval_fraction=args.eval_fraction,
        seed=args.seed,
        progress=not args.no_progress,
        recheck=recheck,
    )
    summary = {
        "out": args.out,
        **report["last_run"],
        "split": report["split"],
        "failed_inputs": report["failed_inputs"],
        "duplicates": report.get("duplicates", []),
        "review": report.get("review"),
        "hours_train": report["stats"]["train"]["hours"],
    }
    sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
