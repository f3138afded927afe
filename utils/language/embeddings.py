"""Grow the GPT's text embedding and text head for new token ids, and a warm-up for new rows only.

Coqui's GPTTrainer pads a checkpoint with ``torch.randn`` rows (N(0, 1), far off the pretrained
scale of ~0.02) when token counts differ. Here new rows start at the pretrained rows' mean plus
per-dimension noise at their standard deviation, so a new token looks like a typical old token,
and every old row stays bit-identical.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from utils.errors import LanguageError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResizeInfo:
    """Old and new text-token counts; new ids are ``old_num_tokens .. new_num_tokens - 1``."""

    old_num_tokens: int
    new_num_tokens: int

    @property
    def num_added(self) -> int:
        return self.new_num_tokens - self.old_num_tokens


def _new_rows(old: torch.Tensor, count: int, generator: torch.Generator, noise_scale: float) -> torch.Tensor:
    """``count`` rows at ``old``'s per-column mean plus noise at its per-column std."""
    ref = old.detach().float()
    mean = ref.mean(dim=0)
    std = ref.std(dim=0) if ref.shape[0] > 1 else torch.zeros_like(mean)
    noise = torch.randn((count, *mean.shape), generator=generator)
    return (mean + noise_scale * std * noise).to(dtype=old.dtype)


@torch.no_grad()
def resize_text_embeddings(gpt: Any, new_num_tokens: int, seed: int = 0, noise_scale: float = 1.0) -> ResizeInfo:
    """Grow ``gpt.text_embedding`` and ``gpt.text_head`` to ``new_num_tokens`` rows, in place.

    Works on Coqui's ``TTS.tts.layers.xtts.gpt.GPT``: replaces ``text_embedding`` (nn.Embedding)
    and ``text_head`` (nn.Linear) with larger modules on the same device/dtype, copies the old rows
    exactly, initialises new rows (embedding and head weight: column mean + ``noise_scale`` x
    column std x N(0, 1); head bias: mean of the old biases) and sets ``gpt.number_text_tokens``.
    ``start_text_token``/``stop_text_token`` come from the vocab ([START], [STOP]) and keep their
    ids, so nothing else changes. The owning ``Xtts`` must also get
    ``args.gpt_number_text_tokens = new_num_tokens`` so a saved checkpoint reloads (see
    :func:`grow_xtts_text_vocab`).

    Call it before the optimizer is built: the parameters are new objects.

    Raises:
        LanguageError: if ``new_num_tokens`` is smaller than the current count.
    """
    old_emb: nn.Embedding = gpt.text_embedding
    old_head: nn.Linear = gpt.text_head
    old_n = old_emb.num_embeddings
    if old_head.out_features != old_n:
        raise LanguageError(f"text_embedding has {old_n} rows but text_head {old_head.out_features}; not an XTTS GPT")
    if new_num_tokens < old_n:
        raise LanguageError(f"cannot shrink the text embedding from {old_n} to {new_num_tokens} tokens")
    info = ResizeInfo(old_n, new_num_tokens)
    if new_num_tokens == old_n:
        return info
    count = new_num_tokens - old_n
    generator = torch.Generator().manual_seed(seed)
    weight = old_emb.weight
    emb = nn.Embedding(new_num_tokens, old_emb.embedding_dim, device=weight.device, dtype=weight.dtype)
    emb.weight.copy_(torch.cat([weight, _new_rows(weight, count, generator, noise_scale).to(weight.device)]))
    emb.weight.requires_grad_(weight.requires_grad)

    hw = old_head.weight
    has_bias = old_head.bias is not None
    head = nn.Linear(old_head.in_features, new_num_tokens, bias=has_bias, device=hw.device, dtype=hw.dtype)
    head.weight.copy_(torch.cat([hw, _new_rows(hw, count, generator, noise_scale).to(hw.device)]))
    head.weight.requires_grad_(hw.requires_grad)
    if has_bias:
        bias = old_head.bias
        head.bias.copy_(torch.cat([bias, bias.mean().expand(count)]))
        head.bias.requires_grad_(bias.requires_grad)

    gpt.text_embedding = emb
    gpt.text_head = head
    gpt.number_text_tokens = new_num_tokens
    logger.info(
        "text embedding and head grown %d -> %d tokens (new rows: pretrained mean + std noise)", old_n, new_num_tokens
    )
    return info


