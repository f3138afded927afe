"""Every batch-size decision (utils/training/batch_size.py): the plan over ranks, the exact split, the
probe's search and the OOM back-off, the last two also in the real Trainer loop (tiny base, CPU).

A CUDA OOM is simulated by a train_step that raises torch.cuda.OutOfMemoryError for batches larger
than a "memory limit"; the GPU figures of the automatic micro-batch are in BENCHMARKS.md.
"""

from __future__ import annotations

import json
import logging
import types
from pathlib import Path

import pytest
import torch

from tests.conftest import read_demo_samples
from utils import gpt_train
from utils.errors import ConfigError
from utils.gpt_train import build_config, train
from utils.hparams import resolve
from utils.training import batch_size
from utils.training.batch_size import plan_batch, plan_micro_batch
from utils.training.gpt.model import ToolkitGPTTrainer
from utils.training.speed_options import SpeedOptions


def test_batch_plan_keeps_the_planned_effective_batch() -> None:
    one = plan_batch(3, 84, 1)
    two = plan_batch(3, 84, 2)
    assert (one.per_rank_grad_accum, one.effective_batch) == (84, 252)
    assert (two.per_rank_grad_accum, two.effective_batch, two.planned_effective_batch) == (42, 252, 252)
    odd = plan_batch(3, 84, 5)  # 84 does not divide by 5: rounds up, and says so
    assert (odd.per_rank_grad_accum, odd.effective_batch) == (17, 255)
    assert "planned 252" in batch_size.describe_plan(odd)
    assert "planned" not in batch_size.describe_plan(two)
    with pytest.raises(ConfigError):
        plan_batch(3, 0, 2)
    # What the 2-process test run does: 10 rows, micro-batch 2, grad_accum 2 -> 3 steps per epoch either way.
    assert plan_batch(2, 2, 2).optimizer_steps_per_epoch(10) == plan_batch(2, 2, 1).optimizer_steps_per_epoch(10) == 3
    assert plan_batch(3, 84, 2).optimizer_steps_per_epoch(10_001) == 40  # 5001 rows/rank, 1667 batches, 42 per step


@pytest.mark.parametrize(
    ("fits", "effective", "micro", "accum"),
    [
        (128, 252, 126, 2),  # the recipe's 3 x 84 on an H100: exact
        (100, 252, 84, 3),
        (300, 252, 252, 1),  # never above the effective batch
        (5, 252, 4, 63),
        (1, 252, 1, 252),
        (221, 252, 126, 2),  # the H200: 221 fit, 221 x 1 would have been 221 samples per step
        (128, 251, 1, 251),  # a prime: exact, with a warning naming 128 x 2 = 256
        (2, 2, 2, 1),
    ],
)
def test_plan_keeps_the_effective_batch(fits, effective, micro, accum):
    plan = plan_micro_batch(fits, effective)
    assert (plan.micro_batch, plan.accumulation) == (micro, accum)
    assert plan.micro_batch <= fits


def test_a_prime_effective_batch_stays_exact_and_the_warning_names_a_better_one(caplog):
    with caplog.at_level(logging.WARNING, logger="utils.training.batch_size"):
        plan = plan_micro_batch(128, 251)
    assert plan.effective == 251
    (line,) = [r.getMessage() for r in caplog.records]
    assert "micro-batch 1 x accumulation 251" in line and "--batch-size 128 --grad-accum 2" in line


@pytest.mark.parametrize(
    ("micro", "accum", "after"), [(126, 2, (63, 4)), (63, 4, (28, 9)), (3, 84, (1, 252)), (221, 1, (17, 13))]
)
def test_halving_after_oom_keeps_the_effective_batch_exact(micro, accum, after):
    config = types.SimpleNamespace(batch_size=micro, eval_batch_size=micro, toolkit={})
    trainer = types.SimpleNamespace(
        config=config,
        grad_accum_steps=accum,
        args=types.SimpleNamespace(rank=0),
        output_path=None,
        train_loader=object(),
        eval_loader=object(),
    )
    assert batch_size.halve_micro_batch(trainer) == after
    assert config.batch_size * trainer.grad_accum_steps == micro * accum
    assert config.toolkit["hparams"]["sources"]["batch_size"] == "halved after CUDA out of memory"


