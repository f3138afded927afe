"""The fine-tune API: a frozen run configuration and the recipe object that runs it.

    from utils.finetune import FineTune, RunConfig
    result = FineTune(RunConfig.build(demo=True)).run()

See :mod:`utils.finetune.recipe` for the steps and :mod:`utils.events` for the events.
"""

from utils.events import Event, EventBus, EventKind, JsonlWriter, ProgressBar, read_events
from utils.finetune.config import DEMO_RECIPE, RUN_HPARAMS, SPEED_PRESETS, SPEED_SWITCHES, RunConfig
from utils.finetune.recipe import FineTune
from utils.finetune.training import TrainResult, summary_lines

__all__ = [
    "DEMO_RECIPE",
    "Event",
    "EventBus",
    "EventKind",
    "FineTune",
    "JsonlWriter",
    "ProgressBar",
    "RUN_HPARAMS",
    "RunConfig",
    "SPEED_PRESETS",
    "SPEED_SWITCHES",
    "TrainResult",
    "read_events",
    "summary_lines",
]
