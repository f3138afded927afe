"""Data-parallel scaling: training samples/s on 1 and N GPUs (the 2-GPU figure).

    python scripts/bench_ddp.py --base-model XTTS_DIR --dataset DATA_DIR --gpus 1,2 --batch-size 3 --out ddp.json
    python scripts/bench_ddp.py --full-size-random /tmp/xtts_random --gpus 1,2 --batch-size 3 --out ddp.json
    python scripts/bench_ddp.py --tiny --gpus 1,2 --steps 6 --warmup 2 --out ddp_cpu.json   # CPU smoke run

Each world size runs in fresh worker processes with the toolkit's real Trainer loop (same
micro-batch per worker, no evaluation, no checkpoints); see bench/ddp.py. The JSON
lists samples/s, seconds per step, speedup and efficiency per world size.
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils import cli


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-model", type=Path, help="XTTS v2 folder (model.pth, dvae.pth, vocab.json, ...)")
    p.add_argument("--tiny", action="store_true", help="use (and build once) the tiny demo base in .cache/tiny_base")
    p.add_argument(
        "--full-size-random",
        type=Path,
        metavar="DIR",
        help="build once in DIR (and use) a random base with XTTS v2's GPT size; no weights needed",
    )
    p.add_argument("--dataset", type=Path, default=Path(__file__).resolve().parents[1] / "demo" / "en")
    p.add_argument("--language", default="en")
    p.add_argument("--gpus", default="1,2", help="world sizes to time, comma-separated (default 1,2)")
    p.add_argument("--batch-size", type=int, default=3, help="micro-batch per worker")
    p.add_argument("--steps", type=int, default=20, help="timed micro-batches per worker")
    p.add_argument("--warmup", type=int, default=4, help="untimed micro-batches first")
    p.add_argument("--num-workers", type=int, default=4, help="data loader workers per GPU worker")
    p.add_argument("--workdir", type=Path, default=Path("runs") / "bench_ddp")
    p.add_argument("--out", type=Path, required=True, help="JSON file to write")
    a = p.parse_args(argv)
    cli.setup_logging()

    from bench.ddp import ScalingSpec, make_full_size_random_base, run_scaling
    from utils.errors import ConfigError
    from utils.finetune import FineTune, RunConfig

    if a.full_size_random:
        a.base_model = make_full_size_random_base(a.full_size_random)
    if not (a.base_model or a.tiny):
        raise ConfigError("give --base-model XTTS_DIR, --full-size-random DIR, or --tiny for a CPU smoke run")
    base = FineTune(RunConfig.build(base_model=a.base_model, demo=a.tiny or None, progress=False)).locate_base()
    spec = ScalingSpec(
        base_model=str(base.root),
        dataset=str(a.dataset),
        language=a.language,
        batch_size=a.batch_size,
        steps=a.steps,
        warmup=a.warmup,
        num_loader_workers=a.num_workers,
    )
    sizes = [int(x) for x in a.gpus.split(",") if x.strip()]
    report = run_scaling(spec, sizes, a.workdir)  # nccl with CUDA, gloo without
    a.out.write_text(json.dumps(report, indent=2), encoding="utf-8")
    for row in report["results"]:
        sys.stdout.write(
            f"{row['world_size']} worker(s): {row['samples_per_s']} samples/s, speedup {row['speedup']}x "
            f"({row['device']})\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