def _sized_trainer(micro: int, accum: int, *, world: int = 1, oom_backoff: bool = True):
    """A stand-in trainer: one real optimizer with gradients, the sizes, the recorded plan over ranks."""
    param = torch.nn.Parameter(torch.ones(3))
    param.grad = torch.full((3,), 2.0)
    model = types.SimpleNamespace(speed=SpeedOptions(oom_backoff=oom_backoff))
    config = types.SimpleNamespace(
        batch_size=micro,
        eval_batch_size=micro,
        toolkit={"distributed": plan_batch(micro, accum * world, world).as_dict()},
    )
    return types.SimpleNamespace(
        config=config,
        grad_accum_steps=accum,
        optimizer=[torch.optim.SGD([param], lr=0.1)],
        args=types.SimpleNamespace(rank=0),
        output_path=None,
        train_loader=object(),
        eval_loader=object(),
        _get_model=lambda: model,
    )


@pytest.mark.parametrize(("step", "skip"), [(0, 0), (1, 0), (2, 4), (5, 8)])
def test_back_off_after_oom_drops_the_window_and_says_where_the_epoch_goes_on(step, skip):
    """126 x 2 -> 63 x 4: an OOM in pass 5 (window 3 of the epoch) keeps the 2 windows done before it,
    8 batches of the new size; the interrupted window's gradients are dropped."""
    trainer = _sized_trainer(126, 2)
    assert batch_size.back_off_after_oom(trainer, step) == skip
    assert (trainer.config.batch_size, trainer.grad_accum_steps) == (63, 4)
    assert trainer.optimizer[0].param_groups[0]["params"][0].grad is None
    assert trainer.train_loader is None  # rebuilt with the new size


def test_oom_backoff_only_in_one_process_and_when_asked():
    assert batch_size.oom_backoff_enabled(_sized_trainer(4, 2))
    assert not batch_size.oom_backoff_enabled(_sized_trainer(4, 2, oom_backoff=False))
    assert not batch_size.oom_backoff_enabled(_sized_trainer(4, 2, world=2))  # one rank cannot re-batch alone
    # under data parallel the config counts the accumulation over all ranks: 4 x 2 per rank x 2 ranks
    halved = _sized_trainer(4, 2, world=2)
    assert batch_size.halve_micro_batch(halved) == (2, 4)
    assert halved.config.toolkit["grad_accum"] == 8 and halved.config.toolkit["distributed"]["per_rank_grad_accum"] == 4


def test_probe_steps_pass_the_data_parallel_guard_and_nothing_else_does():
    """Every optimizer step of a data-parallel run must follow a gradient averaging, except the micro-batch
    probe's (at LR 0, on each rank alone)."""
    from utils.training import distributed

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=0.1)
    before = distributed.sync_stats()["syncs"]
    with batch_size._probing():
        assert batch_size.probing()
        distributed._check_synced(optimizer)
    assert not batch_size.probing()
    assert distributed.sync_stats()["syncs"] == before
    with pytest.raises(RuntimeError, match="without averaged gradients"):
        distributed._check_synced(optimizer)


def _config(tiny_base: Path, out: Path, **cli):
    values = {
        "epochs": 2,
        "num_loader_workers": 0,
        "lr": 5e-5,
        "save_every_steps": 10_000,
        "keep_checkpoints": 1,
        "update_ratio_every": 0,
        **cli,
    }
    return build_config(resolve(dataset_hours=0.01, cli=values), tiny_base, output_path=out, language="en")


def _rows(demo_en: Path):
    return read_demo_samples(demo_en / "metadata_train.csv"), read_demo_samples(demo_en / "metadata_eval.csv")


def _fake_gpu_memory(monkeypatch, limit: int, fail_once_at: int | None = None) -> list[int]:
    """Training forward passes raise a CUDA OOM above ``limit`` clips (or once, at call ``fail_once_at``).

    Returns the batch sizes of the training passes that went through.
    """
    original = ToolkitGPTTrainer.train_step
    seen: list[int] = []
    calls = {"n": 0}

    def train_step(self, batch, criterion, optimizer_idx=None):
        n = len(batch["text_lengths"])
        if torch.is_grad_enabled():  # eval runs train_step under inference mode
            calls["n"] += 1
            if n > limit or calls["n"] == fail_once_at:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
            seen.append(n)
        return original(self, batch, criterion)

    monkeypatch.setattr(ToolkitGPTTrainer, "train_step", train_step)
    return seen


