"""ToolkitTrainer drives models that are not the GPT: a one-optimizer model with DVAE-like losses and
a two-optimizer GAN, each through evaluations, a Ctrl-C checkpoint and an exact ``--continue``."""

# no "from __future__ import annotations": coqpit reads the config's field types at run time
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader
from trainer import TrainerArgs, TrainerConfig
from trainer.model import TrainerModel

from utils.training import step_values
from utils.training.checkpoints import last_checkpoint, load_checkpoint
from utils.training.health import HealthConfig, HealthMonitor, UpdateRatioProbe
from utils.training.lr_schedule import LRBridge, ScheduleSpec
from utils.training.recovery import StepGuard
from utils.training.trainer import ToolkitTrainer


@dataclass
class TinyConfig(TrainerConfig):
    run_name: str = "tiny"
    epochs: int = 2
    batch_size: int = 2
    eval_batch_size: int = 4
    lr: float = 1e-2
    lr_disc: float = 1e-3
    fused: bool = False
    print_step: int = 1000
    save_step: int = 10_000
    save_n_checkpoints: int = 3
    dashboard_logger: str = "tensorboard"
    grad_clip: float | list[float] = 5.0


def _samples(n: int, seed: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    xs = torch.randn(n, 4, generator=g)
    ys = torch.tanh(xs @ torch.randn(4, 4, generator=g))
    return [{"x": x, "y": y} for x, y in zip(xs, ys)]


class _Tiny(TrainerModel):
    """What both tiny models share: a data loader over the samples in order, an optional Ctrl-C."""

    interrupt_at: int | None = None  # raise KeyboardInterrupt in this train_step call (0-based)

    def __init__(self, config: TinyConfig) -> None:
        super().__init__()
        self.config = config
        self.calls = 0
        self.modes: list[bool] = []

    def _count_call(self) -> None:
        if self.calls == self.interrupt_at:
            raise KeyboardInterrupt
        self.calls += 1
        self.modes.append(self.training)

    def get_data_loader(self, config: Any, *, is_eval: bool = False, samples: Any = None, verbose: bool = True) -> Any:
        size = config.eval_batch_size if is_eval else config.batch_size
        return DataLoader(samples, batch_size=size, shuffle=False)

    def get_criterion(self) -> nn.Module:
        return nn.Identity()


class TinyAutoencoder(_Tiny):
    """One optimizer, losses named like a DVAE's (no dropout: a resume does not restore the random state)."""

    loss_keys = ("loss", "recon_loss", "commitment_loss")

    def __init__(self, config: TinyConfig) -> None:
        super().__init__(config)
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.net(x)

    def train_step(self, batch: dict[str, Any], criterion: Any) -> tuple[dict[str, Any], dict[str, Any]]:  # type: ignore[override]
        if torch.is_grad_enabled():
            self._count_call()
        out = self(batch["x"])
        recon = F.mse_loss(out, batch["y"])
        commitment = 0.1 * out.pow(2).mean()
        return {"model_outputs": out}, {"loss": recon + commitment, "recon_loss": recon, "commitment_loss": commitment}

    def eval_step(self, batch: dict[str, Any], criterion: Any) -> tuple[dict[str, Any], dict[str, Any]]:  # type: ignore[override]
        return self.train_step(batch, criterion)

    def get_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.config.lr, fused=self.config.fused)

    def get_scheduler(self, optimizer: Any) -> LRBridge:
        return LRBridge(optimizer[0], ScheduleSpec("ReduceLROnPlateau", base_lr=self.config.lr))


