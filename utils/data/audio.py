"""Audio I/O: decode anything to float32 mono at a target rate; write 22.05 kHz mono 16-bit WAV.

wav/flac/ogg/aiff go through soundfile (libsndfile, no FFmpeg). Everything else (mp3, m4a,
video containers) goes through the ``ffmpeg`` binary, always called with an argument list.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from utils.errors import DataError

logger = logging.getLogger(__name__)

TARGET_SR = 22050
SOUNDFILE_EXTENSIONS = frozenset({".wav", ".flac", ".ogg", ".oga", ".aiff", ".aif", ".au", ".w64", ".rf64"})
FFMPEG_EXTENSIONS = frozenset(
    {
        ".mp3",
        ".m4a",
        ".aac",
        ".opus",
        ".wma",
        ".mp4",
        ".mkv",
        ".mov",
        ".webm",
        ".avi",
        ".flv",
        ".mpg",
        ".mpeg",
        ".ts",
        ".m4v",
        ".3gp",
    }
)
MEDIA_EXTENSIONS = SOUNDFILE_EXTENSIONS | FFMPEG_EXTENSIONS


@dataclass(frozen=True)
class AudioInfo:
    """Header facts about an audio file (no decoding)."""

    sample_rate: int
    channels: int
    frames: int
    subtype: str

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate if self.sample_rate else 0.0

    def needs_conversion(self, target_sr: int = TARGET_SR) -> list[str]:
        """What differs from 22.05 kHz mono 16-bit PCM (empty list when nothing does)."""
        out = []
        if self.sample_rate != target_sr:
            out.append(f"{self.sample_rate} Hz")
        if self.channels != 1:
            out.append(f"{self.channels} channels")
        if self.subtype != "PCM_16":
            out.append(self.subtype)
        return out


def audio_info(path: str | os.PathLike) -> AudioInfo:
    """Read the header of a soundfile-readable file.

    Raises:
        DataError: missing, zero-byte or undecodable file.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"audio file not found: {path}")
    if path.stat().st_size == 0:
        raise DataError(f"audio file is empty (0 bytes): {path}; re-export or remove it")
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise DataError(f"cannot decode {path}: {exc}; convert it to WAV or FLAC") from exc
    return AudioInfo(int(info.samplerate), int(info.channels), int(info.frames), str(info.subtype))


def resample(audio: np.ndarray, sr: int, target_sr: int) -> np.ndarray:
    """Resample float32 mono audio with soxr (high quality)."""
    if sr == target_sr or audio.size == 0:
        return audio.astype(np.float32, copy=False)
    import soxr  # local: only needed when rates differ

    return soxr.resample(audio, sr, target_sr, quality="HQ").astype(np.float32, copy=False)


def to_mono(audio: np.ndarray) -> np.ndarray:
    """Average channels of a (frames, channels) array."""
    if audio.ndim == 2:
        return audio.mean(axis=1, dtype=np.float32) if audio.shape[1] > 1 else audio[:, 0]
    return audio


def load_audio(path: str | os.PathLike, target_sr: int | None = TARGET_SR) -> tuple[np.ndarray, int]:
    """Load any supported file as float32 mono, converting channels, bit depth and rate.

    Args:
        path: audio or video file.
        target_sr: output rate; None keeps the file's rate.

    Returns:
        (samples in [-1, 1], sample rate).

    Raises:
        DataError: missing, empty, non-audio or undecodable file.
    """
    path = Path(path)
    if path.suffix.lower() in FFMPEG_EXTENSIONS:
        return decode_media(path, target_sr or TARGET_SR), target_sr or TARGET_SR
    audio_info(path)  # clear errors for missing / empty / undecodable
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise DataError(f"cannot decode {path}: {exc}; convert it to WAV or FLAC") from exc
    audio = to_mono(data)
    if target_sr is not None and sr != target_sr:
        audio = resample(audio, sr, target_sr)
        sr = target_sr
    return np.ascontiguousarray(audio, dtype=np.float32), int(sr)


def _ffmpeg() -> str:
    exe = shutil.which("ffmpeg")
    if exe is None:
        raise DataError("ffmpeg is needed to decode compressed media; install it (Debian: apt-get install ffmpeg)")
    return exe


def decode_media(path: str | os.PathLike, target_sr: int = TARGET_SR) -> np.ndarray:
    """Decode any media file FFmpeg understands to float32 mono at ``target_sr``.

    Raises:
        DataError: missing, empty, no audio stream, or FFmpeg cannot decode it.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"media file not found: {path}")
    if path.stat().st_size == 0:
        raise DataError(f"media file is empty (0 bytes): {path}; re-export or remove it")
    cmd = [
        _ffmpeg(),
        "-nostdin",
        "-hide_banner",
        "-v",
        "error",
        "-i",
        str(path),
        "-vn",
        "-ac",
        "1",
        "-ar",
        str(int(target_sr)),
        "-f",
        "f32le",
        "-acodec",
        "pcm_f32le",
        "-",
    ]
    proc = subprocess.run(cmd, capture_output=True, check=False)
    err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
    if proc.returncode != 0 or not proc.stdout:
        reason = err[-1] if err else "no audio stream"
        raise DataError(f"cannot decode {path} with ffmpeg: {reason}; check it is an audio or video file")
    return np.frombuffer(proc.stdout, dtype="<f4").astype(np.float32)


def write_wav(path: str | os.PathLike, audio: np.ndarray, sr: int = TARGET_SR) -> Path:
    """Write float audio as mono 16-bit PCM WAV (written to a temp name, then renamed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.wav")
    sf.write(str(tmp), np.clip(audio, -1.0, 1.0), sr, subtype="PCM_16", format="WAV")
    os.replace(tmp, path)
    return path
