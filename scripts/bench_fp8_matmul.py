#!/usr/bin/env python3
"""Time one GPT2 block's four linear layers, forward and backward, in bf16 and in FP8 (utils.training.fp8).

The shapes of XTTS v2's GPT at a default micro-batch: 37,888 rows (126 clips of about 300
positions), width 1,024, MLP 4,096. Each variant runs eager and under ``torch.compile`` (which fuses
the scaling and casts into their neighbours, as in training). Prints and writes JSON:

    python scripts/bench_fp8_matmul.py --out fp8_matmul.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Callable

if __name__ == "__main__":
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch

from utils import cli
from utils.training.fp8 import fp8_matmul

logger = logging.getLogger("bench_fp8_matmul")

# (in, out) of c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj
SHAPES = ((1024, 3072), (1024, 1024), (1024, 4096), (4096, 1024))


def _layers(matmul: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], weights: list[torch.Tensor]) -> Callable:
    """The four products on inputs of their widths; a scalar to call backward on."""

    def run(inputs: dict[int, torch.Tensor]) -> torch.Tensor:
        return sum(matmul(inputs[w.shape[0]], w).float().square().mean() for w in weights)

    return run


def _bf16(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return x.to(torch.bfloat16) @ w.to(torch.bfloat16)


def _time(fn: Callable, x: dict[int, torch.Tensor], steps: int) -> float:
    for _ in range(3):
        fn(x).backward()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        fn(x).backward()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / steps


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=37_888)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--out", type=Path)
    a = p.parse_args(argv)
    cli.setup_logging()
    if not torch.cuda.is_available():
        logger.error("no CUDA GPU: this benchmark times GPU kernels")
        return 2
    dev = torch.device("cuda")
    torch.manual_seed(0)
    weights = [(torch.randn(k, n, device=dev) * k**-0.5).requires_grad_() for k, n in SHAPES]
    x = {k: torch.randn(a.rows, k, device=dev, dtype=torch.bfloat16, requires_grad=True) for k in (1024, 4096)}
    flops = sum(6 * a.rows * k * n for k, n in SHAPES)  # forward + two backward products
    result: dict[str, Any] = {"rows": a.rows, "shapes": SHAPES, "gpu": torch.cuda.get_device_name(dev)}
    for name, mm in (("bf16", _bf16), ("fp8", fp8_matmul)):
        for compiled in (False, True):
            fn = _layers(mm, weights)
            if compiled:
                fn = torch.compile(fn)
            s = _time(fn, x, a.steps)
            key = f"{name}{'_compiled' if compiled else ''}"
            result[key] = {"ms": round(s * 1e3, 3), "tflops": round(flops / s / 1e12, 1)}
            logger.info("%s: %.3f ms per block's linears (%.0f TFLOP/s)", key, s * 1e3, flops / s / 1e12)
    result["speedup_compiled"] = round(result["bf16_compiled"]["ms"] / result["fp8_compiled"]["ms"], 3)
    text = json.dumps(result, indent=2)
    if a.out:
        a.out.write_text(text)
    sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
