"""TensorBoard, read back with TensorBoard's own event reader, shows metrics.jsonl's numbers step by step."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.training.tiny_runs import lr_of_step, read_jsonl, tiny_trainer
from utils.errors import ConfigError


def _scalars(acc: EventAccumulator, tag: str) -> dict[int, float]:
    return {e.step: e.value for e in acc.Scalars(tag)}


def _events(run: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_tensorboard_scalars_equal_metrics_jsonl_step_by_step(tmp_path: Path) -> None:
    trainer = tiny_trainer(tmp_path)
    trainer.fit()
    run = Path(trainer.output_path)
    records = read_jsonl(run / "metrics.jsonl")
    assert [r["step"] for r in records] == [2, 4, 6, 8]
    acc = _events(run)
    tags = set(acc.Tags()["scalars"])

    # every number of every metrics.jsonl row, at its step
    for record in records:
        for key, value in record.items():
            if key == "step" or isinstance(value, (str, list)) or value is None:
                continue
            assert _scalars(acc, f"Evaluation/{key}")[record["step"]] == pytest.approx(float(value), rel=1e-6), key

    # every trainer step's losses and LR; their mean over an evaluation's period is its train loss
    steps = _scalars(acc, "Step/loss")
    assert sorted(steps) == list(range(1, 9))
    assert sorted(_scalars(acc, "Step/grad_norm")) == [2, 4, 6, 8]  # one per optimizer step (2 micro-batches)
    assert _scalars(acc, "Step/lr") == pytest.approx({s: lr_of_step(s) for s in range(1, 9)}, rel=1e-6)
    assert len(set(_scalars(acc, "Step/lr").values())) == 4  # the warmup moves it every optimizer step
    before = 0
    for record in records:
        period = range(before + 1, record["step"] + 1)
        assert record["train_steps_averaged"] == len(period)
        for key, tag in (("train_loss", "loss"), ("train_recon_loss", "recon_loss"), ("grad_norm", "grad_norm")):
            values = _scalars(acc, f"Step/{tag}")
            held = [values[s] for s in period if s in values]  # a gradient norm: the optimizer steps only
            assert sum(held) / len(held) == pytest.approx(record[key], rel=1e-6), key
        before = record["step"]

    # Coqui's own averages (first value weight 0, loss divided by the accumulation) are not written
    assert not [t for t in tags if t.startswith(("TrainIterStats/", "EvalStats/"))]
    assert [t for t in tags if t.startswith("TrainEpochStats/")] == ["TrainEpochStats/epoch_time"]

    # the health event as text, at its step, with the message of events.jsonl
    [event] = read_jsonl(run / "events.jsonl")
    texts = acc.Tensors("Health/events/text_summary")
    assert [t.step for t in texts] == [event["step"]]
    text = texts[0].tensor_proto.string_val[0].decode()
    assert event["event"] == "lr_too_large" and event["message"] in text and event["recommendation"] in text


def test_logger_none_writes_no_dashboard_but_the_same_records(tmp_path: Path) -> None:
    trainer = tiny_trainer(tmp_path, logger="none")
    trainer.fit()
    run = Path(trainer.output_path)
    assert len(read_jsonl(run / "metrics.jsonl")) == 4
    assert not list(run.glob("events.out.tfevents*"))


def test_missing_tracker_package_is_one_line_with_the_install() -> None:
    from utils.finetune.config import LOGGERS
    from utils.training import dashboard

    # clearml and aim are not installed here: each is refused with the package to install
    for name, needle in (("clearml", "pip install clearml"), ("aim", "pip install aim")):
        with pytest.raises(ConfigError) as info:
            dashboard.require_logger(name)
        assert needle in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="choose one of"):
        dashboard.require_logger("comet")
    assert set(LOGGERS) == {*dashboard.PACKAGES, "none"}  # the command's choices and the backends agree


def test_no_progress_console_counts_epochs_as_the_bar(tmp_path: Path) -> None:
    """Coqui prints ``> EPOCH: 0/1`` for the first of two epochs; the toolkit counts 1/2 (and 2/2)."""
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    coqui = logging.getLogger("trainer")
    coqui.addHandler(handler)
    try:
        tiny_trainer(tmp_path / "plain", progress=False).fit()
        plain = list(lines)
        lines.clear()
        tiny_trainer(tmp_path / "bar", progress=True).fit()
    finally:
        coqui.removeHandler(handler)
    epochs = [line.strip() for line in plain if "EPOCH:" in line]
    assert [e.split("EPOCH: ")[1].split("\x1b")[0] for e in epochs] == ["1/2", "2/2"]
    assert any("GLOBAL_STEP" in line for line in plain)  # the rest of Coqui's block is still there
    assert not [line for line in lines if "EPOCH:" in line or "GLOBAL_STEP" in line or "EVAL PERFORMANCE" in line]
