"""The data-parallel scaling benchmark (bench/ddp.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.ddp import ScalingSpec, run_scaling, samples_for


def test_each_worker_gets_warmup_plus_steps_batches(demo_en: Path) -> None:
    spec = ScalingSpec(base_model="unused", dataset=str(demo_en), batch_size=3, steps=5, warmup=2)
    rows = samples_for(spec, 2)
    assert len(rows) == (5 + 2) * 3 * 2  # 42 rows from the 10 demo rows, repeated in order
    assert rows[10]["audio_file"] == rows[0]["audio_file"] and rows[0]["language"] == "en"


@pytest.mark.slow
def test_scaling_report_on_cpu(tiny_base: Path, demo_en: Path, tmp_path: Path) -> None:
    spec = ScalingSpec(base_model=str(tiny_base), dataset=str(demo_en), batch_size=2, steps=3, warmup=1)
    report = run_scaling(spec, [1, 2], tmp_path)
    one, two = report["results"]
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert one["samples_per_s"] > 0 and two["samples_per_s"] > 0 and one["speedup"] == 1.0
    assert one["grad_allreduce_s_per_step"] == 0.0 and two["grad_allreduce_s_per_step"] > 0
    assert two["grad_elements"] > 1_000_000  # the tiny GPT's gradients were averaged
    assert 0 < two["rank0_cpu_s_per_step"] <= two["step_s"] * 1.5
