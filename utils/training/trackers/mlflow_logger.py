"""Coqui's MLflow logger on any tracking store, its scalars in batches, for ``--logger mlflow``."""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from trainer.logging.mlflow_logger import MLFlowLogger

MLFLOW_BATCH = 1000  # metrics per MLflow log_batch request (the REST API's limit)


class MLflowDashboard(MLFlowLogger):
    """Coqui's MLflow logger on any tracking store, its scalars sent in batches.

    Coqui's opens ``sqlite:///<folder>/mlruns.db`` whatever ``MLFLOW_TRACKING_URI`` says, and sends
    each scalar as its own request (several per step to a tracking server). Here the store is
    ``tracking_uri`` and scalars wait for the next ``flush`` (Coqui calls it after every step; the
    toolkit after every evaluation) to go as one ``log_batch``. Text, figures and audio go as
    Coqui sends them (artifacts of the run).

    Args:
        tracking_uri: the MLflow store (a server, ``sqlite:///FILE``, a ``file://`` folder).
        experiment: the experiment's name (made if new).
        run_name: the MLflow run's name.
        artifact_location: where a new experiment keeps its artifacts (None: the store's default).
    """

    def __init__(
        self, tracking_uri: str, *, experiment: str, run_name: str, artifact_location: str | Path | None = None
    ) -> None:
        # not Coqui's constructor: it always opens its own SQLite store
        self.model_name = experiment
        self.client = MlflowClient(tracking_uri=tracking_uri)
        found = self.client.get_experiment_by_name(experiment)
        if found is not None:
            self.experiment_id = found.experiment_id
        else:
            location = str(artifact_location) if artifact_location is not None else None
            self.experiment_id = self.client.create_experiment(experiment, artifact_location=location)
        self.run_id = self.client.create_run(self.experiment_id, run_name=run_name).info.run_id
        self.pending: list[Metric] = []

    def add_scalar(self, title: str, value: float, step: int) -> None:
        number = float(value.item() if torch.is_tensor(value) else value)
        if math.isfinite(number):  # MLflow stores NaN, but a tracking server's JSON may not carry it
            self.pending.append(Metric(title, number, int(time.time() * 1000), int(step)))

    def flush(self) -> None:
        pending, self.pending = self.pending, []
        for start in range(0, len(pending), MLFLOW_BATCH):
            self.client.log_batch(self.run_id, metrics=pending[start : start + MLFLOW_BATCH])

    def finish(self) -> None:
        self.flush()
        super().finish()
