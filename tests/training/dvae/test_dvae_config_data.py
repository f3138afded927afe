"""The DVAE stage's settings and data, without the model: crop arithmetic, sources, refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from utils.errors import ConfigError, DataError
from utils.training.dvae.config import DVAEStageConfig
from utils.training.dvae.data import CropDataset, WindowDataset, build_loader, clip_infos, read_segment


def test_crop_frames_must_be_a_multiple_of_the_downsampling():
    with pytest.raises(ConfigError, match=r"multiple of 4 .* use e\.g\. 28"):
        DVAEStageConfig.build(crop_frames=30)
    with pytest.raises(ConfigError, match="unknown DVAE stage setting"):
        DVAEStageConfig.build(learning_rate=1e-5)
    with pytest.raises(ConfigError, match="batch_size must be at least 1"):
        DVAEStageConfig.build(batch_size=0)
    assert DVAEStageConfig.build(crop_frames=64).crop_samples == 64 * 256


def test_every_value_has_a_source_and_round_trips():
    cfg = DVAEStageConfig.build(lr=2e-5, crops_per_clip=None)
    described = cfg.describe()
    assert described["lr"] == {"value": 2e-5, "source": "set by the caller"}
    assert described["crops_per_clip"]["source"] == "set by the caller"  # None given on purpose
    assert "train_dvae_xtts.py" in described["epochs"]["source"] and described["epochs"]["value"] == 5
    assert "train_dvae_xtts.py" in described["grad_clip"]["source"] and described["grad_clip"]["value"] == 0.5
    assert all(v["source"] for v in described.values())
    assert DVAEStageConfig.from_dict(cfg.as_dict()) == cfg
    defaults = DVAEStageConfig()
    assert (defaults.lr, defaults.epochs, defaults.batch_size, defaults.crop_frames) == (5e-6, 5, 64, 128)


def test_crops_cover_each_clip_and_eval_windows_are_fixed(demo_en: Path):
    rows = [{"audio_file": str(demo_en / "wavs" / "en_001.wav")}, {"audio_file": str(demo_en / "wavs" / "en_007.wav")}]
    clips = clip_infos(rows)
    assert [c.num_samples for c in clips] == [77165, 55624]  # 3.50 s and 2.52 s at 22,050 Hz
    crops = CropDataset(clips, crop_frames=32)  # 8,192 samples per crop
    assert len(crops) == round(77165 / 8192) + round(55624 / 8192) == 9 + 7
    assert all(crops[i]["wav"].shape == (1, 8192) for i in range(len(crops)))
    assert len(CropDataset(clips, crop_frames=32, crops_per_clip=3)) == 6
    windows = WindowDataset(clips, crop_frames=32)
    assert windows.windows[:3] == [(0, 0), (0, 8192), (0, 16384)] and len(windows) == 9 + 6
    first = windows[1]["wav"]
    assert np.array_equal(first[0].numpy(), read_segment(clips[0], 8192, 8192))
    assert np.array_equal(windows[1]["wav"].numpy(), first.numpy())  # the same audio every evaluation
    long_crop = WindowDataset(clips[1:], crop_frames=256)  # 65,536 samples > the 55,624 of the clip
    item = long_crop[0]["wav"][0].numpy()
    assert len(long_crop) == 1 and item.shape == (65536,)
    assert np.abs(item[:55624]).max() > 0.01 and not item[55624:].any()  # zero-padded after the clip


def test_other_sample_rates_are_resampled_and_empty_splits_refused(tmp_path: Path):
    path = tmp_path / "tone_16k.wav"
    t = np.arange(16000) / 16000.0
    sf.write(str(path), (0.3 * np.sin(2 * np.pi * 220 * t)).astype("float32"), 16000)
    (clip,) = clip_infos([{"audio_file": str(path)}])
    assert (clip.num_samples, clip.file_rate) == (22050, 16000)
    segment = read_segment(clip, 0, 4096)
    assert segment.shape == (4096,) and 0.25 < np.abs(segment).max() < 0.35
    with pytest.raises(DataError, match="no eval rows"):
        build_loader([], crop_frames=32, batch_size=2, is_eval=True)
    with pytest.raises(DataError, match="not found"):
        build_loader([{"audio_file": str(tmp_path / "missing.wav")}], crop_frames=32, batch_size=2, is_eval=False)
