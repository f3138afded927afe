"""Long recordings in, a dataset folder out: transcribe, find speakers, cut between words, check, split.

Per input: decode; skip it when its audio is a copy of an input already taken (fingerprints of
the decoded audio, so another container or sample rate of the same recording is caught);
transcribe with faster-whisper; snap word times to the audio and find the pauses between words;
label speakers with the GE2E encoder; cut clips only in pauses and never across a speaker
change; keep the target voice (and, if asked, the others as their own speakers). After all
inputs, the transcript checks write ``review.csv``. Everything not kept is in the report with
its reason. Re-running on the same output folder skips inputs already done and appends clips of
new ones; the split is recomputed over all clips.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from utils.after.asr import WHISPER_SR
from utils.data import review
from utils.data.audio import MEDIA_EXTENSIONS, TARGET_SR, load_audio, resample
from utils.data.boundaries import band_power, frame_levels, snap_words, word_gaps
from utils.data.dataset_folder import DatasetFolder, fingerprint
from utils.data.fingerprint import (
    BANDS_HZ,
    NEAR_THRESHOLD,
    AudioPrint,
    audio_print,
    load_print,
    save_print,
    similarity,
)
from utils.data.segment import SegmentLimits, segment_words
from utils.data.speakers import SpeakerEncoder, SpeakerOptions, label_words
from utils.data.text import approx_token_count
from utils.data.words import Word
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


@dataclass(frozen=True)
class SpeakerPlan:
    """Who is kept: ``name`` for the target voice; the others dropped or kept under their own names.

    Attributes:
        name: speaker_name of the target voice (the one with most speech in each recording, or the
            one nearest ``reference``).
        others: "drop" (reported as ``other_speaker``) or "keep" (as ``<name>-other<k>-<source>``).
        diarize: False treats each recording as one speaker (no speaker model loaded).
        reference: a short recording of the target voice.
    """

    name: str = "speaker"
    others: str = "drop"
    diarize: bool = True
    options: SpeakerOptions = SpeakerOptions()
    reference: str | os.PathLike | None = None

    def __post_init__(self) -> None:
        if self.others not in ("drop", "keep"):
            raise ConfigError(f"other speakers: {self.others!r}; use drop or keep")
        if self.reference is not None and not Path(self.reference).is_file():
            raise ConfigError(f"speaker reference {self.reference} not found; pass a recording of the target voice")


def _duplicate_of(ds: DatasetFolder, ap: AudioPrint, taken: dict[str, AudioPrint]) -> tuple[str, float] | None:
    """(source id, similarity) of an input already taken whose audio matches ``ap``."""
    for sid, meta in ds.report["sources"].items():
        if sid in taken or "audio_fingerprint" not in meta:
            continue
        fp = load_print(ds.root, sid, meta["audio_fingerprint"], meta.get("duration_s", 0.0))
        if fp is not None:
            taken[sid] = fp
    best = max(((sid, similarity(ap, fp)) for sid, fp in taken.items()), key=lambda x: x[1], default=None)
    return best if best is not None and best[1] >= NEAR_THRESHOLD else None


def _cut_recording(
    audio: np.ndarray,
    audio16: np.ndarray,
    power: np.ndarray,
    words: list[Word],
    sid: str,
    plan: SpeakerPlan,
    encoder: SpeakerEncoder | None,
    reference: np.ndarray | None,
    limits: SegmentLimits,
    count_tokens: Callable[[str], int],
) -> tuple[list[tuple], list[dict[str, Any]], dict[str, Any]]:
    """Clips (audio, text, start, end, meta), skipped spans and speaker facts of one recording."""
    total_s = len(audio) / TARGET_SR
    levels = frame_levels(audio16, WHISPER_SR, power=power)
    words = [w for w in snap_words(words, levels) if w.text.strip()]
    labels = None
    if plan.diarize and encoder is not None and words:
        labels = label_words(words, word_gaps(words, levels), audio16, encoder, plan.options, reference)
    segments, skipped = segment_words(
        words,
        total_s=total_s,
        limits=limits,
        count_tokens=count_tokens,
        levels=levels,
        speakers=labels.for_segments() if labels else None,
    )
    names = {0: plan.name}
    if labels:
        names.update({k: f"{plan.name}-other{k}-{sid}" for k in labels.seconds if k})
    clips = _clips(audio, segments, names, plan, skipped)
    if not words:
        skipped.append(
            {
                "start": 0.0,
                "end": round(total_s, 3),
                "text": "",
                "reason": "no_speech",
                "detail": "Whisper found no words",
            }
        )
    skipped.sort(key=lambda x: x["start"])
    return clips, skipped, _speaker_facts(labels, names, levels)


def _clips(
    audio: np.ndarray, segments: list[Any], names: dict[int, str], plan: SpeakerPlan, skipped: list[dict[str, Any]]
) -> list[tuple]:
    """(audio, text, start, end, meta) of each segment kept; another voice's dropped ones go to ``skipped``."""
    clips = []
    for s in segments:
        if s.speaker != 0 and plan.others == "drop":
            skipped.append(
                {
                    "start": s.start,
                    "end": s.end,
                    "text": s.text,
                    "reason": "other_speaker",
                    "detail": f"voice {s.speaker} of this recording is not the target "
                    f"(keep it with --other-speakers keep)",
                }
            )
            continue
        meta = {
            "speaker": names[s.speaker],
            "margin_start_s": s.margin_start,
            "margin_end_s": s.margin_end,
            "logprob": s.logprob,
        }
        clips.append((audio[int(s.start * TARGET_SR) : int(s.end * TARGET_SR)], s.text, s.start, s.end, meta))
    return clips


