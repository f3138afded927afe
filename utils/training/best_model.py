"""The best model: ``best_model_N.pth`` at every evaluation that improves the eval loss, written beside training.

Coqui Trainer 0.4 saves the best model only at epoch end (``Trainer.save_best_model``), with the
optimizer state, and makes ``best_model.pth`` a byte copy. Here it is saved at every evaluation
that improves the eval loss (so early stopping keeps the best weights even with mid-epoch
evaluations), weights only (the optimizer state, twice the weights, lives in ``checkpoint_N.pth``
for resuming). A CPU copy of the state is taken at the evaluation and written atomically on a
worker thread while training goes on; ``best_model.pth`` is then a hard link to it. The next
checkpoint, a divergence reload, the end of training and Ctrl-C wait for the write.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

from utils.training import checkpoints

logger = logging.getLogger(__name__)


def improves(best_loss: Any, eval_loss: float | None) -> bool:
    """``eval_loss`` is finite and lower than the best so far (Coqui's ``best_loss`` dict; none yet: any)."""
    best = best_loss.get("eval_loss") if isinstance(best_loss, dict) else None
    return eval_loss is not None and math.isfinite(eval_loss) and (best is None or eval_loss < best)


class BestModelWriter:
    """Writes ``best_model_N.pth`` beside training, one file at a time."""

    def __init__(self) -> None:
        self._writer = checkpoints.BackgroundWriter("best-model write")

    def save_if_improved(
        self, trainer: Any, eval_loss: float | None, train_loss: float | None, counts: dict[str, int]
    ) -> bool:
        """Write the trainer's weights as the best model when ``eval_loss`` improves ``trainer.best_loss``.

        Args:
            trainer: the toolkit trainer (its weights, config and ``best_loss``, updated here).
            eval_loss / train_loss: the evaluation's deciding losses.
            counts: the exact step/epoch counts the file is named and stamped with.

        Returns:
            True when a write was started.
        """
        if not improves(trainer.best_loss, eval_loss):
            return False
        model_loss = {"train_loss": train_loss if train_loss is not None else math.inf, "eval_loss": eval_loss}
        run_dir = Path(trainer.output_path)
        path = run_dir / f"best_model_{counts['steps_done']}.pth"
        keep_all = bool(trainer.config.save_all_best)
        started = time.time()
        self.wait()  # the previous best model is complete (and any error in it raised) first
        state = checkpoints.cpu_copy(
            checkpoints.training_state(trainer, **counts, model_loss=model_loss, optimizer=False)
        )
        copied = time.time() - started
        trainer.best_loss = model_loss

        def write() -> None:
            begun = time.time()
            checkpoints.atomic_torch_save(state, path)
            for old in run_dir.glob("best_model_*.pth"):
                if old != path and not keep_all:
                    old.unlink(missing_ok=True)
            checkpoints.atomic_link(path, run_dir / "best_model.pth")
            logger.info(
                "best model so far (eval loss %.5f): %s (written in %.1f s beside training; training "
                "waited %.1f s for the copy)",
                eval_loss,
                path.name,
                time.time() - begun,
                copied,
            )

        self._writer.submit(write)
        return True

    def wait(self) -> None:
        """Block until the best model being written is on disk (raise its error)."""
        self._writer.wait()


def best_loss_on_disk(run_dir: str | Path, best_loss: Any) -> dict[str, float] | None:
    """The run's best models' lowest eval loss as Coqui's ``best_loss`` dict, when it beats ``best_loss``.

    They can be newer than the checkpoint a ``--continue`` resumes from; a worse model must not
    replace them.
    """
    best = checkpoints.best_eval_loss(run_dir)
    current = best_loss.get("eval_loss") if isinstance(best_loss, dict) else None
    if best is None or (current is not None and best["eval_loss"] >= float(current)):
        return None
    return {"train_loss": best.get("train_loss", math.inf), "eval_loss": best["eval_loss"]}
