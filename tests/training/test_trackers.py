"""``--logger wandb`` and ``--logger mlflow``: a real tracker run each (W&B offline, MLflow's own stores),
read back with the tracker's own format and client, holds metrics.jsonl's numbers."""

from __future__ import annotations

import html
import json
import struct
from pathlib import Path
from typing import Any

import pytest

from tests.training.tiny_runs import lr_of_step, read_jsonl, tiny_trainer


def _numbers(record: dict[str, Any]) -> dict[str, float]:
    """The fields of a metrics.jsonl row the dashboard holds as ``Evaluation/<key>``."""
    return {k: float(v) for k, v in record.items() if k != "step" and isinstance(v, (int, float))}


# --- Weights & Biases, offline -----------------------------------------------------------------


def _wandb_records(path: Path) -> list[Any]:
    """The protobuf records of an offline run's ``run-ID.wandb`` (LevelDB-style log of 32 KiB blocks)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, header = 32768, 7
    pos, buf, out = 7, b"", []
    while pos + header <= len(data):
        if block - pos % block < header:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + header])
        if length == 0 and kind == 0:
            break
        chunk, pos = data[pos + header : pos + header + length], pos + header + length
        buf = chunk if kind in (1, 2) else buf + chunk  # FULL, FIRST start a record; MIDDLE, LAST continue it
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(buf)
            out.append(record)
    return out


def _wandb_history(run: Path) -> dict[int, dict[str, Any]]:
    [path] = (run / "wandb").glob("offline-run-*/run-*.wandb")
    rows: dict[int, dict[str, Any]] = {}
    for record in _wandb_records(path):
        if record.WhichOneof("record_type") == "history":
            row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            rows.setdefault(int(row["_step"]), {}).update(row)
    return rows


def test_wandb_offline_run_holds_metrics_jsonl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb_home"))
    trainer = tiny_trainer(tmp_path / "runs", logger="wandb")
    trainer.fit()
    run = Path(trainer.output_path)
    history = _wandb_history(run)
    records = read_jsonl(run / "metrics.jsonl")
    assert [r["step"] for r in records] == [2, 4, 6, 8]
    for record in records:
        row = history[record["step"]]
        for key, value in _numbers(record).items():
            assert row[f"Evaluation/{key}"] == pytest.approx(value, rel=1e-9), key
    assert {s: history[s]["Step/lr"] for s in range(1, 9)} == pytest.approx({s: lr_of_step(s) for s in range(1, 9)})
    first = [history[s]["Step/loss"] for s in (1, 2)]
    assert sum(first) / 2 == pytest.approx(records[0]["train_loss"], rel=1e-9)
    [event] = read_jsonl(run / "events.jsonl")
    # Coqui's W&B logger drops text: the event is an HTML panel at its step
    [files] = (run / "wandb").glob("offline-run-*/files")
    panel = (files / history[event["step"]]["Health/events/path"]).read_text()
    assert html.escape(event["message"]) in panel and html.escape(event["recommendation"]) in panel
    assert not [k for row in history.values() for k in row if k.startswith(("TrainIterStats/", "EvalStats/"))]


# --- MLflow ------------------------------------------------------------------------------------


def _mlflow_run(uri: str, run_name: str) -> tuple[Any, str]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("tiny_project")
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == run_name and run.info.status == "FINISHED"
    return client, run.info.run_id


def test_mlflow_file_store_run_holds_metrics_jsonl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps its file store behind this switch
    trainer = tiny_trainer(tmp_path / "runs", logger="mlflow")
    trainer.fit()
    run = Path(trainer.output_path)
    client, run_id = _mlflow_run(uri, run.name)
    records = read_jsonl(run / "metrics.jsonl")
    for key in _numbers(records[0]):
        history = {m.step: m.value for m in client.get_metric_history(run_id, f"Evaluation/{key}")}
        expected = {r["step"]: float(r[key]) for r in records if r.get(key) is not None}
        assert history == pytest.approx(expected, rel=1e-9), key
    loss = {m.step: m.value for m in client.get_metric_history(run_id, "Step/loss")}
    assert sorted(loss) == list(range(1, 9))
    assert (loss[1] + loss[2]) / 2 == pytest.approx(records[0]["train_loss"], rel=1e-9)
    lrs = {m.step: m.value for m in client.get_metric_history(run_id, "Step/lr")}
    assert lrs == pytest.approx({s: lr_of_step(s) for s in range(1, 9)})
    [event] = read_jsonl(run / "events.jsonl")
    text = Path(client.download_artifacts(run_id, f"Health/events/{event['step']}.txt", str(tmp_path))).read_text()
    assert event["message"] in text
    assert not [k for k in client.get_run(run_id).data.metrics if k.startswith(("TrainIterStats/", "EvalStats/"))]


def test_mlflow_default_store_is_in_the_run_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without MLFLOW_TRACKING_URI: an SQLite store in the run folder (where Coqui's logger puts it)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from tests.training.tiny_runs import TinyConfig
    from utils.training.dashboard import make_dashboard

    run = tmp_path / "run_a"
    run.mkdir()
    board = make_dashboard(TinyConfig(dashboard_logger="mlflow"), run)
    board.add_scalar("Evaluation/eval_loss", 1.25, 3)
    board.finish()
    client, run_id = _mlflow_run(f"sqlite:///{run / 'mlruns.db'}", "run_a")
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "Evaluation/eval_loss")] == [(3, 1.25)]
