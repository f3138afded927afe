"""Every schedule of the LR bridge: the LR it gives at given optimizer steps, and the config checks."""

import math

import pytest
import torch

from utils.training.lr_schedule import (
    LRBridge,
    ScheduleSpec,
    check_schedule,
    optimizer_steps_per_epoch,
    sample_steps,
)


def _bridge(**kw) -> LRBridge:
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=1.0)
    return LRBridge(opt, ScheduleSpec(**kw))


def _run(bridge: LRBridge, steps: int) -> list[float]:
    """The LR the optimizer holds before each of ``steps`` optimizer steps."""
    seen = []
    for _ in range(steps):
        seen.append(bridge.optimizer.param_groups[0]["lr"])
        bridge.step()
    return seen


def test_cosine_with_warmup_at_given_steps() -> None:
    bridge = _bridge(name="cosine", base_lr=1e-4, min_lr=1e-6, warmup_steps=10, total_steps=110)
    lrs = _run(bridge, 200)
    assert lrs[0] == pytest.approx(1e-5)  # warmup: (0 + 1) / 10 of the peak
    assert lrs[9] == pytest.approx(1e-4)  # warmup done at step 9 -> peak
    assert lrs[10] == pytest.approx(1e-4)  # cosine starts at the peak
    assert lrs[60] == pytest.approx(1e-6 + (1e-4 - 1e-6) * 0.5)  # half way through the cosine
    assert lrs[110] == pytest.approx(1e-6)  # end of horizon: min_lr
    assert lrs[199] == pytest.approx(1e-6)  # past the horizon: held, never NaN (a 30k-step run once hit this)
    assert all(math.isfinite(x) and x > 0 for x in lrs)


def test_inverse_sqrt_with_warmup_and_annealing() -> None:
    bridge = _bridge(
        name="inverse_sqrt", base_lr=1e-3, min_lr=1e-9, warmup_steps=100, anneal_steps=(300, 400), anneal_rate=0.3
    )
    lrs = _run(bridge, 500)
    assert lrs[49] == pytest.approx(5e-4)  # warmup, linear
    assert lrs[99] == pytest.approx(1e-3)  # the stated peak is the real peak (FastSpeech2's was not)
    assert max(lrs) == pytest.approx(1e-3)
    assert lrs[199] == pytest.approx(1e-3 * math.sqrt(100 / 200))
    assert lrs[299] == pytest.approx(1e-3 * math.sqrt(100 / 300))  # before the first anneal step
    assert lrs[300] == pytest.approx(1e-3 * math.sqrt(100 / 301) * 0.3)
    assert lrs[400] == pytest.approx(1e-3 * math.sqrt(100 / 401) * 0.09)


def test_multistep_fires_at_milestones_in_optimizer_steps() -> None:
    bridge = _bridge(name="MultiStepLR", base_lr=1e-4, min_lr=1e-9, milestones=(3, 6), gamma=0.1)
    assert _run(bridge, 8) == pytest.approx([1e-4] * 3 + [1e-5] * 3 + [1e-6] * 2)


def test_warmup_in_front_of_multistep() -> None:
    bridge = _bridge(name="MultiStepLR", base_lr=1e-4, min_lr=1e-9, warmup_steps=4, milestones=(6,), gamma=0.5)
    assert _run(bridge, 8) == pytest.approx([2.5e-5, 5e-5, 7.5e-5, 1e-4, 1e-4, 1e-4, 5e-5, 5e-5])


def test_plateau_schedule_is_flat_in_steps() -> None:
    bridge = _bridge(name="ReduceLROnPlateau", base_lr=1e-5)
    assert _run(bridge, 50) == [1e-5] * 50


def test_exponential_range_test_schedule() -> None:
    spec = ScheduleSpec(name="exponential", base_lr=1e-7, end_lr=1e-1, total_steps=6)
    assert spec.lrs(range(7)) == pytest.approx([1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1])