def grow_xtts_text_vocab(xtts: Any, new_num_tokens: int, seed: int = 0) -> ResizeInfo:
    """:func:`resize_text_embeddings` on ``xtts.gpt`` plus ``xtts.args.gpt_number_text_tokens``."""
    info = resize_text_embeddings(xtts.gpt, new_num_tokens, seed=seed)
    xtts.args.gpt_number_text_tokens = new_num_tokens
    return info


class NewTokenWarmup:
    """Train only the new text-token rows for the first ``steps`` optimizer steps.

    While active: every other GPT parameter has ``requires_grad=False`` (so the optimizer skips
    it: no grad, no weight decay), gradient hooks zero the old rows' gradients of
    ``text_embedding.weight``/``text_head.weight``/``text_head.bias``, and :meth:`after_step`
    copies the saved old rows back (AdamW's decoupled weight decay would otherwise shrink them).
    At ``steps`` it restores ``requires_grad`` and removes the hooks.

    Trainer use (Coqui Trainer calls a model's ``on_train_step_end(trainer)`` after the optimizer
    step)::

        self.warmup = NewTokenWarmup(self.xtts.gpt, first_new_id=info.old_num_tokens, steps=N)
        self.warmup.start()                                    # after the resize, before fit
        def on_train_step_end(self, trainer):
            self.warmup.after_step(trainer.total_steps_done)   # steps done so far

    On a resumed run past ``steps`` simply do not call :meth:`start`.
    """

    def __init__(self, gpt: Any, first_new_id: int, steps: int):
        if steps < 0:
            raise LanguageError(f"warm-up steps must be >= 0, got {steps}")
        self.gpt = gpt
        self.first_new_id = first_new_id
        self.steps = steps
        self.active = False
        self._hooks: list = []
        self._frozen: list[nn.Parameter] = []
        self._saved: dict[str, torch.Tensor] = {}

    def _row_params(self) -> dict[str, nn.Parameter]:
        params = {
            "text_embedding.weight": self.gpt.text_embedding.weight,
            "text_head.weight": self.gpt.text_head.weight,
        }
        if self.gpt.text_head.bias is not None:
            params["text_head.bias"] = self.gpt.text_head.bias
        return params

    def start(self) -> None:
        """Freeze everything but the new rows (no-op when ``steps`` is 0)."""
        if self.active or self.steps == 0:
            return
        rows = self._row_params()
        keep = {id(p) for p in rows.values()}
        self._frozen = [p for p in self.gpt.parameters() if p.requires_grad and id(p) not in keep]
        for p in self._frozen:
            p.requires_grad_(False)
        n = self.first_new_id
        for name, p in rows.items():
            p.requires_grad_(True)
            self._saved[name] = p.detach()[:n].clone()
            self._hooks.append(p.register_hook(lambda g, n=n: torch.cat([torch.zeros_like(g[:n]), g[n:]])))
        self.active = True
        logger.info("warm-up: only text-token rows >= %d train for %d steps", n, self.steps)

    @torch.no_grad()
    def after_step(self, steps_done: int) -> None:
        """Restore old rows after an optimizer step; end the warm-up once ``steps_done >= steps``."""
        if not self.active:
            return
        for name, p in self._row_params().items():
            p[: self.first_new_id].copy_(self._saved[name].to(p.device))
        if steps_done >= self.steps:
            self.stop()

    def stop(self) -> None:
        """Unfreeze and remove the hooks."""
        for h in self._hooks:
            h.remove()
        for p in self._frozen:
            p.requires_grad_(True)
        self._hooks, self._frozen, self._saved = [], [], {}
        if self.active:
            logger.info("warm-up over: all parameters train")
        self.active = False
