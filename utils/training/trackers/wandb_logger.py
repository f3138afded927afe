"""Coqui's W&B logger with text (health events), for ``--logger wandb``."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import wandb
from trainer.logging.wandb_logger import WandbLogger


class WandbDashboard(WandbLogger):
    """Coqui's W&B logger, with text: Coqui's ``add_text`` does nothing, so health events would be lost.

    Coqui's ``add_config`` writes the whole config as text at step 0; the config already went to
    ``wandb.init``, so it is not repeated.
    """

    def add_text(self, title: str, text: str, step: int) -> None:
        self.log_dict[step][title] = wandb.Html(f"<pre>{html.escape(text)}</pre>")

    def add_config(self, config: Any) -> None:
        """The config is the run's (``wandb.init(config=...)``), not a text panel."""


def wandb_dashboard(config: Any, run_dir: Path) -> WandbDashboard:
    """A W&B run named after the run folder, its local files in ``run_dir/wandb``.

    ``WANDB_MODE=offline`` (no account needed; ``wandb sync`` uploads later) and the other
    ``WANDB_*`` settings apply as usual.
    """
    return WandbDashboard(
        project=str(config.project_name or "xtts_finetune"),
        name=run_dir.name,
        config=config.to_dict(),
        entity=config.wandb_entity,
        dir=str(run_dir),
    )
