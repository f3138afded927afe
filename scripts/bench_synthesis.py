"""Wall time of synthesis with the guard's text-based length cap against the stock fixed cap.

    python scripts/bench_synthesis.py --model runs/RUN/export                 # a model you have
    python scripts/bench_synthesis.py --demo                                  # the tiny demo run, built here

Each sentence is spoken twice with the same seed and reference: once with the generation guard
(cap from the text and the speaker's rate) and once as before it existed (``--no-guard``: the
model's own cap, ``gpt_max_audio_tokens``). An untrained or badly fine-tuned model never emits
its stop token, so it runs to whichever cap applies; the table shows tokens, audio seconds and
wall seconds per sentence, and the speed-up. One JSON line per measurement goes to stdout.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import json
import tempfile
import time

from utils import cli
from utils.errors import ConfigError

SENTENCES = ("Sphinx of black quartz, judge my vow.", "Hello there.")


def _demo_model(out: Path) -> Path:
    from utils.gpt_train import main as train

    if train(["--demo", "--epochs", "1", "--test-sentences", "0", "--output-path", str(out)]) != 0:
        raise ConfigError("the demo run failed; see the log above")
    (run,) = [p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return run / "export"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", type=Path, help="export folder, run folder or checkpoint")
    src.add_argument("--demo", action="store_true", help="train the tiny demo run first and use its export")
    p.add_argument("--text", action="append", help="a sentence (repeatable; default two demo sentences)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = p.parse_args(argv)
    cli.setup_logging()

    import torch

    from utils.after.guard import GuardOptions
    from utils.after.synthesize import SynthesisOptions, load_model, synthesize_with_report

    torch.set_num_threads(max(1, torch.get_num_threads()))
    model_dir = _demo_model(Path(tempfile.mkdtemp(prefix="bench_synth_"))) if args.demo else args.model
    loaded = load_model(model_dir, device=args.device)
    synthesize_with_report(loaded, "Warm up.", options=SynthesisOptions(seed=0, max_new_tokens=4))  # caches, kernels
    rows = []
    for text in args.text or SENTENCES:
        for label, guard in (("guard", GuardOptions()), ("fixed cap", GuardOptions(enabled=False))):
            opts = SynthesisOptions(seed=0, guard=guard)
            start = time.perf_counter()
            result = synthesize_with_report(loaded, text, options=opts)
            wall = time.perf_counter() - start
            row = {
                "text": text,
                "mode": label,
                "max_new_tokens": sum(c.max_new_tokens for c in result.chunks),
                "audio_s": round(result.duration_s, 2),
                "wall_s": round(wall, 2),
                "flags": result.flags,
            }
            rows.append(row)
            sys.stdout.write(json.dumps(row) + "\n")
    sys.stdout.write("\n| text | mode | max_new_tokens | audio s | wall s | speed-up |\n|---|---|---|---|---|---|\n")
    for guard_row, fixed_row in zip(rows[::2], rows[1::2]):
        for row in (guard_row, fixed_row):
            speedup = fixed_row["wall_s"] / max(guard_row["wall_s"], 1e-9) if row is guard_row else 1.0
            sys.stdout.write(
                f"| {row['text']} | {row['mode']} | {row['max_new_tokens']} | {row['audio_s']} | "
                f"{row['wall_s']} | {speedup:.1f}x |\n"
            )
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
