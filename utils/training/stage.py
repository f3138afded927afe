"""What :class:`~utils.training.trainer.ToolkitTrainer` asks of a stage's model beyond Coqui's ``TrainerModel``.

The trainer drives every stage (the GPT; the DVAE with one optimizer; the HiFi-GAN decoder, a GAN
with two). What differs between them comes from the model through three optional attributes,
each with a default that works for any Coqui ``TrainerModel``:

``loss_keys: tuple[str, ...]``
    The losses each evaluation record holds, named as Coqui's Trainer reports them: keys of the
    loss dict that ``train_step``/``eval_step`` return, where with several optimizers the Trainer
    renames each optimizer's ``loss`` to ``loss_<idx>``. Each is recorded as ``train_<key>`` and
    ``eval_<key>``, except the first, recorded as ``train_loss``/``eval_loss``: the loss that
    decides (divergence, health checks, the LR plateau rule, early stopping, the best model).
    Default: the loss Coqui itself ranks models by (``Trainer._pick_target_avg_loss``):
    ``config.target_loss`` when set, else ``loss``; with several optimizers ``loss`` is the mean
    of the ``loss_<idx>`` present, followed by each ``loss_<idx>``. The GPT stage gives
    ``("loss", "loss_text_ce", "loss_mel_ce")``, a DVAE stage ``("loss", "recon_loss",
    "commitment_loss")``.

``after_evaluation_mode(trainer) -> None``
    Puts the model back in its training mode after an evaluation inside an epoch (Coqui's
    ``eval_epoch`` leaves the whole model in ``eval()``). Default: what Coqui's ``train_epoch``
    does at an epoch's start, ``model.train()`` and then the model's own
    ``on_train_epoch_start(trainer)``; GPTTrainer's puts the frozen DVAE back in ``eval()``
    (only the GPT trains).

``lr_optimizer: int``
    The optimizer the run is scheduled and reported by: its scheduler, when an
    :class:`~utils.training.lr_schedule.LRBridge`, is the trainer's LR bridge, its steps are the
    run's optimizer steps (evaluation cadence, records), its LR is the one recorded and its
    gradient norm the one the health checks see. Default 0. Coqui's GAN models list the
    discriminator first (``[optimizer_disc, optimizer_gen]``): a GAN stage sets 1 to be scheduled
    by its generator. Every LRBridge of the run hears each evaluation (the plateau rule) and every
    optimizer's LR is cut after a divergence.

``evaluation_fields(trainer) -> dict``
    More columns for each evaluation record, merged in before the record is written to
    metrics.jsonl and acted on (the DVAE's held-out reconstruction and codebook use, the decoder's
    discriminator LR). Default: none.

``lr_option: str``
    The command-line option that sets the LR optimizer's LR, named in the advice after a
    divergence. Default ``--lr`` (the GPT stage's).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Stage:
    """The loss names and the scheduling optimizer of the model a trainer drives (see module doc)."""

    keys: tuple[str, ...]
    num_optimizers: int = 1
    lr_optimizer: int = 0
    lr_option: str = "--lr"

    @classmethod
    def of(cls, model: Any, config: Any, num_optimizers: int) -> Stage:
        """The stage interface of ``model`` (its own attributes, else the defaults above)."""
        n = max(1, int(num_optimizers))
        keys = getattr(model, "loss_keys", None)
        if not keys:
            target = getattr(config, "target_loss", None)
            keys = (target,) if target else ("loss", *(f"loss_{i}" for i in range(n) if n > 1))
        lr_optimizer = int(getattr(model, "lr_optimizer", 0) or 0)
        if not 0 <= lr_optimizer < n:
            raise ValueError(f"lr_optimizer {lr_optimizer} names no optimizer; the model has {n}")
        return cls(tuple(str(k) for k in keys), n, lr_optimizer, str(getattr(model, "lr_option", None) or "--lr"))

    @property
    def _mean_of_optimizers(self) -> bool:
        # With several optimizers Coqui reports no "loss" of its own (each is renamed loss_<idx>).
        return self.num_optimizers > 1 and "loss" in self.keys

    @property
    def _per_optimizer(self) -> tuple[str, ...]:
        return tuple(f"loss_{i}" for i in range(self.num_optimizers)) if self._mean_of_optimizers else ()

    @property
    def grad_norm_key(self) -> str:
        """The gradient norm of the LR optimizer, as Coqui names it in a step's loss dict."""
        return "grad_norm" if self.num_optimizers == 1 else f"grad_norm_{self.lr_optimizer}"

    @property
    def step_keys(self) -> tuple[str, ...]:
        """The keys a training step's values keep: the losses (and what a mean is made of), the gradient norms."""
        norms = (
            ("grad_norm",) if self.num_optimizers == 1 else tuple(f"grad_norm_{i}" for i in range(self.num_optimizers))
        )
        return tuple(dict.fromkeys((*self.keys, *self._per_optimizer, *norms)))

    @property
    def average_keys(self) -> tuple[str, ...]:
        """Coqui's eval averages (``avg_<key>``) the recorded losses are read from."""
        real = [k for k in self.keys if not (self._mean_of_optimizers and k == "loss")]
        return tuple(f"avg_{k}" for k in dict.fromkeys((*real, *self._per_optimizer)))

    def complete(self, values: Mapping[str, float], accum: int = 1) -> dict[str, float]:
        """A step's host values with Coqui's division of ``loss`` by the accumulation undone, and the
        mean over optimizers where ``loss`` is one."""
        out = dict(values)
        divided = ("loss",) if self.num_optimizers == 1 else tuple(f"loss_{i}" for i in range(self.num_optimizers))
        for key in divided:
            if key in out:
                out[key] = float(out[key]) * accum  # the Trainer divides it by grad_accum_steps
        self._add_mean(out)
        return out

    def eval_values(self, averages: Mapping[str, Any] | None) -> dict[str, float]:
        """The recorded losses of an evaluation, from Coqui's ``KeepAverage.avg_values``."""
        avg = averages or {}
        out = {k[len("avg_") :]: float(avg[k]) for k in self.average_keys if k in avg}
        self._add_mean(out)
        return out

    def _add_mean(self, values: dict[str, float]) -> None:
        parts = [values[k] for k in self._per_optimizer if k in values]
        if parts and "loss" not in values:
            values["loss"] = sum(parts) / len(parts)

    def record(self, train: Mapping[str, float], evals: Mapping[str, float]) -> dict[str, Any]:
        """The loss fields of an evaluation record: ``train_loss``/``eval_loss``, then ``train_<k>``/``eval_<k>``."""
        out: dict[str, Any] = {"train_loss": train.get(self.keys[0]), "eval_loss": evals.get(self.keys[0])}
        for key in self.keys[1:]:
            out[f"train_{key}"] = train.get(key)
            out[f"eval_{key}"] = evals.get(key)
        out["grad_norm"] = train.get(self.grad_norm_key)
        if self.num_optimizers > 1:
            out.update({f"grad_norm_{i}": train.get(f"grad_norm_{i}") for i in range(self.num_optimizers)})
        return out


def after_evaluation_mode(model: Any, trainer: Any) -> None:
    """Put ``model`` back in training mode after a mid-epoch evaluation (its own method, else the epoch-start mode)."""
    own = getattr(model, "after_evaluation_mode", None)
    if callable(own):
        own(trainer)
        return
    model.train()
    start = getattr(model, "on_train_epoch_start", None)
    if callable(start):
        start(trainer)


def evaluation_fields(model: Any, trainer: Any) -> dict[str, Any]:
    """The model's extra columns for the evaluation record being made (none without its own method)."""
    own = getattr(model, "evaluation_fields", None)
    return dict(own(trainer) or {}) if callable(own) else {}
