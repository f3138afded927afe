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
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from utils.errors import DataError

# Readers live with the run folder (utils.runs); re-exported for the trainer, which writes.
from utils.runs import (  # noqa: F401
    PARTIAL_SUFFIX,
    best_eval_loss,
    checkpoint_step,
    continue_command,
    has_training_state,
    last_checkpoint,
    load_checkpoint,
    remove_partial_files,
    run_folder_of,
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


class DiskFullError(DataError):
    """The disk filled up while a checkpoint was written (the partial file is removed)."""


def _mount_point(path: Path) -> Path:
    path = path.resolve()
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


def tensor_bytes(state: Any) -> int:
    """Bytes of all tensors in a (nested) checkpoint dict: about its size on disk."""
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(tensor_bytes(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(tensor_bytes(v) for v in state)
    return 0


def _disk_full(path: Path, need: int) -> DiskFullError:
    run_dir = path.parent
    last = last_checkpoint(run_dir)
    best = run_dir / "best_model.pth"
    in_stage = run_folder_of(run_dir) != run_dir  # a DVAE or decoder stage: --continue starts it again
    if last is not None or in_stage:
        then = f"run: {continue_command(run_dir)}"
        kept = f"the last complete checkpoint is {last}" if last is not None else "no full checkpoint of the stage yet"
    elif best.is_file():
        then = f"run: python utils/gpt_train.py --restore {best} (same options)"
        kept = f"no full checkpoint yet; the best weights so far are {best}"
    else:
        then, kept = "start the run again", "no checkpoint was written yet"
    free = shutil.disk_usage(run_dir).free
    return DiskFullError(
        f"no space left on {_mount_point(run_dir)} while writing {path.name}; {kept}; "
        f"free {max(need - free, 0) / 1e9 + 0.05:.1f} GB and {then}"
    )


def _is_disk_full(exc: BaseException, folder: Path) -> bool:
    import errno

    seen: BaseException | None = exc
    while seen is not None:  # torch's zip writer may raise RuntimeError from inside the OSError
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        seen = seen.__cause__ or seen.__context__
    # or report the failed write as RuntimeError alone ("file write failed")
    return isinstance(exc, RuntimeError) and shutil.disk_usage(folder).free < (1 << 20)


def atomic_torch_save(state: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save(state, path)`` so that ``path`` is either the old file or the complete new one.

    Ctrl-C while it writes is held back until the file is complete (then raised). A full disk
    removes the partial file and raises :class:`DiskFullError` naming the way to go on.
    """
    path = Path(path)
    tmp = _partial_path(path)
    pause = os.environ.get(_PAUSE_ENV, "").rpartition(":")
    with sigint_deferred(path.name):
        try:
            with open(tmp, "wb") as fh:
                torch.save(state, _PausingWriter(fh, 1 << 20, float(pause[2])) if pause[0] == path.name else fh)
                fh.flush()
                os.fsync(fh.fileno())
        except (OSError, RuntimeError) as exc:
            tmp.unlink(missing_ok=True)
            if _is_disk_full(exc, path.parent):
                raise _disk_full(path, tensor_bytes(state)) from None
            raise
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    return path


class sigint_deferred:
    """Hold SIGINT back while a file is written (main thread only); re-raise it afterwards, or hand it
    to the enclosing deferral when nested (that one raises once its whole block is done)."""

    def __init__(self, name: str) -> None:
        self.name, self.hit, self.old = name, False, None

    def _handler(self, *_: Any) -> None:
        if not self.hit:
            logger.warning(
                "Ctrl-C: %s is being written; it finishes first (a few seconds), then the run stops", self.name
            )
        self.hit = True

    def __enter__(self) -> sigint_deferred:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            self.old = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        import signal

        if self.old is not None:
            signal.signal(signal.SIGINT, self.old)
        if self.hit and exc_type is None:
            outer = getattr(self.old, "__self__", None)
            if isinstance(outer, sigint_deferred):
                outer.hit = True  # inside a larger write (wait, then checkpoint): that one raises when done
            else:
                raise KeyboardInterrupt


def cpu_copy(state: Any) -> Any:
    """``state`` with every tensor copied to new CPU memory: what a write beside training reads."""
    if isinstance(state, torch.Tensor):
        return state.detach().to("cpu", copy=True)
    if isinstance(state, dict):
        out = {k: cpu_copy(v) for k, v in state.items()}
        if isinstance(state, OrderedDict):  # a module's state_dict: keep its version metadata too
            out = OrderedDict(out)
            if hasattr(state, "_metadata"):
                out._metadata = state._metadata  # type: ignore[attr-defined]
        return out
    if isinstance(state, (list, tuple)):
        return type(state)(cpu_copy(v) for v in state)
    return state


class BackgroundCopy:
    """:func:`cpu_copy` of ``state`` on a thread of its own; :meth:`result` waits for it.

    The tensors must not change until the copy is complete (the caller waits for :meth:`result`
    before they do). An error in the copy is raised by :meth:`result`.
    """

    def __init__(self, state: Any) -> None:
        import threading

        self._out: Any = None
        self._error: BaseException | None = None

        def run() -> None:
            try:
                self._out = cpu_copy(state)
            except BaseException as exc:  # handed to result(): the caller decides
                self._error = exc

        self._thread = threading.Thread(target=run, name="start-weights-copy", daemon=True)
        self._thread.start()

    def result(self) -> Any:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._out


class BackgroundWriter:
    """File writes on a worker thread, one at a time, while training goes on.

    :meth:`submit` waits for the previous write first, so at most one copy of the weights waits
    in memory. An error in a write (a full disk) is raised by the next :meth:`submit` or
    :meth:`wait`. The thread is not a daemon: a write that has begun finishes before the process
    exits, Ctrl-C included.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._thread: Any = None
        self._error: BaseException | None = None

    def submit(self, write: Any) -> None:
        import threading

        self.wait()

        def run() -> None:
            try:
                write()
            except BaseException as exc:  # handed to the training thread at its next wait
                logger.error("%s: %s", self.name, exc)
                self._error = exc

        self._thread = threading.Thread(target=run, name=self.name, daemon=False)
        self._thread.start()

    def wait(self) -> None:
        """Block until the write in progress (if any) is complete; raise its error.

        Ctrl-C while waiting is held back until the write is complete (a join cut short by
        KeyboardInterrupt would let the process exit under a thread still writing).
        """
        if self._thread is not None:
            with sigint_deferred(self.name):
                self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error


def free_space_warning(run_dir: str | os.PathLike[str], need: int) -> str | None:
    """A warning when the run folder's disk has less free space than the run's checkpoints need."""
    free = shutil.disk_usage(run_dir).free
    if free >= need:
        return None
    return (
        f"only {free / 1e9:.1f} GB free on {_mount_point(Path(run_dir))}; this run's checkpoints need about "
        f"{need / 1e9:.1f} GB (a full checkpoint while the previous one is kept, plus the best model); "
        f"free space or choose another --output-path"
    )


def checkpoint_space_warning(model: torch.nn.Module, run_dir: str | os.PathLike[str]) -> str | None:
    """:func:`free_space_warning` for ``model``'s checkpoints: two full checkpoints at once (the new
    one is complete before the old is deleted), each the weights plus AdamW's two moments of the
    trainable part, and one weights-only best model."""
    weights = tensor_bytes(model.state_dict())
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return free_space_warning(run_dir, 3 * weights + 4 * trainable)


def interrupted_message(run_dir: str | os.PathLike[str]) -> str:
    """After Ctrl-C: which file holds the state and the exact command that goes on from it."""
    run_dir = Path(run_dir)
    last = last_checkpoint(run_dir)
    best = run_dir / "best_model.pth"
    if last is not None:
        return f"interrupted; {last.name} holds the state; to go on: {continue_command(run_dir)}"
    if run_folder_of(run_dir) != run_dir:  # a DVAE or decoder stage with no checkpoint yet
        return f"interrupted before the stage's first checkpoint; to start the stage again: {continue_command(run_dir)}"
    if best.is_file():
        return (
            f"interrupted before a full checkpoint; the best weights are in {best}; to go on from them: "
            f"python utils/gpt_train.py --restore {best} (with the same options)"
        )
    return "interrupted before any checkpoint was written; start the run again"


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


def training_state(
    trainer: Any,
    *,
    steps_done: int,
    epochs_done: int,
    epoch_batches_done: int = 0,
    optimizer: bool = True,
    **extra: Any,
) -> dict[str, Any]:
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
        "scaler": trainer.scaler.state_dict()
        if (optimizer and trainer.scaler is not None and trainer.use_amp_scaler)
        else None,
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


def resume_state(path: str | os.PathLike[str]) -> tuple[dict[str, Any], int]:
    """The toolkit's state in a checkpoint (empty in one Coqui wrote) and the number of ranks that wrote it."""
    full = load_checkpoint(path, mmap=True)
    saved = ((full.get("config") or {}).get("toolkit") or {}).get("distributed") or {}
    return dict(full.get("toolkit_state") or {}), int(saved.get("world_size", 1))


def keep_newest(run_dir: str | os.PathLike[str], prefix: str, keep: int) -> None:
    """Delete all but the ``keep`` newest ``{prefix}_N.pth`` files (highest N)."""
    files = sorted(
        (checkpoint_step(p), p) for p in Path(run_dir).glob(f"{prefix}_*.pth") if checkpoint_step(p) is not None
    )
    for _, path in files[: max(0, len(files) - keep)]:
        path.unlink(missing_ok=True)
