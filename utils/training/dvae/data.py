"""The DVAE stage's data: fixed-length crops of the dataset's clips at 22,050 Hz.

Every item is ``crop_frames`` mel frames of audio (``crop_frames * 256`` samples), so a batch
needs no padding and the DVAE's losses, which average over every frame, see only real audio. A
clip shorter than one crop is zero-padded (silence, as the GPT stage pads its batches).

- Training (:class:`CropDataset`): each clip gives ``crops_per_clip`` items (default: one per crop
  length of its audio), each a crop at a random offset drawn when the item is read; the loader
  shuffles with a seeded generator.
- Evaluation (:class:`WindowDataset`): every full crop-length window of each clip, in order, so
  each evaluation scores the same audio.

Only the header of each file is read up front; a crop reads just its samples when the file is
already at 22,050 Hz (soundfile seeks), else the whole clip is decoded and resampled.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from utils.data.audio import audio_info, load_audio, to_mono
from utils.errors import DataError
from utils.training.dvae.config import HOP_LENGTH, SAMPLE_RATE

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClipInfo:
    """One clip: its file, its length in samples at 22,050 Hz and the file's own rate."""

    path: str
    num_samples: int
    file_rate: int


def clip_infos(rows: Sequence[dict[str, Any]]) -> list[ClipInfo]:
    """Read each row's audio header (``row["audio_file"]``).

    Raises:
        DataError: a file that cannot be read, naming it and the fix.
    """
    clips = []
    for row in rows:
        path = str(row["audio_file"])
        info = audio_info(path)  # DataError with the file and the fix
        clips.append(ClipInfo(path, int(round(info.frames * SAMPLE_RATE / info.sample_rate)), info.sample_rate))
    return clips


def read_segment(clip: ClipInfo, offset: int, length: int) -> np.ndarray:
    """``length`` samples of ``clip`` from ``offset`` (22,050 Hz mono float32), zero-padded at the end."""
    import soundfile as sf

    if clip.file_rate == SAMPLE_RATE:
        data, _ = sf.read(clip.path, start=offset, frames=length, dtype="float32", always_2d=True)
        audio = to_mono(data)
    else:
        audio = load_audio(clip.path, SAMPLE_RATE)[0][offset : offset + length]
    out = np.zeros(length, dtype=np.float32)
    out[: len(audio)] = np.clip(audio[:length], -1.0, 1.0)
    return out


def load_clip(path: str | Path) -> torch.Tensor:
    """A whole clip as a (1, samples) float tensor at 22,050 Hz (held-out metrics)."""
    audio, _ = load_audio(path, SAMPLE_RATE)
    return torch.from_numpy(np.clip(audio, -1.0, 1.0)).unsqueeze(0)


class CropDataset(Dataset):
    """Training items: random crops, ``crops_per_clip`` per clip (None: one per crop length of audio)."""

    def __init__(self, clips: list[ClipInfo], crop_frames: int, crops_per_clip: int | None = None) -> None:
        self.clips = clips
        self.crop_samples = int(crop_frames) * HOP_LENGTH
        self.index = [
            i
            for i, clip in enumerate(clips)
            for _ in range(crops_per_clip or max(1, round(clip.num_samples / self.crop_samples)))
        ]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        clip = self.clips[self.index[item]]
        room = max(0, clip.num_samples - self.crop_samples)
        # torch's RNG: seeded per loader worker by the DataLoader (from its seeded generator)
        offset = int(torch.randint(0, room + 1, ()).item())
        return {"wav": torch.from_numpy(read_segment(clip, offset, self.crop_samples)).unsqueeze(0)}


class WindowDataset(Dataset):
    """Evaluation items: every full crop-length window of each clip (a short clip: one padded window)."""

    def __init__(self, clips: list[ClipInfo], crop_frames: int) -> None:
        self.clips = clips
        self.crop_samples = int(crop_frames) * HOP_LENGTH
        self.windows = [
            (i, k * self.crop_samples)
            for i, clip in enumerate(clips)
            for k in range(max(1, clip.num_samples // self.crop_samples))
        ]

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        clip_index, offset = self.windows[item]
        audio = read_segment(self.clips[clip_index], offset, self.crop_samples)
        return {"wav": torch.from_numpy(audio).unsqueeze(0)}


def collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack equal-length crops into ``{"wav": (batch, 1, samples)}``."""
    return {"wav": torch.stack([item["wav"] for item in items])}


def build_loader(
    rows: Sequence[dict[str, Any]],
    *,
    crop_frames: int,
    batch_size: int,
    is_eval: bool,
    crops_per_clip: int | None = None,
    num_workers: int = 0,
    seed: int = 1,
) -> DataLoader:
    """The DataLoader of ``rows``: shuffled random crops for training, fixed windows for evaluation.

    Raises:
        DataError: no rows, or a file that cannot be read.
    """
    if not rows:
        split = "eval" if is_eval else "training"
        raise DataError(
            f"the DVAE stage got no {split} rows; it needs held-out clips (metadata_eval.csv) and training clips"
        )
    clips = clip_infos(rows)
    dataset: Dataset = WindowDataset(clips, crop_frames) if is_eval else CropDataset(clips, crop_frames, crops_per_clip)
    kwargs: dict[str, Any] = {
        "batch_size": batch_size,
        "collate_fn": collate,
        "num_workers": num_workers,
        "pin_memory": torch.cuda.is_available(),
        "persistent_workers": num_workers > 0,
        "drop_last": False,
    }
    logger.info(
        "DVAE %s data: %d clips, %d %s of %d mel frames",
        "eval" if is_eval else "training",
        len(clips),
        len(dataset),
        "windows" if is_eval else "crops per epoch",
        crop_frames,
    )
    if is_eval:
        return DataLoader(dataset, shuffle=False, **kwargs)
    generator = torch.Generator().manual_seed(int(seed))
    return DataLoader(dataset, shuffle=True, generator=generator, **kwargs)
