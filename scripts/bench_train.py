"""Benchmark Coqui's stock XTTS GPT training step against the toolkit's, in one process.

Example (one GPU, the reference workload):
    python scripts/bench_train.py --workdir /tmp/bench --out bench.json
    python scripts/bench_train.py --workdir /tmp/bench --phase lowvram --out lowvram.json
Tiny CPU smoke run:
    python scripts/bench_train.py --workdir /tmp/b --size tiny --device cpu --clips 8 --steps 2 \
        --warmup 1 --stock fp32:2 --ours 2 --no-ladder --workers 0 --vocab-size 300 --out b.json
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import json

import utils.cli


def _stock(text: str) -> list[tuple[str, int]]:
    out = []
    for part in filter(None, text.split(",")):
        precision, _, bsz = part.partition(":")
        if precision not in ("fp32", "bf16") or not bsz.isdigit():
            raise argparse.ArgumentTypeError(f"stock variant {part!r}: use PRECISION:BATCH, e.g. fp32:3,bf16:32")
        out.append((precision, int(bsz)))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True, help="folder for the synthetic clips, vocab and caches")
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--phase", choices=["main", "lowvram"], default="main")
    p.add_argument("--size", choices=["full", "tiny"], default="full")
    p.add_argument("--device", default="cuda")
    p.add_argument("--clips", type=int, default=512)
    p.add_argument("--min-s", type=float, default=2.0)
    p.add_argument("--max-s", type=float, default=11.0)
    p.add_argument("--chars-per-s", type=float, default=14.0)
    p.add_argument("--vocab-size", type=int, default=6681)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--stock", type=_stock, default=_stock("fp32:3,bf16:32"), help="stock variants, e.g. fp32:3,bf16:32")
    p.add_argument("--ours", default="64,128", help="micro-batches for ours with all defaults")
    p.add_argument("--ladder-batch", type=int, default=32)
    p.add_argument("--no-ladder", action="store_true", help="skip the one-lever-at-a-time ladder")
    p.add_argument("--compile-rung", action="store_true", help="also time ours + torch.compile")
    p.add_argument("--profile", action="store_true", help="profile 3 steps of ours (top kernels)")
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--lowvram-budget-gib", type=float, default=7.0)
    p.add_argument("--lowvram-accum", type=int, default=4)
    p.add_argument("--lowvram-micro", type=int, default=0, help="fixed micro-batch for --phase lowvram (0: auto)")
    p.add_argument("--progress", action="store_true")
    a = p.parse_args(argv)
    utils.cli.setup_logging()

    from bench.train_step import BenchSpec, run_lowvram, run_main

    spec = BenchSpec(
        workdir=a.workdir,
        size=a.size,
        clips=a.clips,
        min_s=a.min_s,
        max_s=a.max_s,
        chars_per_s=a.chars_per_s,
        vocab_size=a.vocab_size,
        steps=a.steps,
        warmup=a.warmup,
        stock=a.stock,
        ours_batches=[int(x) for x in a.ours.split(",") if x],
        ladder_batch=a.ladder_batch,
        ladder=not a.no_ladder,
        compile_rung=a.compile_rung,
        profile=a.profile,
        workers=a.workers,
        lowvram_budget_gib=a.lowvram_budget_gib,
        lowvram_accum=a.lowvram_accum,
        lowvram_micro=a.lowvram_micro,
        device=a.device,
        progress=a.progress,
    )
    result = run_lowvram(spec) if a.phase == "lowvram" else run_main(spec)
    prof = result.pop("profile", None)
    if prof:
        Path(a.out).with_suffix(".profile.txt").write_text(
            f"{json.dumps({k: v for k, v in prof.items() if not k.endswith('table')})}\n"
            f"{prof['cuda_table']}\n{prof['cpu_table']}\n"
        )
        result["profile"] = {k: v for k, v in prof.items() if not k.endswith("table")}
    Path(a.out).write_text(json.dumps(result, indent=2, default=str))
    sys.stdout.write(
        json.dumps({k: result.get(k) for k in ("best", "parity") if k in result} or result, default=str) + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(utils.cli.run(main))
