"""Whisper on the GPU with the installed stack: CUDA 12 cuBLAS from the wheel, auto device, fallback."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.data.conftest import tiny_en_model
from utils.data import cuda_libs, transcribe
from utils.errors import ConfigError


def test_cublas12_found_in_the_installed_wheel_and_loads_without_a_gpu() -> None:
    found = cuda_libs.find_cublas12()
    assert set(found) == {"libcublas.so.12", "libcublasLt.so.12"}
    assert all(p.is_file() and p.parent.parts[-3:] == ("nvidia", "cublas", "lib") for p in found.values())
    loaded = cuda_libs.preload_cublas12()
    assert loaded == {k: str(v) for k, v in found.items()}
    # mapped into this process now: CTranslate2's dlopen("libcublas.so.12") will find this copy
    assert cuda_libs.loaded_path("libcublas.so.12") == str(found["libcublas.so.12"])


def test_ctranslate2_asks_for_cublas12_and_torch_brings_13() -> None:
    # The fact the preload rests on: the two stacks want different sonames, so both can load.
    import ctranslate2

    libs = Path(ctranslate2.__file__).parent.parent / "ctranslate2.libs"
    blob = b"".join(p.read_bytes() for p in libs.glob("libctranslate2*.so*"))
    assert b"libcublas.so.12" in blob and b"libcublas.so.13" not in blob
    import torch

    torch_libs = Path(torch.__file__).parent.parent / "nvidia"
    assert list(torch_libs.glob("cu13/lib/libcublas.so.13")), "torch 2.11 from PyPI brings CUDA 13 cuBLAS"


def test_missing_cublas12_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cuda_libs, "cublas12_dirs", list)
    with pytest.raises(cuda_libs.CudaLibraryError, match="nvidia-cublas-cu12"):
        cuda_libs.find_cublas12()


def test_auto_without_a_gpu_uses_the_cpu_quietly(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        tr = transcribe.load_transcriber(tiny_en_model(), device="auto", language="en")
    assert tr.device == "cpu"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("no CUDA GPU" in r.getMessage() for r in caplog.records)


def test_auto_falls_back_with_one_warning_when_the_gpu_fails(monkeypatch, caplog) -> None:
    # CTranslate2 reports a GPU, but loading on it fails (here: for real, there is no GPU).
    monkeypatch.setattr(transcribe, "_cuda_device_count", lambda: 1)
    with caplog.at_level(logging.INFO):
        tr = transcribe.load_transcriber(tiny_en_model(), device="auto", language="en")
    assert tr.device == "cpu"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "transcribing on the CPU" in warnings[0], warnings
    # and it still transcribes
    words, lang = tr(np.zeros(16000, np.float32))
    assert lang == "en" and words == []


def test_explicit_cuda_is_an_error_with_the_fix(monkeypatch) -> None:
    with pytest.raises(ConfigError, match="--device cuda: no CUDA GPU visible.*--device cpu"):
        transcribe.load_transcriber(tiny_en_model(), device="cuda")
    monkeypatch.setattr(transcribe, "_cuda_device_count", lambda: 1)
    with pytest.raises(ConfigError, match="--device cuda: .*--device cpu"):
        transcribe.load_transcriber(tiny_en_model(), device="cuda")


def test_driver_hint_names_versions() -> None:
    assert "525.60.13" in cuda_libs.driver_hint("CUDA driver version is insufficient for CUDA runtime version")
    assert "nvidia-cublas-cu12" in cuda_libs.driver_hint("Library libcublas.so.12 is not found or cannot be loaded")


@pytest.mark.gpu
def test_bundled_speech_transcribed_on_cuda(tmp_path: Path) -> None:
    import soxr

    wav = Path(__file__).resolve().parents[2] / "demo" / "en" / "wavs" / "en_001.wav"
    audio, sr = sf.read(str(wav), dtype="float32")
    tr = transcribe.load_transcriber(tiny_en_model(), device="auto", language="en")
    assert tr.device == "cuda"
    words, _ = tr(soxr.resample(audio, sr, transcribe.WHISPER_SR).astype(np.float32))
    assert len(words) >= 3