class TinyGan(_Tiny):
    """Two optimizers in Coqui's GAN order (discriminator first); scheduled by the generator's. No
    ``loss_keys``: the default (the mean of ``loss_0`` and ``loss_1``, then each) applies."""

    lr_optimizer = 1
    nan_at: int | None = None  # a NaN discriminator loss in this train_step call

    def __init__(self, config: TinyConfig) -> None:
        super().__init__(config)
        torch.manual_seed(0)
        self.gen = nn.Linear(4, 4)
        self.disc = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.gen(x)

    def train_step(  # type: ignore[override]
        self, batch: dict[str, Any], criterion: Any, optimizer_idx: int
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        fake, real = self.gen(batch["x"]), batch["y"]
        if optimizer_idx == 0:  # discriminator
            if torch.is_grad_enabled():
                self._count_call()
            d_loss = F.softplus(self.disc(fake.detach())).mean() + F.softplus(-self.disc(real)).mean()
            if self.nan_at is not None and self.calls - 1 == self.nan_at and torch.is_grad_enabled():
                d_loss = d_loss * math.nan
            return {"model_outputs": fake}, {"loss": d_loss}
        recon = F.l1_loss(fake, real)
        return {"model_outputs": fake}, {"loss": F.softplus(-self.disc(fake)).mean() + recon, "g_recon": recon}

    def eval_step(  # type: ignore[override]
        self, batch: dict[str, Any], criterion: Any, optimizer_idx: int
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        return self.train_step(batch, criterion, optimizer_idx)

    def get_optimizer(self) -> list[torch.optim.Optimizer]:
        return [
            torch.optim.AdamW(self.disc.parameters(), lr=self.config.lr_disc),
            torch.optim.AdamW(self.gen.parameters(), lr=self.config.lr),
        ]

    def get_scheduler(self, optimizer: Any) -> list[LRBridge]:
        return [
            LRBridge(optimizer[0], ScheduleSpec("ReduceLROnPlateau", base_lr=self.config.lr_disc)),
            LRBridge(optimizer[1], ScheduleSpec("ReduceLROnPlateau", base_lr=self.config.lr)),
        ]

    def get_criterion(self) -> list[nn.Module]:
        return [nn.Identity(), nn.Identity()]


def _trainer(model_cls: type, out: Path, *, continue_path: Path | None = None, **options: Any) -> ToolkitTrainer:
    config = TinyConfig(output_path=str(out), **options.pop("config", {}))
    args = TrainerArgs(grad_accum_steps=options.pop("grad_accum", 1))
    if continue_path is not None:
        args.continue_path = str(continue_path)
    model = model_cls(config)
    for name, value in options.pop("model", {}).items():
        setattr(model, name, value)
    return ToolkitTrainer(
        args,
        config,
        output_path=str(out),
        model=model,
        # every batch the same two rows: a mid-epoch resume skips the same share of a fresh pass, not
        # the same rows (utils/training/trainer.py), and with these the rows cannot differ
        train_samples=_samples(2, seed=1) * (options.pop("rows") // 2),
        eval_samples=_samples(4, seed=2),
        health=HealthMonitor(HealthConfig()),
        **options,
    )


def _interrupted_then_continued(model_cls: type, tmp_path: Path, interrupt_at: int, **options: Any):
    """The same run three ways: straight through; interrupted by Ctrl-C; that one continued."""
    straight = _trainer(model_cls, tmp_path / "straight", **options)
    straight.fit()
    cut = _trainer(model_cls, tmp_path / "cut", model={"interrupt_at": interrupt_at}, **options)
    with pytest.raises(KeyboardInterrupt):
        cut.fit()
    run = Path(cut.output_path)
    resumed = _trainer(model_cls, tmp_path / "cut", continue_path=run, **options)
    return straight, resumed, run


def _rows(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _same_rows(a: list[dict[str, Any]], b: list[dict[str, Any]], keys: tuple[str, ...]) -> None:
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        for key in keys:
            assert rb[key] == pytest.approx(ra[key], rel=1e-6, abs=1e-9), (ra["step"], key)


def test_one_optimizer_model_trains_evaluates_and_resumes_exactly(tmp_path: Path, monkeypatch) -> None:
    # deferred reads (every 3 optimizer steps) and the device-side clip/skip of a fused AdamW, as on a GPU
    monkeypatch.setattr(step_values, "default_read_every", lambda: 3)
    # 12 rows, micro-batch 2, accumulation 2: 6 trainer steps and 3 optimizer steps per epoch
    options = {"rows": 12, "grad_accum": 2, "eval_every_steps": 2, "config": {"fused": True}}
    # Ctrl-C in the 11th step: 10 steps done (5 optimizer steps, 4 batches into epoch 2), 2 of them
    # after the evaluation at step 8
    straight, resumed, run = _interrupted_then_continued(TinyAutoencoder, tmp_path, interrupt_at=10, **options)
    assert straight.guard.on_device and straight.stage.keys == ("loss", "recon_loss", "commitment_loss")
    assert last_checkpoint(run).name == "checkpoint_10.pth"
    assert (resumed.total_steps_done, resumed.optimizer_steps, resumed.epochs_done) == (10, 5, 1)
    assert resumed.position.resume_batches == 4
    resumed.fit()
    assert resumed.total_steps_done == straight.total_steps_done == 12
    assert resumed.optimizer_steps == straight.optimizer_steps == 6

    a, b = _rows(Path(straight.output_path)), _rows(run)
    # evaluations at optimizer steps 2, 3 (epoch end), 4 and 6 (the epoch-end one at 6 is not repeated)
    assert [r["optimizer_step"] for r in a] == [2, 3, 4, 6] and [r["step"] for r in a] == [4, 6, 8, 12]
    _same_rows(a, b, ("train_loss", "eval_loss", "train_recon_loss", "eval_commitment_loss", "lr", "grad_norm"))
    for r in a:  # Coqui divides "loss" by the accumulation; the record holds the model's loss
        assert r["train_loss"] == pytest.approx(r["train_recon_loss"] + r["train_commitment_loss"], rel=1e-5)
        assert r["eval_loss"] == pytest.approx(r["eval_recon_loss"] + r["eval_commitment_loss"], rel=1e-5)
        assert r["train_steps_averaged"] > 0 and r["grad_norm"] > 0
    # the two steps before the Ctrl-C still count in the row after it
    assert b[3]["train_steps_averaged"] == a[3]["train_steps_averaged"] == 4
    final_a = load_checkpoint(last_checkpoint(straight.output_path))["model"]
    final_b = load_checkpoint(last_checkpoint(run))["model"]
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)
    # after each mid-epoch evaluation the model is back in train mode: every step ran in it
    assert straight.model.modes == [True] * 12


def test_two_optimizer_gan_counts_each_optimizer_and_resumes_exactly(tmp_path: Path) -> None:
    # 8 rows, micro-batch 2: 4 steps per epoch; both optimizers step at every trainer step
    options = {"rows": 8, "eval_every_steps": 3, "config": {"grad_clip": [5.0, 5.0]}}
    straight, resumed, run = _interrupted_then_continued(TinyGan, tmp_path, interrupt_at=5, **options)
    assert straight.stage.keys == ("loss", "loss_0", "loss_1") and straight.lr_bridge is straight.scheduler[1]
    assert not straight.guard.on_device  # two optimizers: the host-side skip
    assert (resumed.total_steps_done, resumed.optimizer_steps, resumed.position.resume_batches) == (5, 5, 1)
    assert last_checkpoint(run).name == "checkpoint_5.pth"
    resumed.fit()
    for trainer in (straight, resumed):
        assert [s.optimizer_steps for s in trainer.scheduler] == [8, 8]
        for opt in trainer.optimizer:  # each optimizer's own count of its steps
            assert {int(s["step"]) for s in opt.state.values()} == {8}

    a, b = _rows(Path(straight.output_path)), _rows(run)
    assert [r["optimizer_step"] for r in a] == [3, 4, 6, 8]
    assert b[2]["train_steps_averaged"] == a[2]["train_steps_averaged"] == 2  # step 5 from before the Ctrl-C
    _same_rows(a, b, ("train_loss", "eval_loss", "train_loss_0", "eval_loss_1", "grad_norm", "grad_norm_0", "lr"))
    for r in a:
        assert r["train_loss"] == pytest.approx((r["train_loss_0"] + r["train_loss_1"]) / 2, rel=1e-6)
        assert r["eval_loss"] == pytest.approx((r["eval_loss_0"] + r["eval_loss_1"]) / 2, rel=1e-6)
        assert r["lr"] == pytest.approx(1e-2)  # the generator's LR, not the discriminator's 1e-3
        assert r["grad_norm"] == r["grad_norm_1"] != r["grad_norm_0"]
    final_a = load_checkpoint(last_checkpoint(straight.output_path))["model"]
    final_b = load_checkpoint(last_checkpoint(run))["model"]
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)


def test_a_nan_in_one_optimizer_skips_that_step_and_cuts_both_lrs(tmp_path: Path) -> None:
    trainer = _trainer(TinyGan, tmp_path, rows=8, eval_every_steps=4, model={"nan_at": 2}, config={"epochs": 1})
    trainer.fit()
    events = [json.loads(line) for line in (Path(trainer.output_path) / "events.jsonl").read_text().splitlines()]
    (divergence,) = [e for e in events if e["event"] == "divergence"]
    assert divergence["step"] == 3 and "LR 0.01 -> 0.005" in divergence["action"]
    assert [s.current_lr() for s in trainer.scheduler] == pytest.approx([5e-4, 5e-3])
    assert trainer.health.recoveries == 1 and trainer.total_steps_done == 4
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_the_step_guard_drops_only_the_non_finite_optimizers_gradients() -> None:
    a, b = nn.Linear(2, 2), nn.Linear(2, 2)
    opt_a, opt_b = torch.optim.AdamW(a.parameters(), lr=0.1), torch.optim.AdamW(b.parameters(), lr=0.1)
    guard = StepGuard(UpdateRatioProbe())
    guard.attach([opt_a, opt_b], read_every=1, lr_optimizer=1, config=TinyConfig())
    (a(torch.ones(2)).sum() * math.nan).backward()
    b(torch.ones(2)).sum().backward()
    before_a, before_b = [p.detach().clone() for p in a.parameters()], [p.detach().clone() for p in b.parameters()]
    for opt in (opt_a, opt_b):
        guard.before_step(opt)
        opt.step()
    assert guard.skipped is True and all(p.grad is None for p in a.parameters())
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), before_a))  # no update, no state
    assert not opt_a.state and all(not torch.equal(p, q) for p, q in zip(b.parameters(), before_b))


def test_a_time_limit_stops_after_the_step_with_an_evaluation_and_an_exact_checkpoint(tmp_path: Path) -> None:
    # 8 rows, micro-batch 2: 4 steps per epoch, 2 epochs; the limit has passed before the first step ends
    trainer = _trainer(TinyAutoencoder, tmp_path / "run", rows=8, deadline=time.time())
    trainer.fit()
    run = Path(trainer.output_path)
    assert trainer.stop_reason == "time_limit" and trainer.total_steps_done == 1
    assert [r["step"] for r in _rows(run)] == [1]  # evaluated at the stop
    assert (run / "best_model.pth").is_file() and last_checkpoint(run).name == "checkpoint_1.pth"
    # the checkpoint records the position inside the epoch: --continue goes on with its 3 batches left
    resumed = _trainer(TinyAutoencoder, tmp_path / "run", continue_path=run, rows=8)
    assert (resumed.total_steps_done, resumed.epochs_done, resumed.position.resume_batches) == (1, 0, 1)
    resumed.fit()
    assert resumed.stop_reason is None and resumed.total_steps_done == 8
    assert [r["step"] for r in _rows(run)] == [1, 4, 8]
