"""Latent frames against the 24 kHz target: the decoder's output length, its timing, the segments' targets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from utils.training.decoder.latents import LatentClip
from utils.training.decoder.segments import ClipDataset, FrameAlignment, SegmentDataset

LATENT_DIM, SPEAKER_DIM = 128, 512


@pytest.fixture(scope="module")
def decoder():
    from TTS.tts.layers.xtts.hifigan_decoder import HifiDecoder

    torch.manual_seed(0)
    return HifiDecoder(decoder_input_dim=LATENT_DIM).eval()


class _Repeat(torch.nn.Module):
    """Stands in for the HiFi-GAN generator: each interpolated frame becomes 256 equal samples."""

    def forward(self, z: torch.Tensor, g: torch.Tensor | None = None) -> torch.Tensor:
        z = z if z.dim() == 3 else z.unsqueeze(0)  # HifiDecoder squeezes a batch of one
        return z[:, :1].repeat_interleave(256, dim=-1)


def test_output_length_is_what_the_decoder_makes(decoder):
    from utils.training.decoder.gan import SpeakerConditionedGenerator

    align = FrameAlignment.of(decoder)
    assert align == FrameAlignment()  # XTTS v2: 1024-sample codes at 22.05 kHz, 256-sample hop at 24 kHz
    # floor(floor(4 L) * 24000 / 22050) * 256: a little under L * 1114.56
    assert [align.output_samples(n) for n in (1, 4, 8, 64)] == [1024, 4352, 8704, 71168]
    latents, speaker = torch.randn(1, 3, LATENT_DIM), torch.randn(1, SPEAKER_DIM, 1)
    generator = SpeakerConditionedGenerator(decoder, LATENT_DIM)
    with torch.no_grad():
        direct = decoder(latents, g=speaker)
        split = generator(torch.cat([latents, speaker.transpose(1, 2).expand(1, 3, SPEAKER_DIM)], dim=-1))
    assert direct.shape == (1, 1, align.output_samples(3)) == (1, 1, 3328)
    assert torch.equal(direct, split)  # the generator input carries the speaker embedding in every frame
    real = decoder.waveform_decoder
    try:
        decoder.waveform_decoder = _Repeat()
        for frames in (2, 5, 13, 100, 215):
            with torch.no_grad():
                out = decoder(torch.zeros(2, frames, LATENT_DIM))
            assert out.shape[-1] == align.output_samples(frames)
    finally:
        decoder.waveform_decoder = real


@pytest.mark.parametrize("frame", [1, 7, 40])
def test_a_frame_sounds_where_its_target_begins(decoder, frame):
    align = FrameAlignment.of(decoder)
    latents = torch.zeros(1, 48, LATENT_DIM)
    latents[0, frame, 0] = 1.0  # one frame on: where does the decoder put it in time?
    real = decoder.waveform_decoder
    try:
        decoder.waveform_decoder = _Repeat()
        with torch.no_grad():
            out = decoder(latents)[0, 0].numpy()
    finally:
        decoder.waveform_decoder = real
    peak = float((np.arange(out.size) + 0.5) @ out / out.sum())  # the energy's centre (a symmetric bump)
    centre = (frame + 0.5) * 1024 * 24000 / 22050  # the frame's middle at 24 kHz
    assert abs(peak - centre) <= 32  # an eighth of a generator frame; a frame off would be 1,115 samples
    assert align.target_offset(frame) <= peak < align.target_offset(frame + 1)
    assert [align.target_offset(k) for k in (1, 2, 441)] == [1115, 2229, 491520]


def _clip(tmp_path: Path, wav22: np.ndarray, frames: int) -> LatentClip:
    from utils.training.gpt.clip_cache import load_audio_soundfile

    sf.write(tmp_path / "clip.wav", wav22, 22050, subtype="FLOAT")
    target = load_audio_soundfile(tmp_path / "clip.wav", 24000)[0].numpy()  # the cache's 24 kHz decode
    np.save(tmp_path / "target.npy", target)
    latents = np.arange(frames, dtype=np.float32)[:, None].repeat(LATENT_DIM, axis=1)  # frame k holds k
    np.save(tmp_path / "latents.npy", latents)
    np.save(tmp_path / "speaker.npy", np.linspace(-1, 1, SPEAKER_DIM, dtype=np.float32))
    return LatentClip(
        str(tmp_path / "clip.wav"),
        str(tmp_path / "latents.npy"),
        str(tmp_path / "speaker.npy"),
        str(tmp_path / "target.npy"),
        frames,
        target.shape[-1],
    )


def test_a_segment_target_starts_where_its_first_frame_starts(tmp_path):
    frames, start = 30, 10
    wav = np.zeros(frames * 1024 - 300, dtype=np.float32)
    wav[start * 1024] = 0.9  # a click at the first sample of DVAE frame 10
    clip = _clip(tmp_path, wav, frames)
    data = SegmentDataset([clip], FrameAlignment(), segment_frames=4)
    x, y = data.item(clip, start)
    assert x.shape == (4, LATENT_DIM + SPEAKER_DIM) and y.shape == (1, 4352)
    assert x[:, 0].tolist() == [10.0, 11.0, 12.0, 13.0]  # latent frames 10..13
    assert torch.equal(x[2, LATENT_DIM:], torch.from_numpy(np.linspace(-1, 1, SPEAKER_DIM, dtype=np.float32)))
    assert int(torch.argmax(y.abs())) == 0  # the click opens the target: frame and audio agree
    _x, y_before = data.item(clip, start - 1)
    assert int(torch.argmax(y_before.abs())) == FrameAlignment().target_offset(1) == 1115


def test_segments_at_the_end_are_padded_and_short_clips_left_out(tmp_path):
    frames = 12
    wav = np.full(frames * 1024 - 700, 0.5, dtype=np.float32)  # the last frame is 324 samples of audio
    clip = _clip(tmp_path, wav, frames)
    data = SegmentDataset([clip], FrameAlignment(), segment_frames=4, segments_per_clip=3)
    assert len(data) == 3
    _x, y = data.item(clip, frames - 4)
    audio_ends = clip.target_samples - FrameAlignment().target_offset(frames - 4)
    assert 0 < audio_ends < y.shape[-1]
    assert float(y[0, audio_ends + 100 :].abs().max()) == 0.0 and float(y[0, audio_ends - 200]) == pytest.approx(
        0.5, abs=0.01
    )
    starts = {int(data[0][0][0, 0]) for _ in range(40)}  # random starts over every possible frame
    assert starts == set(range(frames - 4 + 1))
    short = SegmentDataset([clip], FrameAlignment(), segment_frames=13)
    assert len(short) == 0 and short.too_short == [clip]
    x, y = ClipDataset([clip], FrameAlignment(), max_frames=8)[0]
    assert x.shape == (8, LATENT_DIM + SPEAKER_DIM) and y.shape == (1, FrameAlignment().output_samples(8))
