"""What Coqui's Trainer shows: the dashboard (TensorBoard, a tracker, or none: ``--logger``) and the console.

Coqui Trainer 0.4 picks its dashboard logger from ``config.dashboard_logger``
(``trainer.logging.logger_factory``) and writes three groups of scalars to it that disagree with
the run's own records: ``TrainIterStats`` only every ``print_step``/``plot_step`` steps, and
``TrainEpochStats``/``EvalStats`` from its ``KeepAverage``, which gives an average's first value
weight 0 and divides the train loss by the gradient accumulation. :class:`ToolkitDashboard`
wraps the chosen logger and leaves those three groups out (only ``TrainEpochStats/epoch_time``
stays); the toolkit writes the numbers of ``metrics.jsonl`` instead, from one place
(:mod:`utils.training.run_log`). Everything else Coqui and the toolkit's hooks write (the config as
text, test-sentence audio, quality scalars, figures) passes through unchanged. Coqui's
``add_artifact`` (the whole run folder, checkpoints included, at every save) is not forwarded:
checkpoints stay in the run folder.

Where each backend writes (``RUN`` is the run folder):

- ``tensorboard``: event files in ``RUN`` (``tensorboard --logdir RUN``, or the folder above for
  every run).
- ``wandb``: Weights & Biases, project ``config.project_name``, run named after ``RUN``, local
  files in ``RUN/wandb``; ``WANDB_MODE=offline`` works without an account (``wandb sync`` later).
- ``mlflow``: ``MLFLOW_TRACKING_URI`` when set (a server, a database or a ``file://`` folder),
  else an SQLite store in ``RUN/mlruns.db`` with artifacts in ``RUN/mlruns`` (Coqui's choice).
- ``clearml`` / ``aim``: Coqui's own loggers, unchanged.
- ``none``: nothing (``metrics.jsonl`` and ``events.jsonl`` are written all the same).

Coqui's console logger prints a block per epoch that counts from 0 against the last index
(``> EPOCH: 2/3`` for the third of four epochs): :class:`ToolkitConsole` keeps it out of the
output under the toolkit's progress bar, and counts as the bar does (``EPOCH: 3/4``) without it.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Any

from trainer.logging import logger_factory
from trainer.logging.base_dash_logger import BaseDashboardLogger
from trainer.logging.console_logger import ConsoleLogger
from trainer.logging.dummy_logger import DummyLogger

from utils.errors import ConfigError

logger = logging.getLogger(__name__)

# The package each logger needs, and how to install it (wandb and mlflow-skinny: the "trackers" extra);
# with "none", the names utils.finetune.config.LOGGERS offers.
PACKAGES: dict[str, tuple[str, str]] = {
    "tensorboard": ("tensorboard", "pip install tensorboard"),
    "wandb": ("wandb", "pip install wandb (or the toolkit's extra: pip install -e '.[trackers]')"),
    "mlflow": ("mlflow", "pip install mlflow-skinny (or the toolkit's extra: pip install -e '.[trackers]')"),
    "clearml": ("clearml", "pip install clearml"),
    "aim": ("aim", "pip install aim"),
}


def require_logger(name: str) -> None:
    """Refuse a logger that is unknown or whose package is not installed (one line with the fix).

    Raises:
        ConfigError: the name is not a logger of :data:`PACKAGES` nor "none", or its package is missing.
    """
    if name == "none":
        return
    if name not in PACKAGES:
        raise ConfigError(f"--logger {name!r}: choose one of {', '.join([*PACKAGES, 'none'])}")
    package, install = PACKAGES[name]
    if importlib.util.find_spec(package) is None:
        raise ConfigError(f"--logger {name} needs the {package} package, which is not installed: {install}")


def make_dashboard(config: Any, run_dir: str | Path) -> BaseDashboardLogger:
    """The dashboard logger of ``config.dashboard_logger`` for the run folder ``run_dir``, wrapped."""
    name = str(config.dashboard_logger or "none")
    require_logger(name)
    if name == "none":
        return DummyLogger()
    run_dir = Path(run_dir)
    if name == "tensorboard":
        from trainer.logging.tensorboard_logger import TensorboardLogger

        inner: BaseDashboardLogger = TensorboardLogger(str(run_dir), model_name=run_dir.name)
        logger.info("TensorBoard: tensorboard --logdir %s", run_dir)
    elif name == "wandb":
        from utils.training.trackers.wandb_logger import wandb_dashboard

        inner = wandb_dashboard(config, run_dir)
    elif name == "mlflow":
        inner = _mlflow(config, run_dir)
    else:  # clearml, aim: Coqui's own
        inner = logger_factory(config, str(run_dir))
    return ToolkitDashboard(inner)


def _mlflow(config: Any, run_dir: Path) -> BaseDashboardLogger:
    """MLflow at ``MLFLOW_TRACKING_URI``, else in an SQLite store in the run folder (where Coqui puts it)."""
    from utils.training.trackers.mlflow_logger import MLflowDashboard

    uri = os.environ.get("MLFLOW_TRACKING_URI")
    artifacts = None
    if not uri:
        uri, artifacts = f"sqlite:///{run_dir.resolve() / 'mlruns.db'}", run_dir.resolve() / "mlruns"
    logger.info("MLflow: run %s in %s", run_dir.name, uri)
    experiment = str(config.project_name or "xtts_finetune")
    return MLflowDashboard(uri, experiment=experiment, run_name=run_dir.name, artifact_location=artifacts)


class ToolkitDashboard(BaseDashboardLogger):
    """A Coqui dashboard logger without Coqui's iteration, epoch and eval averages (see the module doc).

    Args:
        inner: the logger everything else goes to.
    """

    def __init__(self, inner: BaseDashboardLogger) -> None:
        self.inner = inner
        self.finished = False

    # what Coqui's averages would write; the toolkit writes metrics.jsonl's numbers instead
    def train_step_stats(self, step: int, stats: dict[str, float]) -> None:
        """Coqui's per-``plot_step`` values (the toolkit writes every step's, ``Step/*``)."""

    def train_epoch_stats(self, step: int, stats: dict[str, float]) -> None:
        """Coqui's epoch averages: only the epoch's time is kept (its loss averages weigh the first step 0)."""
        if "epoch_time" in stats:
            self.inner.add_scalar("TrainEpochStats/epoch_time", float(stats["epoch_time"]), step)

    def eval_stats(self, step: int, stats: dict[str, float]) -> None:
        """Coqui's evaluation averages (the toolkit writes the evaluation record, ``Evaluation/*``)."""

    def add_artifact(self, file_or_dir: Any, name: str, artifact_type: str, aliases: list[str] | None = None) -> None:
        """Coqui uploads the whole run folder (checkpoints of gigabytes) at every save: not here."""

    # everything else goes through
    def model_weights(self, model: Any, step: int) -> None:
        self.inner.model_weights(model, step)

    def add_scalar(self, title: str, value: float, step: int) -> None:
        self.inner.add_scalar(title, value, step)

    def add_figure(self, title: str, figure: Any, step: int) -> None:
        self.inner.add_figure(title, figure, step)

    def add_audio(self, title: str, audio: Any, step: int, sample_rate: int) -> None:
        self.inner.add_audio(title, audio, step, sample_rate)

    def add_text(self, title: str, text: str, step: int) -> None:
        self.inner.add_text(title, text, step)

    def add_config(self, config: Any) -> None:
        self.inner.add_config(config)

    def flush(self) -> None:
        self.inner.flush()

    def finish(self) -> None:
        """Write what is pending, then close (once: Coqui's W&B logger would drop the last values)."""
        if self.finished:
            return
        self.finished = True
        self.inner.flush()
        self.inner.finish()


class ToolkitConsole(ConsoleLogger):
    """Coqui's console block, quiet under the progress bar and otherwise counting epochs from 1.

    With ``quiet`` (the toolkit's progress bar is on) nothing of the block is printed: the bar shows
    the epoch (``epoch 3/4``) and step, the toolkit's evaluation line the losses. Without it
    (``--no-progress``) Coqui's block is printed, its epoch line as ``EPOCH: 3/4``.

    Args:
        quiet: print nothing of Coqui's block.
    """

    def __init__(self, *, quiet: bool) -> None:
        super().__init__()
        self.quiet = quiet

    def print_epoch_start(self, epoch: int, max_epoch: int, output_path: Any = None) -> None:
        """Coqui prints ``epoch/(max_epoch - 1)`` with a 0-based ``epoch``; here ``epoch + 1`` of ``max_epoch``."""
        if not self.quiet:
            super().print_epoch_start(epoch + 1, max_epoch + 1, output_path)

    def print_train_start(self) -> None:
        if not self.quiet:
            super().print_train_start()

    def print_train_step(
        self, batch_steps: int, step: int, global_step: int, loss_dict: Any, avg_loss_dict: Any
    ) -> None:
        if not self.quiet:
            super().print_train_step(batch_steps, step, global_step, loss_dict, avg_loss_dict)

    def print_eval_start(self) -> None:
        if not self.quiet:
            super().print_eval_start()

    def print_eval_step(self, step: int, loss_dict: Any, avg_loss_dict: Any) -> None:
        if not self.quiet:
            super().print_eval_step(step, loss_dict, avg_loss_dict)

    def print_epoch_end(self, epoch: int, avg_loss_dict: Any) -> None:
        if not self.quiet:
            super().print_epoch_end(epoch, avg_loss_dict)
