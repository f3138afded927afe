"""Latent frames against the 24 kHz target: the alignment, random training segments, whole eval clips.

How ``HifiDecoder.forward`` maps time (coqui-tts 0.28, ``TTS/tts/layers/xtts/hifigan_decoder.py``):
one latent per GPT audio code, i.e. per ``code_stride`` (1024) samples at the GPT's 22,050 Hz;
the latents are interpolated by ``code_stride / output_hop`` (x4), then by ``24000 / 22050``
(linear, ``align_corners=False``, which keeps frame centres on the same instants), and the HiFi-GAN
generator makes ``output_hop`` (256) samples of each interpolated frame. So output sample ``j`` of
a run of frames that starts at frame ``s`` sounds at ``s * 1024 / 22050 + j / 24000`` seconds, and
``L`` frames give ``floor(floor(4 L) * 24000 / 22050) * 256`` samples (F.interpolate rounds sizes
down): 8,704 for 8 frames, a little less than the 8 x 1,114.56 samples they span.

The target of a segment is therefore the 24 kHz clip from sample
``round(s * 1024 * 24000 / 22050)`` (within half a sample of the exact instant), as many samples as
the decoder makes, zero-padded past the clip's end (the DVAE saw zeros there too).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from utils.training.decoder.latents import LatentClip


@dataclass(frozen=True)
class FrameAlignment:
    """The decoder's time mapping (see the module docstring); the defaults are XTTS v2's."""

    code_stride: int = 1024  # input samples per latent frame
    output_hop: int = 256  # output samples per generator frame
    input_sample_rate: int = 22050
    output_sample_rate: int = 24000

    @classmethod
    def of(cls, decoder: Any) -> FrameAlignment:
        """The alignment of a ``HifiDecoder``."""
        return cls(
            int(decoder.ar_mel_length_compression),
            int(decoder.output_hop_length),
            int(decoder.input_sample_rate),
            int(decoder.output_sample_rate),
        )

    def output_samples(self, frames: int) -> int:
        """Samples the decoder makes from ``frames`` latent frames."""
        n = math.floor(frames * (self.code_stride / self.output_hop))
        if self.output_sample_rate != self.input_sample_rate:
            n = math.floor(n * (self.output_sample_rate / self.input_sample_rate))
        return n * self.output_hop

    def target_offset(self, frame: int) -> int:
        """The output-rate sample where latent frame ``frame`` begins (rounded to the nearest)."""
        return round(frame * self.code_stride * self.output_sample_rate / self.input_sample_rate)

    def target(self, wav: np.ndarray, start: int, frames: int) -> np.ndarray:
        """The target of ``frames`` frames from ``start``: a float32 slice of ``wav``, zero-padded at the end."""
        offset, n = self.target_offset(start), self.output_samples(frames)
        out = np.zeros(n, dtype=np.float32)
        piece = np.asarray(wav[offset : offset + n], dtype=np.float32)
        out[: piece.shape[0]] = piece
        return out


def generator_input(latents: np.ndarray, speaker: np.ndarray) -> torch.Tensor:
    """(frames, channels + speaker_dim): every frame carries its clip's speaker embedding.

    Coqui's ``GAN.train_step`` calls the generator with one tensor; the generator splits it again
    (:class:`utils.training.decoder.gan.SpeakerConditionedGenerator`).
    """
    frames = latents.shape[0]
    tiled = np.broadcast_to(np.asarray(speaker, dtype=np.float32)[None, :], (frames, speaker.shape[-1]))
    return torch.from_numpy(np.concatenate([np.asarray(latents, dtype=np.float32), tiled], axis=1))


class SegmentDataset(Dataset):
    """Random aligned segments of ``segment_frames`` latent frames: ``(input, target)`` pairs.

    Each epoch draws ``segments_per_clip`` segments from every clip (a new random start for each
    draw, from torch's RNG: seeded by the Trainer, and per worker by the DataLoader). Clips shorter
    than a segment are left out (:attr:`too_short`).
    """

    def __init__(
        self, clips: Sequence[LatentClip], align: FrameAlignment, segment_frames: int, segments_per_clip: int = 1
    ) -> None:
        self.clips = [c for c in clips if c.frames >= segment_frames]
        self.too_short = [c for c in clips if c.frames < segment_frames]
        self.align, self.segment_frames, self.segments_per_clip = align, int(segment_frames), int(segments_per_clip)

    def __len__(self) -> int:
        return len(self.clips) * self.segments_per_clip

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        clip = self.clips[index % len(self.clips)]
        start = int(torch.randint(0, clip.frames - self.segment_frames + 1, ()).item())
        return self.item(clip, start)

    def item(self, clip: LatentClip, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The segment of ``clip`` from latent frame ``start``."""
        latents = np.load(clip.latents_npy, mmap_mode="r")[start : start + self.segment_frames]
        x = generator_input(latents, np.load(clip.speaker_npy))
        wav = np.load(clip.target_npy, mmap_mode="r")
        return x, torch.from_numpy(self.align.target(wav, start, self.segment_frames)).unsqueeze(0)


class ClipDataset(Dataset):
    """Whole held-out clips (their first ``max_frames`` frames when set), batch 1: ``(input, target)``."""

    def __init__(self, clips: Sequence[LatentClip], align: FrameAlignment, max_frames: int | None = None) -> None:
        self.clips, self.align, self.max_frames = list(clips), align, max_frames

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        clip = self.clips[index]
        frames = clip.frames if self.max_frames is None else min(clip.frames, self.max_frames)
        latents = np.load(clip.latents_npy, mmap_mode="r")[:frames]
        x = generator_input(latents, np.load(clip.speaker_npy))
        wav = np.load(clip.target_npy, mmap_mode="r")
        return x, torch.from_numpy(self.align.target(wav, 0, frames)).unsqueeze(0)


def build_loader(
    dataset: Dataset, *, batch_size: int, shuffle: bool, num_workers: int = 0, seed: int = 1
) -> DataLoader:
    """A DataLoader of ``[input (B, frames, C + D), target (B, 1, samples)]`` batches (Coqui GAN's list form)."""
    generator = torch.Generator().manual_seed(int(seed)) if shuffle else None
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        drop_last=False,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available(),
    )
