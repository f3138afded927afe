"""Run-time rows that fail to load are replaced, counted and written down, never dropped silently."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import read_demo_samples
from utils.gpt_train import build_config
from utils.hparams import resolve
from utils.language import load_tokenizer
from utils.training.gpt.dataset import ToolkitXTTSDataset, read_runtime_exclusions


def test_failed_row_is_replaced_and_recorded(tiny_base: Path, demo_en: Path, tmp_path: Path) -> None:
    config = build_config(resolve(dataset_hours=0.01), tiny_base, output_path=tmp_path)
    rows = read_demo_samples(demo_en / "metadata_train.csv")[:3]
    rows[1] = {**rows[1], "audio_file": str(tmp_path / "gone.wav")}
    rows.append({**rows[0], "text": "x" * 600})  # over max_text_length tokens
    ds = ToolkitXTTSDataset(
        config,
        rows,
        load_tokenizer(tiny_base / "vocab.json"),
        22050,
        exclusions_path=tmp_path / "runtime_exclusions.jsonl",
    )
    item = ds[1]
    assert item["filenames"] == rows[2]["audio_file"]  # the next row, not row 1 and not sample 1
    assert ds[3]["filenames"] == rows[0]["audio_file"]  # wraps around past the end
    records = read_runtime_exclusions(tmp_path)
    assert [r["audio_file"] for r in records] == [str(tmp_path / "gone.wav"), rows[3]["audio_file"]]
    assert [r["reason"] for r in records] == ["unreadable_audio", "text_too_long"]
    assert len(ds.failed) == 2


def test_every_row_failing_is_an_error_not_a_loop(tiny_base: Path, tmp_path: Path) -> None:
    config = build_config(resolve(dataset_hours=0.01), tiny_base, output_path=tmp_path)
    rows = [{"audio_file": str(tmp_path / f"{i}.wav"), "text": "hello", "language": "en"} for i in range(3)]
    ds = ToolkitXTTSDataset(config, rows, load_tokenizer(tiny_base / "vocab.json"), 22050)
    with pytest.raises(RuntimeError, match="every one of the 3 training rows failed"):
        ds[0]
    assert len(ds.failed) == 3