def _speaker_facts(labels: Any, names: dict[int, str], levels: Any) -> dict[str, Any]:
    """The recording's voices (seconds each, similarity to the reference) and its edge threshold."""
    facts = {
        "speakers": {names.get(k, f"voice{k}"): v for k, v in labels.seconds.items()} if labels else {},
        "diarized": labels is not None,
        "edge_threshold_db": round(levels.threshold_db, 1),
    }
    if labels and labels.reference_similarity:
        facts["reference_similarity"] = {names[k]: v for k, v in labels.reference_similarity.items()}
    return facts


def _review(ds: DatasetFolder, recheck: Any) -> list[dict[str, Any]]:
    """Transcript checks over every clip of the folder: the flags for review.csv (summary in the report)."""
    texts = {r.audio_file: r.text for r in ds.rows}
    speakers = {r.audio_file: r.speaker_name for r in ds.rows}
    fn = review.recheck_with(recheck, ds.root) if recheck is not None else None
    flags = review.check_clips(ds.report["clips"], texts, speakers, recheck=fn)
    ds.report["review"] = review.summary(flags, len(texts), fn is not None)
    return flags


def prepare_dataset(
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    transcriber: TranscribeFn | None = None,
    whisper_model: str | None = None,
    language: str | None = None,
    speaker: str | SpeakerPlan = "speaker",
    device: str = "auto",
    compute_type: str | None = None,
    batch_size: int = 16,
    limits: SegmentLimits = SegmentLimits(),
    count_tokens: Callable[[str], int] = approx_token_count,
    eval_fraction: float = 0.1,
    seed: int = 0,
    progress: bool = True,
    speaker_encoder: SpeakerEncoder | None = None,
    recheck: TranscribeFn | None = None,
) -> dict[str, Any]:
    """Transcribe and segment recordings into ``out_dir``.

    Args:
        inputs: audio/video files or folders.
        out_dir: dataset folder (created, or extended when it exists).
        transcriber: callable (audio 16 kHz, progress) -> (words, language); built from
            ``whisper_model`` when None (loaded only if some input is new).
        whisper_model: local CTranslate2 folder or model name.
        language: force the transcription language (None: detect).
        speaker: the target speaker's name, or a :class:`SpeakerPlan`.
        speaker_encoder: a loaded GE2E encoder to reuse (None: loaded when needed).
        recheck: optional second transcriber; clips whose transcript disagrees with it are flagged.

    Returns:
        The dataset report (also written to ``out_dir/dataset_report.json``).

    Raises:
        DataError: no media, or no input produced any clip and the folder had none before.
        ConfigError: the Whisper model cannot be loaded.
    """
    plan = speaker if isinstance(speaker, SpeakerPlan) else SpeakerPlan(name=speaker)
    files, ignored = collect_media(inputs)
    ds = DatasetFolder(out_dir)
    ds.report["ignored_files"] = sorted(set(ds.report.get("ignored_files", [])) | set(ignored))
    todo = _new_inputs(ds, files)
    if todo and transcriber is None:
        transcriber = _load_whisper(whisper_model, device, compute_type, language, batch_size)
    encoder = (speaker_encoder or SpeakerEncoder()) if plan.diarize and todo else None
    if encoder is not None:
        encoder.warm_up()  # torch's import and the weights load while the first file is decoded and transcribed
    run = _Run(ds, transcriber, plan, encoder, _reference_embedding(plan, encoder), limits, count_tokens)
    n_new, n_dup = _take_all(run, todo, progress)
    if not ds.rows:
        failed = "; ".join(f"{x['file']}: {x['reason']}" for x in ds.report["failed_inputs"]) or "no speech found"
        raise DataError(f"no clips could be made ({failed}); check the inputs are audio with speech")
    ds.report["last_run"] = {"tool": "prepare_dataset", "new_inputs": len(todo), "new_clips": n_new}
    ds.report["last_run"].update(skipped_already_done=len(files) - len(todo), skipped_duplicates=n_dup)
    return _save(ds, run, _review(ds, recheck), eval_fraction, seed)


