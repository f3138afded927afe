"""Long recordings in, a dataset folder out: transcribe with faster-whisper, segment, cut, split.

Re-running on the same output folder skips inputs already done (by content fingerprint) and
appends clips of new ones; the split is recomputed over all clips (stable per recording).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from utils.data.audio import MEDIA_EXTENSIONS, TARGET_SR, load_audio, resample
from utils.data.dataset_folder import DatasetFolder, fingerprint
from utils.data.segment import SegmentLimits, Word, refine_word_times, segment_words
from utils.data.text import approx_token_count
from utils.data.transcribe import WHISPER_SR
from utils.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

TranscribeFn = Callable[..., tuple[list[Word], str]]


def collect_media(inputs: Sequence[str | os.PathLike]) -> tuple[list[Path], list[str]]:
    """Expand files and folders into media files.

    Files named explicitly are always tried (their decoder decides); in folders, only known
    media extensions are taken and the rest is listed as ignored.

    Returns:
        (media files in a stable order, ignored files).

    Raises:
        DataError: an input does not exist, or nothing that looks like media was found.
    """
    files: list[Path] = []
    ignored: list[str] = []
    for raw in inputs:
        p = Path(raw)
        if p.is_dir():
            for f in sorted(q for q in p.rglob("*") if q.is_file()):
                if f.suffix.lower() in MEDIA_EXTENSIONS:
                    files.append(f)
                else:
                    ignored.append(str(f))
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(f"input not found: {p}; pass audio/video files or folders")
    seen: set[Path] = set()
    unique = [f for f in files if not (f.resolve() in seen or seen.add(f.resolve()))]
    if not unique:
        exts = " ".join(sorted(MEDIA_EXTENSIONS))
        raise DataError(
            f"no audio or video files in {', '.join(map(str, inputs))} ({len(ignored)} other file(s) ignored); "
            f"supported extensions: {exts}"
        )
    return unique, ignored


def prepare_dataset(
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    transcriber: TranscribeFn | None = None,
    whisper_model: str | None = None,
    language: str | None = None,
    speaker: str = "speaker",
    device: str = "auto",
    compute_type: str | None = None,
    batch_size: int = 16,
    limits: SegmentLimits = SegmentLimits(),
    count_tokens: Callable[[str], int] = approx_token_count,
    eval_fraction: float = 0.1,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Transcribe and segment recordings into ``out_dir``.

    Args:
        inputs: audio/video files or folders.
        out_dir: dataset folder (created, or extended when it exists).
        transcriber: callable (audio 16 kHz, progress) -> (words, language); built from
            ``whisper_model`` when None (loaded only if some input is new).
        whisper_model: local CTranslate2 folder or model name.
        language: force the transcription language (None: detect).
        speaker: speaker_name for every clip of this run.

    Returns:
        The dataset report (also written to ``out_dir/dataset_report.json``).

    Raises:
        DataError: no media, or no input produced any clip and the folder had none before.
        ConfigError: the Whisper model cannot be loaded.
    """
    from tqdm import tqdm

    files, ignored = collect_media(inputs)
    ds = DatasetFolder(out_dir)
    ds.report["ignored_files"] = sorted(set(ds.report.get("ignored_files", [])) | set(ignored))
    todo: list[tuple[Path, str]] = []
    for f in files:
        try:
            fp = fingerprint(f)
        except OSError as exc:
            ds.add_failed(str(f), f"cannot read: {exc}")
            continue
        if ds.source_for(fp) is not None:
            logger.info("already done, skipped: %s", f)
            continue
        todo.append((f, fp))
    if todo and transcriber is None:
        if whisper_model is None:
            raise ConfigError("no Whisper model given; pass --whisper-model (a CTranslate2 folder or a model name)")
        from utils.data.transcribe import load_transcriber

        transcriber = load_transcriber(whisper_model, device=device, compute_type=compute_type,
                                       language=language, batch_size=batch_size)
    n_new = 0
    # one bar in seconds of audio: its total grows as each file is decoded
    bar = tqdm(total=0.0, desc="transcribe", unit="audio s", disable=not progress,
               bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s [{elapsed}<{remaining}]{postfix}")
    for i, (f, fp) in enumerate(todo, start=1):
        bar.set_postfix_str(f"file {i}/{len(todo)} {f.name[:30]}")
        try:
            audio = load_audio(f, TARGET_SR)[0]
        except DataError as exc:
            logger.warning("%s", exc)
            ds.add_failed(str(f), str(exc))
            continue
        if audio.size == 0 or float(np.max(np.abs(audio))) < 1e-4:
            ds.add_failed(str(f), "no audible audio (empty or silent)")
            continue
        total_s = len(audio) / TARGET_SR
        bar.total += total_s
        bar.refresh()
        words, lang = transcriber(resample(audio, TARGET_SR, WHISPER_SR), bar if progress else None)
        words = refine_word_times(words, audio, TARGET_SR)
        segments, skipped = segment_words(words, total_s=total_s, limits=limits, count_tokens=count_tokens)
        if not words:
            skipped.append({"start": 0.0, "end": round(total_s, 3), "text": "", "reason": "no_speech",
                            "detail": "Whisper found no words"})
        clips = [(audio[int(s.start * TARGET_SR): int(s.end * TARGET_SR)], s.text, s.start, s.end) for s in segments]
        sid = ds.new_source_id(f, fp)
        ds.clear_failed(str(f))
        n_new += ds.add_source(sid, file=str(f), fp=fp, clips=clips, speaker=speaker, skipped=skipped,
                               tool="prepare_dataset", extra={"language": lang, "duration_s": round(total_s, 3)})
    bar.close()
    if not ds.rows:
        failed = "; ".join(f"{x['file']}: {x['reason']}" for x in ds.report["failed_inputs"]) or "no speech found"
        raise DataError(f"no clips could be made ({failed}); check the inputs are audio with speech")
    ds.report["last_run"] = {"tool": "prepare_dataset", "new_inputs": len(todo), "new_clips": n_new,
                             "skipped_already_done": len(files) - len(todo)}
    report = ds.save(eval_fraction=eval_fraction, seed=seed)
    logger.info("%s: %d new clips, %d in total", out_dir, n_new, len(ds.rows))
    return report
