"""Keep the DVAE's codebook in use: codes that no input picks are moved onto inputs.

XTTS's DVAE quantizes with an exponential-moving-average codebook (``Quantize`` in
TTS/tts/layers/xtts/dvae.py: 1,024 vectors, decay 0.99). A code that no frame picks never moves
again, and a codebook that starts far from the encoder's outputs (a DVAE trained from random
weights, or a language whose sounds the base never heard) ends with a handful of codes in use:
the GPT's targets then carry little of the audio. Coqui's own remedy (``balancing_heuristic``) is
off in the DVAE GPTTrainer builds and resets every code used by under 1% of frames, which with
1,024 codes is nearly all of them.

:class:`CodebookRestart` is the usual VQ-VAE remedy instead (as in Jukebox and SoundStream): a
forward pre-hook on the quantizer that, while training, every ``every`` calls, moves each code
whose moving-average use fell under ``min_use`` frames onto an encoder output of the current batch
(chosen at random, with a little noise); ``from_data=True`` also places the whole codebook on
encoder outputs at the first training call. Used codes are never touched, so a fine-tune of a
well-used codebook changes only codes its data never picked.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)


class CodebookRestart:
    """A forward pre-hook on a ``Quantize`` (see the module docstring).

    Args:
        quantizer: the DVAE's ``codebook`` module (buffers ``embed`` (dim, n), ``embed_avg``,
            ``cluster_size`` (n,)).
        every: training calls between restarts.
        min_use: a code whose ``cluster_size`` (moving-average frames a call) is under this is dead.
        from_data: place every code on an encoder output at the first training call.
        seed: the generator for the choice of inputs (restarts are reproducible).
    """

    def __init__(
        self, quantizer: nn.Module, *, every: int = 20, min_use: float = 0.03, from_data: bool = False, seed: int = 0
    ) -> None:
        self.quantizer = quantizer
        self.every = max(1, int(every))
        self.min_use = float(min_use)
        self.from_data = from_data
        self.calls = 0
        self.restarted = 0  # codes moved so far
        self.generator = torch.Generator().manual_seed(seed)
        self.handle = quantizer.register_forward_pre_hook(self._before)

    def remove(self) -> None:
        self.handle.remove()

    def _before(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if not module.training or not args:
            return
        self.calls += 1
        flat = args[0].detach().reshape(-1, module.dim)
        if self.from_data and self.calls == 1:
            self.restarted += self._place(module, torch.ones(module.n_embed, dtype=torch.bool), flat)
            logger.info("DVAE codebook placed on %d encoder outputs", module.n_embed)
        elif self.calls % self.every == 0:
            dead = module.cluster_size < self.min_use
            if bool(dead.any()):
                moved = self._place(module, dead.cpu(), flat)
                self.restarted += moved
                logger.info("DVAE codebook: %d unused codes moved onto encoder outputs", moved)

    @torch.no_grad()
    def _place(self, module: nn.Module, which: torch.Tensor, flat: torch.Tensor) -> int:
        """Move the codes in ``which`` (bool, n) onto random rows of ``flat`` (frames, dim)."""
        index = which.nonzero().flatten()
        if not len(index) or not len(flat):
            return 0
        pick = torch.randint(len(flat), (len(index),), generator=self.generator).to(flat.device)
        vectors = flat[pick].float()
        vectors = vectors + 0.01 * vectors.std() * torch.randn(vectors.shape, generator=self.generator).to(flat.device)
        index = index.to(module.embed.device)
        module.embed[:, index] = vectors.t().to(module.embed.dtype)
        module.embed_avg[:, index] = vectors.t().to(module.embed_avg.dtype)
        module.cluster_size[index] = 1.0  # a fresh code counts as used once, so it gets time to be picked
        return len(index)