def _save(ds: DatasetFolder, run: _Run, flags: list[dict[str, Any]], eval_fraction: float, seed: int) -> dict[str, Any]:
    report = ds.save(eval_fraction=eval_fraction, seed=seed)  # nothing else is written if this refuses
    review.write_review(ds.root, flags)
    for sid, ap in run.prints.items():
        save_print(ds.root, sid, ap)
    logger.info("%s: %d new clips, %d in total", ds.root, report["last_run"]["new_clips"], len(ds.rows))
    return report


DUPLICATE = -1


def _take_all(run: _Run, todo: list, progress: bool) -> tuple[int, int]:
    """Every new input through ``run``, under one bar in hours of audio; (new clips, duplicates)."""
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    # the bar's total grows as each file is decoded; log lines (faster-whisper's too) print above it
    bar = tqdm(
        total=0.0,
        desc="prepare",
        unit="audio h",
        unit_scale=1 / 3600,
        disable=not progress,
        bar_format="{l_bar}{bar}| {n:.2f}/{total:.2f} h of audio [{elapsed}<{remaining}]{postfix}",
    )
    n_new, n_dup = 0, 0
    with logging_redirect_tqdm():
        for i, (f, fp) in enumerate(todo, start=1):
            bar.set_postfix_str(f"file {i}/{len(todo)} {f.name[:30]}")
            added = run.take(f, fp, bar if progress else None)
            n_new += max(0, added)
            n_dup += added == DUPLICATE
    bar.close()
    return n_new, n_dup


