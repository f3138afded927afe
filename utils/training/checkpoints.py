"""Crash-safe checkpoints: every file is written to a temporary name, then renamed into place.

Coqui Trainer 0.4 writes checkpoints with ``torch.save`` straight to the final path
(``trainer.io.save_checkpoint`` / ``save_model`` -> ``save_fsspec``), and copies ``best_model.pth``
byte by byte (``fs.copy``). A kill during either leaves a truncated ``checkpoint_N.pth`` that
``--continue`` (``trainer.io.get_last_checkpoint``: highest N wins) then picks and fails to load.

Here a checkpoint goes to ``.NAME.partial`` in the same folder, is flushed and fsynced, then
``os.replace``d onto ``NAME``: a rename within one file system is atomic, so at any moment the
folder holds only complete checkpoints (plus, after a kill, a ``.partial`` file that no glob of
the Trainer matches and :func:`remove_partial_files` deletes on ``--continue``).
``best_model.pth`` is a hard link to the newest ``best_model_N.pth`` (a copy where links are not
supported), made the same way. Loading uses ``weights_only=True``.

Two kinds of file: ``checkpoint_N.pth`` holds the whole training state (weights, AdamW moments,
LR schedule, counters) and is what ``--continue`` and divergence recovery read; ``best_model_N.pth``
holds the weights, config, counters and eval loss but no optimizer state (for XTTS v2 about 2 GB
instead of 5.5 GB, written at every improving evaluation), and is what export and ``--restore`` read.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch

# Readers live with the run folder (utils.runs); re-exported for the trainer, which writes.
from utils.runs import (  # noqa: F401
    PARTIAL_SUFFIX,
    best_eval_loss,
    checkpoint_step,
    has_training_state,
    last_checkpoint,
    load_checkpoint,
    remove_partial_files,
)

logger = logging.getLogger(__name__)

# Test hook only: "NAME:SECONDS" pauses SECONDS after the first MiB of NAME's temporary file, so a
# test can kill the process in the middle of a checkpoint write.
_PAUSE_ENV = "XTTS_TOOLKIT_TEST_SAVE_PAUSE"


class _PausingWriter:
    """A file wrapper that sleeps once after ``after`` bytes (see ``_PAUSE_ENV``)."""

    def __init__(self, fh: Any, after: int, seconds: float) -> None:
        self.fh, self.after, self.seconds, self.written = fh, after, seconds, 0

    def write(self, data: Any) -> int:
        n = self.fh.write(data)
        before, self.written = self.written, self.written + n
        if before < self.after <= self.written:
            self.fh.flush()
            time.sleep(self.seconds)
        return n

    def flush(self) -> None:
        self.fh.flush()


def _partial_path(path: Path) -> Path:
    return path.with_name(f".{path.name}{PARTIAL_SUFFIX}")


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not supported on this platform/file system: the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_torch_save(state: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save(state, path)`` so that ``path`` is either the old file or the complete new one."""
    path = Path(path)
    tmp = _partial_path(path)
    pause = os.environ.get(_PAUSE_ENV, "").rpartition(":")
    with open(tmp, "wb") as fh:
        torch.save(state, _PausingWriter(fh, 1 << 20, float(pause[2])) if pause[0] == path.name else fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    return path


def atomic_link(src: str | os.PathLike[str], dest: str | os.PathLike[str]) -> Path:
    """Make ``dest`` the same file as ``src`` (hard link, else copy), replacing it atomically."""
    src, dest = Path(src), Path(dest)
    tmp = _partial_path(dest)
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dest)
    return dest


def training_state(trainer: Any, *, steps_done: int, epochs_done: int, epoch_batches_done: int = 0,
                   optimizer: bool = True, **extra: Any) -> dict[str, Any]:  # fmt: skip
    """The checkpoint dict Coqui's ``trainer.io.save_model`` writes, plus the toolkit's state.

    ``steps_done``/``epochs_done``/``epoch_batches_done`` are exact counts of completed trainer
    steps, epochs and batches of the current epoch (Coqui's ``step`` key is off by one for
    checkpoints written inside a step). ``optimizer=False`` leaves out the optimizer and AMP
    scaler state (a weights-only best model).
    """
    import datetime

    from utils.training.compat import unwrap_model

    model = unwrap_model(trainer)
    config = trainer.config.to_dict() if hasattr(trainer.config, "to_dict") else trainer.config
    scheduler = [s.state_dict() for s in trainer.scheduler if s is not None] if trainer.scheduler else None
    state = {
        "config": config,
        "model": model.state_dict(),
        "optimizer": [o.state_dict() for o in trainer.optimizer] if (trainer.optimizer and optimizer) else None,
        "scheduler": scheduler,
        "scaler": trainer.scaler.state_dict() if (optimizer and trainer.scaler is not None and trainer.use_amp_scaler) else None,
        "step": trainer.total_steps_done,
        "epoch": trainer.epochs_done,
        "date": datetime.date.today().strftime("%B %d, %Y"),
        "toolkit_state": {
            "steps_done": int(steps_done),
            "epochs_done": int(epochs_done),
            "epoch_batches_done": int(epoch_batches_done),
            **trainer.toolkit_state(),
        },
    }
    state.update(extra)
    return state


def keep_newest(run_dir: str | os.PathLike[str], prefix: str, keep: int) -> None:
    """Delete all but the ``keep`` newest ``{prefix}_N.pth`` files (highest N)."""
    files = sorted((checkpoint_step(p), p) for p in Path(run_dir).glob(f"{prefix}_*.pth") if checkpoint_step(p) is not None)
    for _, path in files[: max(0, len(files) - keep)]:
        path.unlink(missing_ok=True)
