"""The LR bridge: ReduceLROnPlateau semantics, warmup, checkpoint state."""

import pytest
import torch

from utils.training.lr_schedule import LRBridge, ScheduleSpec


def _bridge(**kw) -> LRBridge:
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=1.0)
    spec = ScheduleSpec(
        name="ReduceLROnPlateau", **{"base_lr": 1e-5, "min_lr": 1e-7, "factor": 0.5, "patience": 5, **kw}
    )
    return LRBridge(opt, spec)


def test_flat_loss_halves_after_patience_plus_one_bad_evaluations() -> None:
    bridge = _bridge()
    lrs = [bridge.on_evaluation(2.0)["lr"] for _ in range(13)]
    # eval 1 sets the best; evals 2..7 are 6 = patience + 1 without improvement -> cut at eval 7
    assert lrs[:6] == [1e-5] * 6
    assert lrs[6] == pytest.approx(5e-6)
    assert lrs[7:12] == [pytest.approx(5e-6)] * 5
    assert lrs[12] == pytest.approx(2.5e-6)
    assert bridge.optimizer.param_groups[0]["lr"] == pytest.approx(2.5e-6)


def test_lr_stops_at_min_lr() -> None:
    bridge = _bridge(base_lr=1e-6, patience=0)
    lrs = [bridge.on_evaluation(1.0)["lr"] for _ in range(8)]
    assert lrs == pytest.approx([1e-6, 5e-7, 2.5e-7, 1.25e-7, 1e-7, 1e-7, 1e-7, 1e-7])
    assert bridge.reductions == 4


def test_improving_loss_never_cuts() -> None:
    bridge = _bridge(patience=0)
    for i in range(20):
        assert bridge.on_evaluation(5.0 - 0.1 * i)["lr"] == 1e-5


def test_improvement_below_threshold_counts_as_plateau() -> None:
    bridge = _bridge(patience=1, threshold=1e-2)
    lrs = [bridge.on_evaluation(1.0 - 1e-4 * i)["lr"] for i in range(3)]
    assert lrs == pytest.approx([1e-5, 1e-5, 5e-6])


def test_nan_eval_loss_counts_as_no_improvement() -> None:
    bridge = _bridge(patience=0)
    bridge.on_evaluation(1.0)
    assert bridge.on_evaluation(float("nan"))["lr"] == pytest.approx(5e-6)


def test_warmup_is_linear_in_optimizer_steps() -> None:
    bridge = _bridge(warmup_steps=4)
    seen = [bridge.optimizer.param_groups[0]["lr"]]
    for _ in range(5):
        bridge.step()
        seen.append(bridge.optimizer.param_groups[0]["lr"])
    assert seen == pytest.approx([2.5e-6, 5e-6, 7.5e-6, 1e-5, 1e-5, 1e-5])


def test_state_dict_round_trip_keeps_lr_and_counters() -> None:
    bridge = _bridge(patience=1)
    for loss in (3.0, 3.0, 3.0):
        bridge.on_evaluation(loss)
    for _ in range(7):
        bridge.step()
    state = bridge.state_dict()
    fresh = _bridge(patience=1)
    fresh.load_state_dict(state)
    assert fresh.optimizer_steps == 7 and fresh.evaluations == 3 and fresh.best == 3.0
    assert fresh.optimizer.param_groups[0]["lr"] == pytest.approx(5e-6)
    assert fresh.on_evaluation(3.0)["lr"] == pytest.approx(5e-6)  # one bad eval since the cut
    assert fresh.on_evaluation(3.0)["lr"] == pytest.approx(2.5e-6)
