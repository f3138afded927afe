"""The bundled demo datasets: real speech made with espeak-ng, in the layout training expects.

``python scripts/make_demo_dataset.py OUT_DIR`` rebuilds demo/en from ``ENGLISH_DEMO_SENTENCES``.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from utils.errors import ConfigError

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_ROOT = REPO_ROOT / "demo"
SAMPLE_RATE = 22050

ENGLISH_DEMO_SENTENCES: tuple[str, ...] = (
    "The quick brown fox jumps over the lazy dog.",
    "We recorded this voice on a quiet afternoon.",
    "Please read each sentence slowly and clearly.",
    "A good dataset has many short and clean clips.",
    "The model learns how this speaker sounds.",
    "Numbers like 42 and 1999 are read as words.",
    "She sells sea shells by the sea shore.",
    "Listen carefully to the result before you share it.",
    "Training stops when the loss no longer improves.",
    "How vexingly quick daft zebras jump!",
    "Sphinx of black quartz, judge my vow.",
    "Thank you for listening to this short demo.",
)


def espeak_to_wav(text: str, path: Path, *, voice: str = "en-us", speed: int = 150, pitch: int = 50) -> Path:
    """Speak ``text`` with espeak-ng into a 22.05 kHz mono 16-bit wav at ``path``."""
    if shutil.which("espeak-ng") is None:
        raise ConfigError("espeak-ng is not installed; install it (Debian: apt-get install espeak-ng)")
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(path), text],
        check=True,
        capture_output=True,
    )
    import numpy as np
    import soundfile as sf

    audio, sr = sf.read(str(path), dtype="float32")
    if sr != SAMPLE_RATE:  # espeak-ng speaks at 22050 Hz; resample defensively if a build differs
        import torch
        import torchaudio.functional as AF

        audio = AF.resample(torch.from_numpy(audio), sr, SAMPLE_RATE).numpy()
    sf.write(str(path), np.asarray(audio, dtype="float32"), SAMPLE_RATE, subtype="PCM_16")
    return path


def make_espeak_dataset(
    out_dir: str | Path,
    sentences: Sequence[str],
    *,
    voice: str = "en-us",
    prefix: str = "en",
    speaker: str = "demo",
    n_eval: int = 2,
    spoken: Callable[[str], str] | None = None,
    base_speed: int = 140,
) -> Path:
    """Write ``wavs/`` + ``metadata_train.csv`` + ``metadata_eval.csv`` (Coqui ``coqui`` format).

    Pitch and speed vary a little per clip so clips differ the way real recordings do. The last
    ``n_eval`` sentences form the eval set. ``spoken`` maps a sentence to what espeak-ng says (e.g.
    the language's normaliser: the CSV keeps the text as written, the audio says the normalised
    text the model is taught to read).
    """
    out = Path(out_dir)
    if (out / "metadata_train.csv").exists():
        raise ConfigError(f"{out} already holds a dataset; choose an empty folder (nothing was overwritten)")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for idx, text in enumerate(sentences, start=1):
            name = f"wavs/{prefix}_{idx:03d}.wav"
            said = spoken(text) if spoken else text
            espeak_to_wav(
                said, Path(tmp) / name, voice=voice, speed=base_speed + (idx * 7) % 30, pitch=40 + (idx * 11) % 25
            )
            rows.append((name, text))
        (out / "wavs").mkdir(parents=True, exist_ok=True)
        for name, _ in rows:
            shutil.move(str(Path(tmp) / name), str(out / name))
    header = "audio_file|text|speaker_name\n"
    split = len(rows) - n_eval
    for file_name, part in (("metadata_train.csv", rows[:split]), ("metadata_eval.csv", rows[split:])):
        lines = "".join(f"{name}|{text}|{speaker}\n" for name, text in part)
        (out / file_name).write_text(header + lines, encoding="utf-8")
    logger.info("demo dataset: %d clips in %s", len(rows), out)
    return out
