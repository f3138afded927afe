"""Export a fine-tuned XTTS v2 run (or one checkpoint) into a compact inference folder.

    python scripts/export_model.py runs/xtts_ft_2026... --out my_voice
    python scripts/export_model.py runs/xtts_ft_2026.../checkpoint_5000.pth --out my_voice_5000

The folder holds model.pth (no optimizer, DVAE or training-only keys), config.json (every language
of the model), vocab.json (the extended one for a new language), reference/*.wav (speaker clips
chosen from the training data) and README.txt. It loads with Coqui's own Xtts API. The last line
of the output is the folder.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse

from utils import cli


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", type=Path, help="run folder or a checkpoint .pth inside one")
    p.add_argument("--out", type=Path, help="folder to create (default: <run>/export)")
    p.add_argument(
        "--which", choices=("best", "last"), default="best", help="for a run folder: best (lowest eval loss) or last"
    )
    p.add_argument(
        "--speaker-wav", type=Path, nargs="+", help="reference clip(s) to ship (default: chosen automatically)"
    )
    p.add_argument("--num-references", type=int, default=3, help="clips to choose automatically (default 3)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    args = p.parse_args(argv)
    if args.out is not None:
        from utils.fs import check_writable_dir

        check_writable_dir(args.out, "--out")  # before the model is loaded
    cli.setup_logging()

    from utils.after.export import export_model
    from utils.runs import resolve_checkpoint

    run_dir, ckpt = resolve_checkpoint(args.source, which=args.which)
    out = args.out or run_dir / "export"
    result = export_model(
        ckpt,
        out,
        run_dir=run_dir,
        references=args.speaker_wav,
        num_references=args.num_references,
        overwrite=args.overwrite or args.out is None,
    )
    sys.stderr.write(
        f"exported {ckpt.name}: {result.size_text()}, languages {', '.join(result.languages)}, "
        f"{len(result.references)} reference clip(s)\n"
    )
    sys.stdout.write(f"{result.out_dir}\n")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
