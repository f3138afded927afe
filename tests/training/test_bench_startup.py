"""The bench's start-up attribution: stack samples per function and torch.compile's own facts."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench import gpt_train
from bench.stack_sampler import StackSampler


def _wait_in_outer(seconds: float) -> None:
    time.sleep(seconds)


def _spin_in_inner(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def _outer() -> None:
    _wait_in_outer(0.3)
    _spin_in_inner(0.15)


def test_stack_sampler_charges_wall_time_to_the_functions_on_the_stack(tmp_path: Path) -> None:
    sampler = StackSampler(interval_s=0.002).start()
    _outer()
    summary = sampler.stop()
    inclusive = dict(summary["inclusive"])
    leaf = dict(summary["leaf"])
    name = "training/test_bench_startup.py:"
    assert summary["samples"] > 50
    assert inclusive[name + "_outer"] == pytest.approx(0.45, abs=0.08)
    assert inclusive[name + "_wait_in_outer"] == pytest.approx(0.30, abs=0.06)  # a sleep counts (the GIL is free)
    assert inclusive[name + "_spin_in_inner"] == pytest.approx(0.15, abs=0.06)
    assert leaf[name + "_spin_in_inner"] == pytest.approx(0.15, abs=0.06)
    assert name + "_outer" not in leaf  # it only calls
    out = tmp_path / "stacks.txt"
    sampler.write_collapsed(out)
    lines = out.read_text().splitlines()
    assert sum(int(line.rsplit(" ", 1)[1]) for line in lines) == summary["samples"]
    assert any(f"{name}_outer;{name}_spin_in_inner" in line for line in lines)  # outermost first


def test_compile_facts_reads_torchs_counters_and_phase_times(monkeypatch: pytest.MonkeyPatch) -> None:
    from torch._dynamo import utils as dynamo_utils

    text = (
        "TorchDynamo compilation metrics:\nFunction, Runtimes (s)\n"
        "_compile.compile_inner, 12.5\nbytecode_tracing, 2.25\nbad, x\n"
    )
    monkeypatch.setattr(dynamo_utils, "compile_times", lambda repr="str", aggregate=False: text)
    monkeypatch.setattr(dynamo_utils, "counters", {"inductor": {"fxgraph_cache_hit": 3}, "empty": {}})
    facts = gpt_train.compile_facts()
    assert facts["counters"] == {"inductor": {"fxgraph_cache_hit": 3}}
    assert facts["phases_s"] == [("_compile.compile_inner", 12.5), ("bytecode_tracing", 2.25)]
