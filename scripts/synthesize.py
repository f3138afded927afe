"""Speak text with a fine-tuned XTTS v2 (export folder, run folder or checkpoint).

    python scripts/synthesize.py --model my_voice --language en --text "Hello there." --out hello.wav
    python scripts/synthesize.py --model my_voice --texts lines.txt --out wavs/      # one wav per line
    python scripts/synthesize.py --model runs/xtts_ft_... --speaker-wav me.wav --text "..." --out x.wav

An export folder carries its reference clips; --speaker-wav overrides them. Long text is split at
sentence ends into chunks of the language's character limit. The written paths go to stdout.

Generation guard (on by default): each chunk may last at most
max(2 s, 1 s + margin * letters / speaker's letters per second) (margin 2), so a model that never
emits its stop token stops soon after the text ends instead of at about 28 s. The output is then
checked (stop token, repeated audio codes, noise after the last word, and with an ASR model
words after the text's last word), trimmed at the end of the last word, and generated again with
another seed when a check fails (--retries). Every decision goes to NAME.json next to NAME.wav.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse

from utils import cli
from utils.errors import ConfigError


def guard_options(args: argparse.Namespace, cls: type) -> object:
    """The GuardOptions the command line asks for (checked: one line and exit 2 when wrong)."""
    if args.retries < 0 or args.cap_margin <= 0 or (args.letters_per_s is not None and args.letters_per_s <= 0):
        raise ConfigError("--retries must be >= 0, --cap-margin and --letters-per-s > 0")
    return cls(
        enabled=not args.no_guard,
        retries=args.retries,
        letters_per_s=args.letters_per_s,
        margin=args.cap_margin,
        trim=not args.no_trim,
        use_asr=not args.no_asr_check,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="export folder, run folder or checkpoint .pth")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", help="the text to speak")
    src.add_argument("--texts", type=Path, help="a file with one text per line ('#' comments)")
    p.add_argument("--out", type=Path, required=True, help="wav path (one text) or folder (several)")
    p.add_argument("--language", help="language code (default: the language the model was trained on)")
    p.add_argument("--speaker-wav", type=Path, nargs="+", help="reference clip(s) of the voice")
    s = p.add_argument_group("sampling (default: the model config's values)")
    s.add_argument("--temperature", type=float)
    s.add_argument("--top-k", type=int)
    s.add_argument("--top-p", type=float)
    s.add_argument("--repetition-penalty", type=float)
    s.add_argument("--length-penalty", type=float)
    s.add_argument("--speed", type=float, default=1.0)
    s.add_argument("--max-new-tokens", type=int, help="upper bound on audio tokens per chunk (~21.5 per second)")
    s.add_argument("--seed", type=int, help="seed for reproducible sampling")
    s.add_argument("--no-split", action="store_true", help="do not split long text into sentences")
    g = p.add_argument_group("generation guard")
    g.add_argument(
        "--no-guard", action="store_true", help="the stock behaviour: the model's token cap, no checks, no trim"
    )
    g.add_argument(
        "--retries", type=int, default=1, help="new attempts with another seed when a check fails (default 1)"
    )
    g.add_argument(
        "--letters-per-s", type=float, help="speaking rate for the length cap (default: the model's speaker)"
    )
    g.add_argument(
        "--cap-margin", type=float, default=2.0, help="length cap = margin x the text's expected duration (default 2)"
    )
    g.add_argument("--no-trim", action="store_true", help="keep what follows the last word (the checks still run)")
    g.add_argument("--no-asr-check", action="store_true", help="do not align faster-whisper word times with the text")
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available")
    args = p.parse_args(argv)
    from utils.fs import check_writable_dir, check_writable_file

    (check_writable_file if args.out.suffix.lower() == ".wav" else check_writable_dir)(args.out, "--out")
    cli.setup_logging()

    from utils.after.guard import GuardOptions
    from utils.after.synthesize import SynthesisOptions, load_model, read_texts, synthesize_to_files

    texts = [args.text] if args.text is not None else read_texts(args.texts)
    if len(texts) > 1 and args.out.suffix.lower() == ".wav":
        raise ConfigError(f"{len(texts)} texts need a folder for --out, not {args.out}")
    options = SynthesisOptions(
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        length_penalty=args.length_penalty,
        speed=args.speed,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        split_sentences=not args.no_split,
        guard=guard_options(args, GuardOptions),
    )
    loaded = load_model(args.model, device=args.device)
    paths = synthesize_to_files(
        loaded, texts, args.out, language=args.language, speaker_wav=args.speaker_wav, options=options
    )
    sys.stdout.write("".join(f"{p}\n" for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
