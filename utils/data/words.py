"""A recognised word with its time span: what ASR gives and every later step of data prep reads.

:mod:`utils.data.transcribe` makes words, :mod:`utils.data.boundaries` moves their edges onto the
audio, :mod:`utils.data.speakers` and :mod:`utils.data.segment` group them into clips. It lives
on its own so that none of those modules has to import another for it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Word:
    """One recognised word with its time span in seconds and the ASR's confidence."""

    start: float
    end: float
    text: str
    probability: float = 1.0