def _run_dir(out: Path) -> Path:
    (run_dir,) = [p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return run_dir


def test_oom_at_first_step_halves_micro_batch_and_trains_every_clip(tiny_base, demo_en, tmp_path, monkeypatch, caplog):
    seen = _fake_gpu_memory(monkeypatch, limit=2)
    config = _config(tiny_base, tmp_path, batch_size=4, grad_accum=2)
    train_rows, eval_rows = _rows(demo_en)
    assert len(train_rows) == 10
    with caplog.at_level(logging.WARNING, logger="utils.training.batch_size"):
        result = train(config, train_rows, eval_rows, progress=False, plots=False)
    assert (
        "CUDA out of memory at micro-batch 4: micro-batch 4 -> 2, gradient accumulation 2 -> 4 (effective batch 8 -> 8)"
        in caplog.text
    )
    # 10 clips a epoch in micro-batches of 2: 5 passes, optimizer steps after passes 4 and 5
    assert seen == [2] * 10
    assert result.optimizer_steps == 4 and result.total_steps == 10
    records = [json.loads(line) for line in (_run_dir(tmp_path) / "metrics.jsonl").read_text().splitlines()]
    assert [r["train_samples"] for r in records] == [10, 10]  # the failed pass of 4 is not counted
    saved = json.loads((_run_dir(tmp_path) / "config.json").read_text())
    assert (saved["batch_size"], saved["toolkit"]["grad_accum"]) == (2, 4)
    assert saved["toolkit"]["hparams"]["sources"]["batch_size"] == "halved after CUDA out of memory"


def test_oom_mid_epoch_redoes_the_window_and_continue_keeps_the_new_size(tiny_base, demo_en, tmp_path, monkeypatch):
    seen = _fake_gpu_memory(monkeypatch, limit=10, fail_once_at=4)  # 4th pass: 2nd batch of window 2
    config = _config(tiny_base, tmp_path, batch_size=2, grad_accum=2)
    config.toolkit.update(train_csv=str(demo_en / "metadata_train.csv"), eval_csv=str(demo_en / "metadata_eval.csv"))
    train_rows, eval_rows = _rows(demo_en)
    result = train(config, train_rows, eval_rows, progress=False, plots=False)
    # epoch 1: window 1 (2 + 2 clips, stepped), pass 3 (2 clips, gradients dropped with the window),
    # then micro-batch 1 x 4 from clip 5 of the re-batched epoch: 6 passes, steps after 4 and 6
    # epoch 2: 10 passes of 1 clip, steps after 4, 8, 10
    assert seen == [2, 2, 2] + [1] * 6 + [1] * 10
    assert result.optimizer_steps == 1 + 2 + 3
    run_dir = _run_dir(tmp_path)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["optimizer_step"] for r in records] == [3, 6]
    assert records[-1]["train_samples"] == 10  # every pass of epoch 2 counted in the throughput figures
    # --continue resumes with the halved sizes from config.json
    monkeypatch.undo()
    code = gpt_train.main(
        ["--continue", str(run_dir), "--epochs", "3", "--no-plots", "--test-sentences", "0", "--no-export"]
    )
    assert code == 0
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["optimizer_step"] == 9 and records[-1]["train_samples"] == 10


def test_oom_at_micro_batch_one_is_a_clear_error(tiny_base, demo_en, tmp_path, monkeypatch):
    _fake_gpu_memory(monkeypatch, limit=0)
    config = _config(tiny_base, tmp_path, batch_size=2, grad_accum=1)
    with pytest.raises(ConfigError, match="out of memory at micro-batch 1: use --speed low-vram"):
        train(config, *_rows(demo_en), progress=False, plots=False)


def test_no_oom_backoff_lets_the_error_through(tiny_base, demo_en, tmp_path, monkeypatch):
    _fake_gpu_memory(monkeypatch, limit=1)
    config = _config(tiny_base, tmp_path, batch_size=2, grad_accum=1)
    config.toolkit["speed"] = {**SpeedOptions().to_dict(), "oom_backoff": False, "num_workers": 0}
    with pytest.raises(torch.cuda.OutOfMemoryError):
        train(config, *_rows(demo_en), progress=False, plots=False)


