"""The toolkit's trainer for the decoder GAN: where utils/training/trainer.py still assumes one optimizer.

``ToolkitTrainer`` (utils/training/trainer.py) drives the GPT, a one-optimizer model. Under Coqui's
multi-optimizer ``train_step`` (``optimizer_idx`` 0 = discriminator, 1 = generator, as
``TTS.vocoder.models.gan.GAN`` orders them) it gets these wrong, and this subclass sets them right:

- ``lr_bridge`` is ``scheduler[0]``: the discriminator's, which does not step during the warm
  start, so the optimizer-step count, ``eval_every_steps``, the logged LR and the plateau rule
  would follow the discriminator. Here it is the generator's bridge (``scheduler[1]``); the
  discriminator's bridge gets the same evaluations, so its LR takes the same plateau cuts.
- ``LOSS_KEYS`` are ``loss``/``loss_text_ce``/``loss_mel_ce``, but Coqui renames each optimizer's
  ``loss`` to ``loss_0``/``loss_1`` (train and eval), so train_loss, eval_loss, the best model, the
  LR plateau rule, early stopping and the health checks would see no loss at all. Here ``loss`` is
  the generator's mel L1 in training (its weighted total jumps when the adversarial terms join,
  which the health monitor would report as a spike) and the held-out mel L1 in evaluation
  (``loss_1``, see utils/training/decoder/gan.py); ``grad_norm`` is the generator's.
- metrics.jsonl has no column for the GAN's terms: they are merged into each evaluation's row
  (utils/training/decoder/metrics.py), their sums kept in checkpoints for an exact resume, and
  ``decoder_curves.png`` is redrawn.

Left as they are (harmless here, for the model-agnostic trainer to settle): a divergence cuts only
the generator's LR; the update-ratio probe measures the first optimizer stepped on its steps (the
discriminator once it trains); the divergence and Ctrl-C advice name ``utils/gpt_train.py``;
``train_samples_per_s`` is empty (the trainer counts clips in dict batches; Coqui's GAN batches
are lists).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from utils.training.decoder.metrics import PeriodSums, decoder_columns, merge_row, plot_decoder_curves
from utils.training.lr_schedule import LRBridge
from utils.training.trainer import ToolkitTrainer

logger = logging.getLogger(__name__)

GENERATOR, DISCRIMINATOR = 1, 0  # Coqui's GAN order (TTS.vocoder.models.gan.GAN.get_optimizer)
PLOT_MIN_INTERVAL_S = 60.0  # a redraw takes seconds on a busy CPU; the stage draws once more at its end


class DecoderTrainer(ToolkitTrainer):
    """``ToolkitTrainer`` for :class:`utils.training.decoder.gan.DecoderGAN` (see the module docstring).

    Args:
        plots: redraw decoder_curves.png after an evaluation (at most once a minute).
        Other arguments are :class:`ToolkitTrainer`'s.
    """

    def __init__(self, *args: Any, plots: bool = True, **kwargs: Any) -> None:
        self.decoder_sums = PeriodSums()
        self.plots = plots
        self._last_plot = time.time()  # the first redraw a minute in; short runs draw once, at the stage's end
        super().__init__(*args, **kwargs)

    def _bridge(self, index: int) -> LRBridge | None:
        scheduler = self.scheduler[index] if self.scheduler and len(self.scheduler) > index else None
        return scheduler if isinstance(scheduler, LRBridge) else None

    @property
    def lr_bridge(self) -> LRBridge | None:
        """The generator's LR bridge (ToolkitTrainer's is ``scheduler[0]``, the discriminator's here)."""
        return self._bridge(GENERATOR)

    @property
    def disc_bridge(self) -> LRBridge | None:
        return self._bridge(DISCRIMINATOR)

    def detach_loss_dict(
        self,
        loss_dict: dict[str, Any],
        *,
        step_optimizer: bool,
        optimizer_idx: int | None = None,
        grad_norm: Any = None,
    ) -> dict[str, Any]:
        """Coqui's, plus the toolkit's ``loss`` and ``grad_norm`` for the generator; the terms summed."""
        out = super().detach_loss_dict(
            loss_dict, step_optimizer=step_optimizer, optimizer_idx=optimizer_idx, grad_norm=grad_norm
        )
        if optimizer_idx == GENERATOR:
            out["loss"] = out.get("G_l1_spec_loss")
            if f"grad_norm_{GENERATOR}" in out:
                out["grad_norm"] = out[f"grad_norm_{GENERATOR}"]
        self.decoder_sums.add({k: _number(v) for k, v in out.items() if k not in ("loss", "grad_norm")})
        return out

    def eval_step(self, batch: dict[str, Any], step: int) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """Coqui's, plus ``avg_loss`` = the held-out mel L1 (the generator's ``loss_1``) for the toolkit."""
        outputs, loss_dict = super().eval_step(batch, step)
        if loss_dict and f"loss_{GENERATOR}" in loss_dict and self.keep_avg_eval is not None:
            self.keep_avg_eval.update_values({"avg_loss": loss_dict[f"loss_{GENERATOR}"]})
        return outputs, loss_dict

    def eval_epoch(self) -> None:
        """The toolkit's evaluation, then the discriminator's plateau rule and the GAN columns of its row."""
        before = len(self.evaluation_records)
        try:
            super().eval_epoch()
        finally:
            if len(self.evaluation_records) > before:
                self._after_decoder_evaluation(self.evaluation_records[-1])

    def _after_decoder_evaluation(self, record: dict[str, Any]) -> None:
        disc = self.disc_bridge
        if disc is not None:
            disc.on_evaluation(record.get("eval_loss"))
        avg = self.keep_avg_eval.avg_values if self.keep_avg_eval is not None else {}
        row = decoder_columns(self.decoder_sums.take(), avg)
        row["lr_disc"] = disc.current_lr() if disc is not None else None
        row["discriminator_on"] = bool(getattr(self.model, "train_disc", False))
        record.update(row)
        if self.args.rank not in (None, 0):
            return
        merge_row(self.metrics_path, int(record["step"]), row)
        if self.plots and time.time() - self._last_plot >= PLOT_MIN_INTERVAL_S:
            self._last_plot = time.time()
            try:
                plot_decoder_curves(self.output_path, warm_start_steps=self.config.steps_to_start_discriminator)
            except (OSError, RuntimeError, ValueError) as exc:  # a plot must never stop training
                logger.warning("could not draw the decoder curves (%s: %s)", type(exc).__name__, exc)

    def toolkit_state(self) -> dict[str, Any]:
        """ToolkitTrainer's, plus the GAN terms' sums since the last evaluation."""
        return {**super().toolkit_state(), "decoder_sums": self.decoder_sums.state_dict()}

    def restore_model(self) -> None:
        super().restore_model()
        if not self.continue_run:
            return
        from utils.training.checkpoints import load_checkpoint

        state = load_checkpoint(self.args.restore_path, mmap=True).get("toolkit_state") or {}
        self.decoder_sums.load_state_dict(state.get("decoder_sums") or {})

    @property
    def stage_dir(self) -> Path:
        return Path(self.output_path)


def _number(value: Any) -> Any:
    """A float for a one-element tensor (Coqui leaves the clipped gradient norm a tensor)."""
    return float(value) if torch.is_tensor(value) and value.numel() == 1 else value
