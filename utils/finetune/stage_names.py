"""The stages a run can train and the run fields of each stage's own values.

The one place both :mod:`utils.finetune.config` (RunConfig's fields and checks) and
:mod:`utils.finetune.stage_values` (each stage's values with their sources) read them from.
"""

from __future__ import annotations

from typing import Any, Protocol

#: The stages a run can train, in their training order (utils/runs.py names their folders).
STAGES = ("dvae", "gpt", "decoder")
#: Each stage's own values as flat run fields -> the stage setting they set (the GPT's are hyperparameters).
DVAE_FIELDS = {"dvae_lr": "lr", "dvae_epochs": "epochs", "dvae_batch_size": "batch_size"}
DECODER_FIELDS = {
    "decoder_lr": "lr_gen",
    "decoder_disc_lr": "lr_disc",
    "decoder_epochs": "epochs",
    "decoder_batch_size": "batch_size",
    "decoder_warmup_steps": "warm_start_steps",
}
#: The wall-time limit of each stage (minutes; None: none), a run field each.
TIME_LIMITS = {"dvae": "dvae_max_minutes", "gpt": "max_minutes", "decoder": "decoder_max_minutes"}


class StageFields(Protocol):
    """What the stages' values are read from: a :class:`utils.finetune.config.RunConfig` (its stage
    fields, read by name, and the layer that set each)."""

    demo: bool
    stages: tuple[str, ...]

    def source(self, name: str) -> str: ...

    def __getattr__(self, name: str) -> Any: ...


__all__ = ["DECODER_FIELDS", "DVAE_FIELDS", "STAGES", "TIME_LIMITS", "StageFields"]
