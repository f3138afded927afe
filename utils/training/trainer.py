"""The toolkit's adaptation of Coqui's Trainer (subclass, not a fork).

Upstream behaviours this works around (Trainer 0.4):
- No hook runs after an evaluation, so nothing can step ReduceLROnPlateau with the eval loss:
  ``eval_epoch`` is extended to call the LR bridge and write ``metrics.jsonl``.
- ``run_eval_steps`` counts micro-batches, and mid-epoch evaluations average their losses with
  earlier evaluations of the same epoch (one ``KeepAverage`` per epoch): evaluations here are
  scheduled in optimizer steps and each starts from a fresh average.
- A mid-epoch evaluation ends with ``model.train()``, which also puts the frozen DVAE in train mode;
  the toolkit restores GPTTrainer's "only the GPT trains" state.
- When the last step of an epoch is also an evaluation step, the epoch-end evaluation would
  evaluate the same weights again and count twice for the plateau rule: it is skipped.
- ``fit()`` turns every exception into ``sys.exit(1)`` and deletes a run folder that has no
  checkpoint (taking the preflight report and logs with it): here errors propagate and the run
  folder stays. A final checkpoint is written when training ends, so ``--continue`` always has one.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable

from trainer import Trainer
from trainer.generic_utils import KeepAverage

from utils.training.lr_schedule import LRBridge

logger = logging.getLogger(__name__)

LOSS_KEYS = ("loss", "loss_text_ce", "loss_mel_ce")


class ToolkitTrainer(Trainer):
    """Coqui Trainer with evaluation-driven LR scheduling and per-evaluation metrics.

    Args:
        eval_every_steps: evaluate every this many optimizer steps (None: once per epoch).
        on_evaluation: optional callables ``fn(trainer, record)`` run after each evaluation record
            is written (plots, health checks).
        Other arguments are Coqui's ``Trainer`` arguments.
    """

    def __init__(
        self,
        *args: Any,
        eval_every_steps: int | None = None,
        on_evaluation: list[Callable[["ToolkitTrainer", dict[str, Any]], None]] | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("parse_command_line_args", False)  # never parse the caller's sys.argv
        self.eval_every_steps = eval_every_steps
        self.on_evaluation_hooks = list(on_evaluation or [])
        self._last_eval_step: int | None = None
        self._last_eval_opt_step = -1
        self._train_sums: dict[str, float] = {}
        self._train_count = 0
        self._train_started = time.time()
        self.evaluation_records: list[dict[str, Any]] = []
        super().__init__(*args, **kwargs)
        self.metrics_path = Path(self.output_path) / "metrics.jsonl"

    # --- helpers ------------------------------------------------------------------------------

    @property
    def lr_bridge(self) -> LRBridge | None:
        scheduler = self.scheduler[0] if self.scheduler else None
        return scheduler if isinstance(scheduler, LRBridge) else None

    @property
    def optimizer_steps(self) -> int:
        bridge = self.lr_bridge
        return bridge.optimizer_steps if bridge else self.total_steps_done // max(1, self.grad_accum_steps)

    def _restore_gpt_only_training(self) -> None:
        model = self._get_model()
        if hasattr(model, "on_train_epoch_start"):
            model.on_train_epoch_start(self)  # GPTTrainer: whole model eval(), GPT train()

    # --- training steps -----------------------------------------------------------------------

    def train_step(self, batch: Any, batch_n_steps: int, step: int, loader_start_time: float) -> Any:
        before = self.optimizer_steps
        outputs, loss_dict = super().train_step(batch, batch_n_steps, step, loader_start_time)
        if loss_dict:
            for key in (*LOSS_KEYS, "grad_norm"):
                value = loss_dict.get(key)
                if value is not None:
                    value = float(value)
                    if key == "loss":  # Trainer divides the loss by grad_accum_steps before logging
                        value *= self.grad_accum_steps
                    self._train_sums[key] = self._train_sums.get(key, 0.0) + value
            self._train_count += 1
        after = self.optimizer_steps
        if (
            self.config.run_eval
            and self.eval_every_steps
            and after != before
            and after % self.eval_every_steps == 0
        ):
            self.eval_epoch()
            self._restore_gpt_only_training()
        return outputs, loss_dict

    # --- evaluation ---------------------------------------------------------------------------

    def eval_epoch(self) -> None:
        if self._last_eval_step == self.total_steps_done:
            logger.debug("step %d already evaluated; skipping the repeated evaluation", self.total_steps_done)
            return
        self.keep_avg_eval = KeepAverage()
        super().eval_epoch()
        self._last_eval_step = self.total_steps_done
        self._after_evaluation()

    def _after_evaluation(self) -> None:
        avg = self.keep_avg_eval.avg_values if self.keep_avg_eval is not None else {}
        eval_losses = {k: float(avg[f"avg_{k}"]) for k in LOSS_KEYS if f"avg_{k}" in avg}
        eval_loss = eval_losses.get("loss")
        bridge = self.lr_bridge
        event = bridge.on_evaluation(eval_loss) if bridge is not None else {}
        n = max(1, self._train_count)
        train = {k: v / n for k, v in self._train_sums.items()} if self._train_count else {}
        record: dict[str, Any] = {
            "step": self.total_steps_done,
            "optimizer_step": self.optimizer_steps,
            "epoch": self.epochs_done,
            "lr": bridge.current_lr() if bridge else self.optimizer[0].param_groups[0]["lr"],
            "lr_before": event.get("lr_before"),
            "lr_reduced": event.get("reduced", False),
            "train_loss": train.get("loss"),
            "eval_loss": eval_loss,
            "best_eval_loss": event.get("best_eval_loss"),
            "evals_without_improvement": event.get("num_bad_evals"),
            "train_steps_averaged": self._train_count,
            "elapsed_s": round(time.time() - self._train_started, 2),
        }
        for key in LOSS_KEYS[1:]:
            record[f"train_{key}"] = train.get(key)
            record[f"eval_{key}"] = eval_losses.get(key)
        record["grad_norm"] = train.get("grad_norm")
        record = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        if eval_loss is not None and not math.isfinite(eval_loss):
            record["eval_loss_nonfinite"] = str(eval_loss)
        self._train_sums, self._train_count = {}, 0
        self.evaluation_records.append(record)
        if self.args.rank in (None, 0):
            with open(self.metrics_path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")
        logger.info(
            "evaluation at step %d (optimizer step %d): eval loss %s, train loss %s, LR %.3g",
            record["step"], record["optimizer_step"], _fmt(eval_loss), _fmt(record["train_loss"]), record["lr"],
        )  # fmt: skip
        for hook in self.on_evaluation_hooks:
            hook(self, record)

    # --- fit ----------------------------------------------------------------------------------

    def fit(self) -> None:
        """Train for the configured epochs; errors propagate and the run folder is kept."""
        try:
            self._fit()
        except KeyboardInterrupt:
            logger.info("interrupted: saving a checkpoint in %s", self.output_path)
            self.save_checkpoint()
            raise
        finally:
            if self.args.rank in (None, 0):
                self.dashboard_logger.finish()
        if self.args.rank in (None, 0):
            self.save_checkpoint()


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.5f}"