def test_non_plateau_schedules_ignore_eval_loss_but_track_best() -> None:
    bridge = _bridge(name="cosine", base_lr=1e-4, total_steps=100, patience=0)
    out = [bridge.on_evaluation(2.0) for _ in range(4)]
    assert [o["lr"] for o in out] == [1e-4] * 4 and not any(o["reduced"] for o in out)
    assert bridge.best == 2.0


def test_health_cut_multiplies_every_schedule_and_survives_checkpoints() -> None:
    bridge = _bridge(name="MultiStepLR", base_lr=1e-4, min_lr=1e-9, milestones=(2,), gamma=0.1)
    assert bridge.cut_lr(0.5) == pytest.approx((1e-4, 5e-5))
    _run(bridge, 3)
    assert bridge.optimizer.param_groups[0]["lr"] == pytest.approx(5e-6)
    fresh = _bridge(name="MultiStepLR", base_lr=1e-4, min_lr=1e-9, milestones=(2,), gamma=0.1)
    fresh.load_state_dict(bridge.state_dict())
    assert fresh.optimizer.param_groups[0]["lr"] == pytest.approx(5e-6)


def test_state_from_before_the_health_monitor_still_loads() -> None:
    old = {
        "spec": {},
        "optimizer_steps": 3,
        "evaluations": 1,
        "plateau_scale": 0.5,
        "best": 1.0,
        "num_bad_evals": 0,
        "reductions": 1,
    }
    bridge = _bridge(name="ReduceLROnPlateau", base_lr=1e-5)
    bridge.load_state_dict(old)
    assert bridge.current_lr() == pytest.approx(5e-6) and bridge.health_scale == 1.0


@pytest.mark.parametrize(
    ("rows", "batch", "accum", "gpus", "steps"),
    [(10, 2, 1, 1, 5), (11, 2, 1, 1, 6), (10, 2, 2, 1, 3), (1000, 3, 84, 1, 4), (1000, 3, 84, 2, 2)],
)
def test_optimizer_steps_per_epoch(rows: int, batch: int, accum: int, gpus: int, steps: int) -> None:
    assert optimizer_steps_per_epoch(rows, batch, accum, gpus) == steps


def test_check_warns_on_milestones_beyond_horizon() -> None:
    spec = ScheduleSpec(name="MultiStepLR", base_lr=1e-5, milestones=(50, 5000), total_steps=1000)
    check = check_schedule(spec, 1000)
    assert not check.errors
    assert any("[5000]" in w and "never fire" in w for w in check.warnings)


def test_check_refuses_zero_or_nan_lr() -> None:
    # inverse_sqrt annealed to nothing: anneal_rate 1e-300 at step 10 (min_lr 0 gives no floor)
    spec = ScheduleSpec(name="inverse_sqrt", base_lr=1e-5, min_lr=0.0, anneal_steps=(10, 20), anneal_rate=1e-300)
    check = check_schedule(spec, 100)
    assert check.errors and "at optimizer step 10 " in check.errors[0]
    nan_spec = ScheduleSpec(name="ReduceLROnPlateau", base_lr=math.nan)
    assert check_schedule(nan_spec, 10).errors


def test_check_warns_on_lr_far_from_table_and_small_effective_batch() -> None:
    spec = ScheduleSpec(name="ReduceLROnPlateau", base_lr=5e-5)
    check = check_schedule(spec, 100, table_lr=1e-5, effective_batch=4)
    assert len(check.warnings) == 1  # 5x the table LR is inside the 10x range: only the batch warning
    assert any("effective batch 4" in w for w in check.warnings)
    far = check_schedule(ScheduleSpec(name="ReduceLROnPlateau", base_lr=5e-4), 100, table_lr=1e-5, effective_batch=252)
    assert len(far.warnings) == 1 and "50x" not in far.warnings[0] and "10x away" in far.warnings[0]


def test_sample_steps_include_boundaries() -> None:
    spec = ScheduleSpec(name="MultiStepLR", base_lr=1e-5, milestones=(777,), warmup_steps=33)
    steps = sample_steps(100_000, spec, points=50)
    assert {32, 33, 34, 776, 777, 778, 0, 99_999} <= set(steps)
