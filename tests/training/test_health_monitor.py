"""The health checks on synthetic signals: each condition fires once, with a recommendation."""

import json
import math

import pytest
import torch

from utils.training.health import EarlyStopping, HealthConfig, HealthMonitor, UpdateRatioProbe


def _monitor(tmp_path, **kw) -> HealthMonitor:
    return HealthMonitor(HealthConfig(**kw), events_path=tmp_path / "events.jsonl", grad_clip=kw.pop("clip", 1.0))


def _events(tmp_path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]


def test_loss_spike_fires_after_sustained_window_only(tmp_path) -> None:
    m = _monitor(tmp_path, spike_ratio=0.3, spike_window=5, ema_alpha=0.5, spike_burn_in=3)
    for i in range(20):
        m.check_step(step=i, optimizer_step=i, loss=3.0, grad_norm=0.1)
    for i in range(20, 21):  # a one-batch blip: the smoothed loss is back within 4 steps, under the window
        m.check_step(step=i, optimizer_step=i, loss=9.0, grad_norm=0.1)
    for i in range(23, 30):
        m.check_step(step=i, optimizer_step=i, loss=3.0, grad_norm=0.1)
    assert not m.events
    for i in range(30, 45):  # sustained: fires at the 5th step above (30..34)
        m.check_step(step=i, optimizer_step=i, loss=9.0, grad_norm=0.1)
    assert [e["event"] for e in m.events] == ["loss_spike"]  # once, not every step
    ev = _events(tmp_path)[0]
    assert ev["optimizer_step"] == 34 and ev["ema_min"] == pytest.approx(3.0) and "LR" in ev["recommendation"]


def test_clipping_saturation(tmp_path) -> None:
    m = _monitor(tmp_path, clip_window=10, clip_share=0.5)
    for i in range(10):
        m.check_step(step=i, optimizer_step=i, loss=1.0, grad_norm=0.5)  # under the clip of 1.0
    assert not m.events
    for i in range(10, 16):
        m.check_step(step=i, optimizer_step=i, loss=1.0, grad_norm=5.0)
    assert [e["event"] for e in m.events] == ["clipping_saturation"]
    assert m.events[0]["share"] == pytest.approx(0.6)


def test_plateau_fires_when_best_eval_stalls(tmp_path) -> None:
    m = _monitor(tmp_path, plateau_window=3, plateau_min_improvement=0.01)
    losses = [5.0, 4.0, 3.5, 3.49, 3.49, 3.48, 3.48, 3.0]
    fired_at = []
    for i, ev in enumerate(losses):
        m.check_evaluation({"step": i, "optimizer_step": i, "train_loss": 3.0, "eval_loss": ev}, plateau_rule=True)
        fired_at += [i for _ in m.take_pending()]
    # at eval 5 the best went 3.5 -> 3.48 over 3 evaluations: 0.57 % < 1 %
    assert fired_at == [5]
    assert "ReduceLROnPlateau" in m.events[0]["message"]


def test_overfitting_needs_eval_up_and_train_down_in_a_row(tmp_path) -> None:
    m = _monitor(tmp_path, overfit_window=3, plateau_window=100)
    history = [(5.0, 5.0), (4.0, 4.5), (3.5, 4.6), (3.0, 4.7), (2.8, 4.8), (2.7, 4.9)]
    names = []
    for i, (train, ev) in enumerate(history):
        m.check_evaluation({"step": i, "optimizer_step": i, "train_loss": train, "eval_loss": ev}, plateau_rule=True)
        names.append(m.take_pending())
    assert names == [[], [], [], [], ["overfitting"], []]


def test_update_ratio_flags_too_small_and_too_large(tmp_path) -> None:
    m = _monitor(tmp_path, update_ratio_low=1e-6, update_ratio_high=1e-2)
    m.check_update_ratios({"group0": 1e-8, "group1": 1e-4}, step=1, optimizer_step=1, lr=1e-9)
    m.check_update_ratios({"group0": 1e-8, "group1": 0.5}, step=2, optimizer_step=2, lr=1e-9)
    assert [(e["event"], e["group"]) for e in m.events] == [("lr_too_small", "group0"), ("lr_too_large", "group1")]


def test_update_ratio_probe_measures_one_adamw_step() -> None:
    w = torch.nn.Parameter(torch.full((100,), 2.0))
    opt = torch.optim.AdamW([w], lr=1e-3, weight_decay=0.0)
    probe = UpdateRatioProbe()
    opt.register_step_pre_hook(lambda o, *a: probe.before(o))
    opt.register_step_post_hook(lambda o, *a: probe.after(o))
    w.grad = torch.ones(100)
    probe.armed = True
    opt.step()
    # Adam's first step moves every element by ~lr: ||dw|| / ||w|| = 1e-3 * 10 / (2 * 10)
    assert probe.last["group0"] == pytest.approx(5e-4, rel=1e-3)
    assert probe.armed is False


def test_divergence_counts_recoveries(tmp_path) -> None:
    m = _monitor(tmp_path, divergence_max_recoveries=2)
    assert m.is_divergent(math.nan, False) and m.is_divergent(1.0, True) and not m.is_divergent(1.0, False)
    for _ in range(2):
        assert m.can_recover()
        m.divergence_event(step=1, optimizer_step=1, loss=math.nan, action="x", recovered=True)
    assert not m.can_recover()
    assert _events(tmp_path)[0]["event"] == "divergence"


def test_state_round_trip(tmp_path) -> None:
    m = _monitor(tmp_path, spike_burn_in=1, clip_window=4)
    for i in range(6):
        m.check_step(step=i, optimizer_step=i, loss=2.0 - 0.1 * i, grad_norm=2.0)
    m.check_evaluation({"step": 6, "optimizer_step": 6, "train_loss": 1.5, "eval_loss": 1.7}, plateau_rule=True)
    fresh = _monitor(tmp_path, spike_burn_in=1, clip_window=4)
    fresh.load_state_dict(json.loads(json.dumps(m.state_dict())))  # JSON-able: weights_only checkpoints
    assert fresh.ema == pytest.approx(m.ema) and list(fresh.clipped) == list(m.clipped)
    assert fresh.best_evals == [1.7] and fresh.in_clip_saturation == m.in_clip_saturation


def test_early_stopping_patience_and_min_delta() -> None:
    es = EarlyStopping(patience=2, min_delta=0.05)
    assert [es.update(x) for x in (3.0, 2.9, 2.88, 2.86, 2.5)] == [False, False, False, True, False]
    assert es.best == 2.5
    es2 = EarlyStopping(patience=1)
    es2.load_state_dict(es.state_dict())
    assert es2.best == 2.5 and es2.update(math.nan) is True