def test_automatic_micro_batch_probes_without_changing_weights(tiny_base, demo_en, tmp_path, monkeypatch, caplog):
    """The sizing path on the CPU: fake GPU memory report, real probe steps on the tiny model."""
    fake_cuda = types.SimpleNamespace(
        is_available=lambda: True,
        mem_get_info=lambda device=None: (8 << 30, 16 << 30),
        memory_reserved=lambda device=None: 0,
        empty_cache=lambda: None,
        reset_peak_memory_stats=lambda: None,
        get_device_properties=lambda device=None: types.SimpleNamespace(name="Fake GPU", total_memory=16 << 30),
    )
    monkeypatch.setattr(batch_size, "_cuda", lambda: fake_cuda)
    probes: dict[str, object] = {}

    def fake_search(probe, budget, *, max_batch, margin=0.9, candidates=None):
        gpt = probes["model"].xtts.gpt
        before = [p.detach().clone() for p in gpt.parameters()]
        for b in (1, 2, 4, max_batch):
            probe(b)
        probes.update(
            budget=budget,
            max_batch=max_batch,
            candidates=candidates,
            unchanged=all(torch.equal(a, p) for a, p in zip(before, gpt.parameters())),
        )
        return 4  # "4 clips fit"

    monkeypatch.setattr(batch_size, "auto_micro_batch", fake_search)
    original_init = ToolkitGPTTrainer.__init__

    def init(self, config):
        original_init(self, config)
        probes["model"] = self

    monkeypatch.setattr(ToolkitGPTTrainer, "__init__", init)
    config = _config(tiny_base, tmp_path, grad_accum=4, epochs=1)  # table micro-batch 3 x 4 = 12
    with caplog.at_level(logging.INFO, logger="utils.training.batch_size"):
        result = train(config, *_rows(demo_en), progress=False, plots=False)
    assert probes["budget"] == 8 << 30 and probes["max_batch"] == 12
    assert probes["candidates"] == [1, 2, 3, 4, 6, 12]  # only the exact splits of 12 are probed
    assert probes["unchanged"]  # probe steps run at LR 0
    assert "micro-batch 4 x accumulation 3 = effective batch 12 (asked 12)" in caplog.text
    saved = json.loads((_run_dir(tmp_path) / "config.json").read_text())
    assert saved["toolkit"]["micro_batch_plan"] == {
        "micro_batch": 4,
        "grad_accum": 3,
        "effective_batch": 12,
        "requested_effective_batch": 12,
        "fits": 4,
    }
    assert (saved["batch_size"], saved["toolkit"]["grad_accum"]) == (4, 3)
    assert result.total_steps == 3 and result.optimizer_steps == 1  # 10 clips: passes of 4, 4, 2; one step
    # a second run on the same GPU, data and model takes the probe's result from the clip cache
    monkeypatch.setattr(batch_size, "auto_micro_batch", lambda *a, **k: pytest.fail("must not probe again"))
    caplog.clear()
    config = _config(tiny_base, tmp_path, grad_accum=4, epochs=1)
    with caplog.at_level(logging.INFO, logger="utils.training.batch_size"):
        train(config, *_rows(demo_en), progress=False, plots=False)
    assert "4 clips fit (measured by an earlier run" in caplog.text
    assert "micro-batch 4 x accumulation 3 = effective batch 12" in caplog.text
    # another loader worker count does not change a step's memory: still no probe
    caplog.clear()
    config = _config(tiny_base, tmp_path, grad_accum=4, epochs=1, num_loader_workers=1)
    with caplog.at_level(logging.INFO, logger="utils.training.batch_size"):
        train(config, *_rows(demo_en), progress=False, plots=False)
    assert "4 clips fit (measured by an earlier run" in caplog.text
    # another GPU: probed again
    fake_cuda.get_device_properties = lambda device=None: types.SimpleNamespace(name="Other GPU", total_memory=16 << 30)
    monkeypatch.setattr(
        batch_size, "auto_micro_batch", lambda probe, budget, *, max_batch, margin=0.9, candidates=None: 2
    )
    caplog.clear()
    config = _config(tiny_base, tmp_path, grad_accum=4, epochs=1)
    with caplog.at_level(logging.INFO, logger="utils.training.batch_size"):
        train(config, *_rows(demo_en), progress=False, plots=False)
    assert "micro-batch 2 x accumulation 6 = effective batch 12" in caplog.text


