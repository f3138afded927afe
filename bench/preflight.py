"""Preflight speed benchmark on a synthetic dataset of speech-like clips.

Clips are built from a few espeak-ng sentences (or noise bursts when espeak-ng is missing),
each with its own gain and a little noise so no two are identical, 2-10 s long (mean 6 s),
22.05 kHz mono 16-bit: the size of a real XTTS dataset row.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from utils.data.csv_io import Row, write_coqui_csv

logger = logging.getLogger(__name__)

_SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "She sells sea shells by the sea shore.",
    "A journey of a thousand miles begins with a single step.",
    "Peter Piper picked a peck of pickled peppers.",
    "How much wood would a woodchuck chuck if a woodchuck could chuck wood?",
    "Every good boy deserves fruit, and every good girl does too.",
]
_SR = 22050
XTTS_VOCAB_SIZE = 6681


def _base_audio(tmp: Path) -> list[np.ndarray]:
    out = []
    if shutil.which("espeak-ng"):
        for i, s in enumerate(_SENTENCES):
            p = tmp / f"base{i}.wav"
            subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(p), s], check=True, capture_output=True)
            out.append(sf.read(str(p), dtype="float32")[0])
    else:
        rng = np.random.default_rng(0)
        out = [0.2 * rng.standard_normal(3 * _SR).astype(np.float32)]
    return out


def make_synthetic_dataset(out_dir: str | os.PathLike, n: int, seed: int = 0) -> tuple[Path, list[str]]:
    """Write ``n`` distinct clips and ``metadata_train.csv`` into ``out_dir``.

    Returns:
        (CSV path, the sentences used, for building a vocabulary).
    """
    from tqdm import tqdm

    out = Path(out_dir)
    (out / "wavs").mkdir(parents=True, exist_ok=True)
    base = _base_audio(out)
    rng = np.random.default_rng(seed)
    rows = []
    for i in tqdm(range(n), desc="make clips", unit="clip"):
        target = int(rng.uniform(2.0, 10.0) * _SR)
        parts, texts, k = [], [], int(rng.integers(len(base)))
        while sum(len(p) for p in parts) < target:
            parts.append(base[k % len(base)])
            texts.append(_SENTENCES[k % len(_SENTENCES)])
            k += 1
        audio = np.concatenate(parts)[:target] * rng.uniform(0.3, 0.9)
        audio = audio + rng.normal(0, 1e-3, size=audio.shape)
        rel = f"wavs/clip{i:06d}.wav"
        sf.write(str(out / rel), audio.astype(np.float32), _SR, subtype="PCM_16")
        rows.append(Row(i + 2, rel, out / rel, " ".join(texts), "bench"))
    return write_coqui_csv(out / "metadata_train.csv", rows), _SENTENCES


def evict_from_page_cache(folder: Path) -> int:
    """Ask the kernel to drop the cached pages of every file under ``folder`` (a cold-cache run)."""
    n = 0
    for f in folder.rglob("*.wav"):
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            n += 1
        finally:
            os.close(fd)
    return n


def _vocab(out: Path, texts: list[str]) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    special = ["[STOP]", "[UNK]", "[SPACE]", "[START]", "[en]"]
    tok.train_from_iterator(
        [t.lower() for t in texts] + ["abcdefghijklmnopqrstuvwxyz .,!?'-"],
        trainers.BpeTrainer(vocab_size=300, special_tokens=special, show_progress=False),
    )
    # pad to the size of XTTS v2's vocabulary (6681) so per-call vocabulary costs are realistic
    tok.add_tokens([f"<pad{i:04d}>" for i in range(XTTS_VOCAB_SIZE - tok.get_vocab_size())])
    path = out / "vocab.json"
    tok.save(str(path))
    return path


def bench_preflight(
    n: int = 10000,
    *,
    workers: int = 2,
    cores: int | None = 2,
    vocab_path: str | os.PathLike | None = None,
    work_dir: str | os.PathLike | None = None,
    keep: bool = False,
    cold: bool = False,
) -> dict[str, Any]:
    """Time :func:`run_preflight` over ``n`` synthetic clips.

    Args:
        workers: preflight worker processes.
        cores: pin this process (and so its workers) to this many CPU cores (None: no pinning).
        vocab_path: tokenizer vocabulary for the text checks (default: a small English BPE built
            here, so the [UNK] and token checks are timed too).
        work_dir: where to write the clips (default: a temporary folder, removed afterwards).
        cold: drop the clips from the page cache before timing (as on a first run after copying).

    Returns:
        clips, seconds, clips_per_s, hours, cores, workers, and the report's kept/excluded counts.
    """
    from utils.data.preflight import run_preflight
    from utils.data.text import load_text_tokenizer

    if cores is not None and hasattr(os, "sched_setaffinity"):
        avail = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, set(avail[:cores]))
    used_cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    tmp = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="bench_preflight_"))
    try:
        csv_path, texts = tmp / "metadata_train.csv", _SENTENCES
        if not (csv_path.is_file() and len(csv_path.read_text(encoding="utf-8").splitlines()) == n + 1):
            csv_path, texts = make_synthetic_dataset(tmp, n)  # else reuse the clips of an earlier run
        vocab = Path(vocab_path) if vocab_path else _vocab(tmp, texts)
        tokenizer = load_text_tokenizer(vocab)  # loading the vocabulary is not part of the timed pass
        if cold:
            evict_from_page_cache(tmp)
        t0 = time.perf_counter()
        report = run_preflight(csv_path, language="en", tokenizer=tokenizer, workers=workers)
        seconds = time.perf_counter() - t0
    finally:
        if not keep and not work_dir:
            shutil.rmtree(tmp, ignore_errors=True)
    return {
        "vocab_size": tokenizer.tokenizer.get_vocab_size() if hasattr(tokenizer, "tokenizer") else None,
        "clips": n,
        "seconds": round(seconds, 2),
        "clips_per_s": round(n / seconds, 1),
        "hours": round(report.hours_kept, 2),
        "cores": used_cores,
        "workers": workers,
        "kept": report.kept,
        "excluded": len(report.excluded),
        "cold_cache": cold,
    }