@dataclass
class _Run:
    """What one prepare call needs per input, and the fingerprints it has taken so far."""

    ds: DatasetFolder
    transcriber: TranscribeFn
    plan: SpeakerPlan
    encoder: SpeakerEncoder | None
    reference: np.ndarray | None
    limits: SegmentLimits
    count_tokens: Callable[[str], int]
    taken: dict[str, AudioPrint] = field(default_factory=dict)
    prints: dict[str, AudioPrint] = field(default_factory=dict)

    def take(self, f: Path, fp: str, bar: Any) -> int:
        """Decode, check for a copy, transcribe and cut one input.

        Returns:
            Clips added (0 when it failed: the reason is in the report), or DUPLICATE.
        """
        audio = _decode(self.ds, f)
        if audio is None:
            return 0
        audio16 = resample(audio, TARGET_SR, WHISPER_SR)
        power = band_power(audio16, WHISPER_SR, BANDS_HZ + ((80.0, WHISPER_SR / 2),))  # one STFT for both uses
        ap = audio_print(audio16, power[:, :-1])
        dup = _duplicate_of(self.ds, ap, self.taken)
        if dup is not None:
            _record_duplicate(self.ds, f, fp, dup, ap)
            return DUPLICATE
        total_s = len(audio) / TARGET_SR
        if bar is not None:
            bar.total += total_s
            bar.refresh()
        words, lang = self.transcriber(audio16, bar)
        sid = self.ds.new_source_id(f, fp)
        clips, skipped, facts = _cut_recording(
            audio,
            audio16,
            power[:, -1],
            words,
            sid,
            self.plan,
            self.encoder,
            self.reference,
            self.limits,
            self.count_tokens,
        )
        self.ds.clear_failed(str(f))
        self.taken[sid] = self.prints[sid] = ap
        return self.ds.add_source(
            sid,
            file=str(f),
            fp=fp,
            clips=clips,
            speaker=self.plan.name,
            skipped=skipped,
            tool="prepare_dataset",
            extra={"language": lang, "duration_s": round(total_s, 3), "audio_fingerprint": ap.exact, **facts},
        )


def _new_inputs(ds: DatasetFolder, files: list[Path]) -> list[tuple[Path, str]]:
    """Inputs whose file fingerprint is not yet in the folder (unreadable ones are reported)."""
    todo = []
    for f in files:
        try:
            fp = fingerprint(f)
        except OSError as exc:
            ds.add_failed(str(f), f"cannot read: {exc}")
            continue
        if ds.source_for(fp) is not None:
            logger.info("already done, skipped: %s", f)
            continue
        if any(d.get("fingerprint") == fp for d in ds.report.get("duplicates", [])):
            logger.info("a known duplicate, skipped: %s", f)
            continue
        todo.append((f, fp))
    return todo


def _load_whisper(
    whisper_model: str | None, device: str, compute_type: str | None, language: str | None, batch_size: int
) -> TranscribeFn:
    if whisper_model is None:
        raise ConfigError("no Whisper model given; pass --whisper-model (a CTranslate2 folder or a model name)")
    from utils.data.transcribe import load_transcriber

    return load_transcriber(
        whisper_model, device=device, compute_type=compute_type, language=language, batch_size=batch_size
    )


def _reference_embedding(plan: SpeakerPlan, encoder: SpeakerEncoder | None) -> np.ndarray | None:
    if plan.reference is None or encoder is None:
        return None
    ref, _ = load_audio(plan.reference, WHISPER_SR)
    if ref.size < WHISPER_SR // 2:
        raise DataError(f"speaker reference {plan.reference} is shorter than 0.5 s; use a few seconds of the voice")
    return encoder.embed(ref)


def _decode(ds: DatasetFolder, f: Path) -> np.ndarray | None:
    """22.05 kHz mono audio of ``f``, or None (then the reason is in the report's failed inputs)."""
    try:
        audio = load_audio(f, TARGET_SR)[0]
    except DataError as exc:
        logger.warning("%s", exc)
        ds.add_failed(str(f), str(exc))
        return None
    if audio.size == 0 or float(np.max(np.abs(audio))) < 1e-4:
        ds.add_failed(str(f), "no audible audio (empty or silent)")
        return None
    return audio


def _record_duplicate(ds: DatasetFolder, f: Path, fp: str, dup: tuple[str, float], ap: AudioPrint) -> None:
    sid, sim = dup
    first = ds.report["sources"][sid]["file"]
    kind = "exact" if ds.report["sources"][sid].get("audio_fingerprint") == ap.exact else "near"
    logger.warning("%s is the same recording as %s (similarity %.3f); skipped", f, first, sim)
    ds.report.setdefault("duplicates", [])
    ds.report["duplicates"] = [d for d in ds.report["duplicates"] if d["file"] != str(f)]
    ds.report["duplicates"].append(
        {
            "file": str(f),
            "fingerprint": fp,
            "duplicate_of": first,
            "source": sid,
            "kind": kind,
            "similarity": round(sim, 4),
        }
    )
    ds.clear_failed(str(f))