def test_explicit_batch_size_turns_automatic_sizing_off(tiny_base, demo_en, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(batch_size, "autosize_micro_batch", lambda trainer: pytest.fail("must not probe"))
    config = _config(tiny_base, tmp_path, batch_size=2, grad_accum=1, epochs=1)
    with caplog.at_level(logging.INFO, logger="utils.training.batch_size"):
        train(config, *_rows(demo_en), progress=False, plots=False)
    assert "micro-batch 2 from --batch-size (automatic sizing off)" in caplog.text


def _fake_cuda_memory(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """torch.cuda's memory calls for auto_micro_batch without a GPU; a probe sets ``["peak"]`` (bytes)."""
    mem = {"peak": 0}
    for name in ("synchronize", "empty_cache", "reset_peak_memory_stats"):
        monkeypatch.setattr(torch.cuda, name, lambda: None)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda: mem["peak"])
    return mem


def test_auto_micro_batch_search(monkeypatch: pytest.MonkeyPatch) -> None:
    mem = _fake_cuda_memory(monkeypatch)
    sizes: list[int] = []

    def probe(b: int) -> None:  # 4.2 GiB fixed + 60 MiB per clip, OOM above 40 clips
        sizes.append(b)
        if b > 40:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        mem["peak"] = int((4.2 + 0.06 * b) * 2**30)

    b = batch_size.auto_micro_batch(probe, 7 * 2**30, max_batch=64)
    assert 4.2 + 0.06 * b <= 0.9 * 7  # fits with the 10% margin
    assert b >= 28  # and is not far below the largest that fits (35)
    assert sizes[:2] == [12, 12] and 48 in sizes  # never 1: a compiled step would specialise on it
    assert 1 not in sizes


@pytest.mark.parametrize(
    ("effective", "limit_clips", "chosen", "most_probes"),
    [
        (252, 221, 126, 6),  # the H200: 12, 12, then 36, 84, 126, 252 (earlier: 13 probes)
        (252, 100, 84, 6),
        (251, 128, 128, 16),  # a prime: 1 and 251 only, so the sizes between are searched for the warning
    ],
)
def test_auto_micro_batch_probes_only_the_exact_splits(monkeypatch, effective, limit_clips, chosen, most_probes):
    mem = _fake_cuda_memory(monkeypatch)
    sizes: list[int] = []

    def probe(b: int) -> None:  # 8 GiB fixed + 0.5 GiB per clip: limit_clips fit in 90% of the budget
        sizes.append(b)
        mem["peak"] = int((8 + 0.5 * b) * 2**30)

    budget = int((8 + 0.5 * limit_clips) * 2**30 / 0.9) + 1
    divisors = [d for d in range(1, effective + 1) if effective % d == 0]
    b = batch_size.auto_micro_batch(probe, budget, max_batch=effective, candidates=divisors)
    assert b >= chosen - max(1, chosen // 8) and b <= limit_clips
    if effective % chosen == 0:
        assert b == chosen and set(sizes) <= set(divisors)
    first = 12 if effective % 12 == 0 else 2  # the compiling probe: a split of at least 12 clips where there is one
    assert len(sizes) <= most_probes and sizes[:2] == [first, first] and 1 not in sizes


def test_auto_micro_batch_compiles_at_two_clips_when_twelve_do_not_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    """A small card: the probe at 12 clips runs out of memory, 2 fit, and the split in between is found."""
    mem = _fake_cuda_memory(monkeypatch)
    sizes: list[int] = []

    def probe(b: int) -> None:  # 4 GiB fixed + 0.25 GiB per clip: 9 clips within 90% of 7 GiB
        sizes.append(b)
        if b > 10:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        mem["peak"] = int((4 + 0.25 * b) * 2**30)

    divisors = [d for d in range(1, 253) if 252 % d == 0]
    assert batch_size.auto_micro_batch(probe, 7 * 2**30, max_batch=252, candidates=divisors) == 9
    assert sizes[:3] == [12, 2, 2] and max(sizes) == 12 and 1 not in sizes


def test_auto_micro_batch_falls_back_to_one_clip_when_two_do_not_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_cuda_memory(monkeypatch)
    sizes: list[int] = []

    def probe(b: int) -> None:
        sizes.append(b)
        if b > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    assert batch_size.auto_micro_batch(probe, 8 * 2**30, candidates=[1, 2, 3, 6]) == 1
    assert sizes == [2]
