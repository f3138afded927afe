"""A random DVAE's codebook collapses onto one code; restarting unused codes keeps many in use."""

from __future__ import annotations

import torch

from utils.training.dvae.codebook import CodebookRestart
from utils.training.dvae.model import build_dvae


def _codes_in_use(restart: bool) -> tuple[int, int]:
    torch.manual_seed(0)
    dvae = build_dvae()
    dvae.train()
    hook = CodebookRestart(dvae.codebook, every=2, from_data=True) if restart else None
    g = torch.Generator().manual_seed(1)
    sounds = torch.randn(16, 80, generator=g) * 3 - 5  # 16 distinct "sounds", each held for 4 mel frames

    def batch() -> torch.Tensor:
        pick = torch.randint(16, (2 * 16,), generator=g)
        mel = sounds[pick].reshape(2, 16, 80).permute(0, 2, 1).repeat_interleave(4, dim=2)
        return mel + 0.1 * torch.randn(mel.shape, generator=g)

    with torch.no_grad():
        for _ in range(3):
            dvae(batch())
        dvae.eval()
        codes = dvae.get_codebook_indices(batch())
    return int(codes.unique().numel()), (hook.restarted if hook else 0)


def test_restarting_unused_codes_keeps_the_codebook_in_use():
    collapsed, _ = _codes_in_use(restart=False)
    kept, moved = _codes_in_use(restart=True)
    assert collapsed <= 2  # the random codebook sits far from the encoder's outputs: one code wins
    assert kept >= 12 and moved >= 1024  # placed on the data, every sound gets codes of its own
