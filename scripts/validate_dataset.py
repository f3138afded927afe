"""Check every row of a coqui-format metadata CSV before training (the preflight).

    python scripts/validate_dataset.py dataset/metadata_train.csv --language en \
        --vocab base/vocab.json --report preflight_report.json

Exit codes (the same for every toolkit command): 0 done (excluded rows, if any, are listed with
their reasons); 2 a problem you can fix, named in one line (no usable row, an unreadable CSV, an
unwritable --report; with --strict also any excluded row); 1 an unexpected error (a bug: please
report it with the traceback); 130 interrupted (Ctrl-C).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse

from utils import cli
from utils.data.preflight import MAX_AUDIO_S, MAX_TEXT_TOKENS, MIN_AUDIO_S, check_scripts, run_preflight
from utils.errors import DataError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("csv", help="metadata CSV (audio_file|text|speaker_name)")
    p.add_argument("--language", default="en", help="language code the text is tokenized as (default: en)")
    p.add_argument("--vocab", help="XTTS vocab.json; without it the [UNK] and token-length checks are skipped")
    p.add_argument("--dataset-root", help="folder audio paths are relative to (default: the CSV's folder)")
    p.add_argument("--report", help="write the JSON report here")
    p.add_argument("--min-audio-s", type=float, default=MIN_AUDIO_S)
    p.add_argument("--max-audio-s", type=float, default=MAX_AUDIO_S)
    p.add_argument("--max-text-tokens", type=int, default=MAX_TEXT_TOKENS)
    p.add_argument("--workers", type=int, help="processes for the audio checks (default: 2)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--strict", action="store_true", help="exit 2 when any row is excluded")
    p.add_argument(
        "--allow-mixed-script",
        action="store_true",
        help="keep rows mostly outside the language's script (flagged) and do not refuse more than 20%% of "
        "letters outside it",
    )
    args = p.parse_args(argv)
    if args.report:
        from utils.fs import check_writable_file

        check_writable_file(args.report, "--report")  # before any slow work
    cli.setup_logging()

    report = run_preflight(
        args.csv,
        language=args.language,
        vocab_path=args.vocab,
        dataset_root=args.dataset_root,
        min_audio_s=args.min_audio_s,
        max_audio_s=args.max_audio_s,
        max_text_tokens=args.max_text_tokens,
        workers=args.workers,
        progress=not args.no_progress,
        allow_mixed_script=args.allow_mixed_script,
    )
    if args.report:
        report.write_json(args.report)
    sys.stderr.write("\n".join(report.summary_lines()) + "\n")
    check_scripts([report])  # the same refusal as training, after the report is written
    if report.total == 0 or report.kept == 0:
        from utils.data.preflight import check_usable

        check_usable(report, max_excluded_share=1.0)  # raises the same one-line error as training
    if args.strict and report.excluded:
        raise DataError(f"{len(report.excluded)} of {report.total} rows excluded (--strict); see the reasons above")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
