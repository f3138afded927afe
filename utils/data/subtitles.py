"""Subtitle import: a media file plus an SRT or VTT file in, one clip per cue (or merged cues) out.

Parsing uses ``webvtt-py`` (SRT and WebVTT). Cue text is cleaned of markup, speaker labels and
bracketed sound notes; cues that are only sound notes, overlap beyond the limits, have broken
timing or lie outside the media are reported as skipped with a reason.
"""

from __future__ import annotations

import html
import io
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from utils.data.audio import TARGET_SR, load_audio
from utils.data.dataset_folder import DatasetFolder, fingerprint
from utils.data.segment import SENTENCE_END, SegmentLimits
from utils.data.text import approx_token_count, clean_transcript
from utils.errors import DataError

logger = logging.getLogger(__name__)

_TAG = re.compile(r"<[^>]*>")
_ASS = re.compile(r"\{[^}]*\}")
_BRACKETS = re.compile(r"\[[^\]]*\]|\([^)]*\)|\uff08[^\uff09]*\uff09")
_MUSIC = re.compile(r"[\u266a\u266b\u266c\u2669]+")
_DASH = re.compile(r"^\s*[-\u2010\u2013\u2014]+\s*")
_CC = re.compile(r"^\s*>>+\s*")
_LABEL_UPPER = re.compile(r"^\s*[A-Z][A-Z0-9 .'\-]{0,30}:\s*")
_LABEL_NAME = re.compile(r"^\s*[A-Z][a-z]+(?: [A-Z][a-z]+)?:\s+")


@dataclass(frozen=True)
class Cue:
    """One subtitle cue: times in seconds, cleaned text, original text."""

    index: int
    start: float
    end: float
    text: str
    raw: str


def clean_cue_text(raw: str) -> str:
    """Remove markup, speaker labels, bracketed sound notes and music symbols; join lines."""
    out = []
    for line in html.unescape(_ASS.sub("", _TAG.sub("", raw))).splitlines():
        line = _BRACKETS.sub(" ", line)
        line = _MUSIC.sub(" ", line)
        line = _CC.sub("", line)
        line = _DASH.sub("", line)
        line = _LABEL_UPPER.sub("", line)
        line = _LABEL_NAME.sub("", line)
        out.append(line)
    text = clean_transcript(" ".join(out))
    return "" if not any(ch.isalnum() for ch in text) else text


def _decode(path: Path, encoding: str | None) -> str:
    data = path.read_bytes()
    if encoding:
        try:
            return data.decode(encoding)
        except (UnicodeDecodeError, LookupError) as exc:
            raise DataError(f"cannot decode {path} as {encoding}: {exc}; check --encoding") from exc
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path} is not UTF-8 (invalid byte at offset {exc.start}); pass its encoding, "
            f"e.g. --encoding cp1252 (Western), cp1251 (Cyrillic), latin-1, or re-save it as UTF-8"
        ) from exc


_TIMING = re.compile(r"^\s*(\d+:)?\d{1,2}:\d{2}[,.]\d{1,3}\s*-->\s*(\d+:)?\d{1,2}:\d{2}[,.]\d{1,3}(\s|$)")
_TIMING_HELP = "timestamps must look like 00:00:01,000 --> 00:00:02,500 (SRT) or 00:00:01.000 --> 00:00:02.500 (VTT)"


def _first_bad_block(text: str) -> str | None:
    """Where the file breaks the cue layout (a non-empty block with no timing line), else None.

    webvtt-py folds such a block into the previous cue's text, which would put subtitle numbers
    and stray lines into transcripts, so we check it ourselves.
    """
    blocks: list[tuple[int, list[str]]] = []
    for no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if blocks and blocks[-1][0] + len(blocks[-1][1]) == no:
            blocks[-1][1].append(line)
        else:
            blocks.append((no, [line]))
    for first, lines in blocks:
        if lines[0].lstrip("\ufeff").strip().upper().startswith(("WEBVTT", "NOTE", "STYLE", "REGION")):
            continue
        if not any("-->" in ln for ln in lines):
            return f"block at line {first} has no 'start --> end' timing line"
        for k, ln in enumerate(lines):
            if "-->" in ln and not _TIMING.match(ln):
                return f"line {first + k} has a malformed timing {ln.strip()!r}; {_TIMING_HELP}"
    return None


def read_subtitles(path: str | os.PathLike, encoding: str | None = None) -> tuple[list[Cue], list[dict[str, Any]], int]:
    """Parse an SRT or VTT file.

    Returns:
        (cues sorted by start time with cleaned text, skipped cues with reasons, number of cues
        that were out of order in the file).

    Raises:
        DataError: missing, empty, undecodable or malformed file, or no cue at all.
    """
    import webvtt
    from webvtt.errors import MalformedFileError

    path = Path(path)
    if not path.is_file():
        raise DataError(f"subtitle file not found: {path}")
    text = _decode(path, encoding).replace("\r\n", "\n").replace("\r", "\n")
    if not text.strip():
        raise DataError(f"subtitle file {path} is empty; export the subtitles again")
    is_vtt = path.suffix.lower() == ".vtt" or text.lstrip("\ufeff").lstrip().startswith("WEBVTT")
    kind = "VTT" if is_vtt else "SRT"
    bad_block = _first_bad_block(text)
    if bad_block is not None:
        raise DataError(f"{path} is not a valid {kind} file: {bad_block}; fix or remove that block")
    try:
        captions = list(webvtt.from_buffer(io.StringIO(text), format=kind.lower()))
    except MalformedFileError as exc:
        raise DataError(f"{path} is not a valid {kind} file ({exc}); {_TIMING_HELP}") from exc
    if not captions:
        raise DataError(f"{path} has no subtitle cues; check it is the right file")
    cues: list[Cue] = []
    skipped: list[dict[str, Any]] = []
    for i, c in enumerate(captions, start=1):
        start = c.start_time.in_milliseconds() / 1000.0
        end = c.end_time.in_milliseconds() / 1000.0
        raw = c.raw_text
        cleaned = clean_cue_text(raw)
        if end <= start:
            skipped.append({"cue": i, "start": start, "end": end, "text": raw, "reason": "invalid_timing",
                            "detail": "end is not after start"})
        elif not cleaned:
            skipped.append({"cue": i, "start": start, "end": end, "text": raw, "reason": "no_speech_text",
                            "detail": "only tags, labels or sound notes"})
        else:
            cues.append(Cue(i, start, end, cleaned, raw))
    out_of_order = sum(1 for a, b in zip(cues, cues[1:]) if b.start < a.start)
    cues.sort(key=lambda c: (c.start, c.end))
    return cues, skipped, out_of_order


def group_cues(
    cues: list[Cue],
    *,
    limits: SegmentLimits = SegmentLimits(max_merge_gap_s=1.0),
    count_tokens: Callable[[str], int] = approx_token_count,
) -> tuple[list[list[Cue]], list[dict[str, Any]]]:
    """Merge adjacent cues into clips within the limits.

    Cues overlapping the group so far must join it (their audio is shared); if that breaks the
    limits the overlapping cue is skipped. Otherwise a cue joins when the gap is small and the
    group is still short or does not end a sentence.

    Returns:
        (groups of cues, skipped cues with reasons).
    """
    span_max = limits.max_s - 2 * limits.pad_s
    groups: list[list[Cue]] = []
    skipped: list[dict[str, Any]] = []

    def fits(g: list[Cue]) -> bool:
        span = max(c.end for c in g) - g[0].start
        return span <= span_max and count_tokens(" ".join(c.text for c in g)) <= limits.max_tokens

    for c in cues:
        if groups:
            g = groups[-1]
            g_end = max(x.end for x in g)
            if c.start < g_end:  # overlap
                if fits(g + [c]):
                    g.append(c)
                else:
                    skipped.append({"cue": c.index, "start": c.start, "end": c.end, "text": c.raw,
                                    "reason": "overlapping_cue",
                                    "detail": f"overlaps cue {g[-1].index} and together they exceed the limits"})
                continue
            g_len = g_end - g[0].start
            sentence_done = g[-1].text.rstrip("\"')]\u201d\u2019").endswith(SENTENCE_END)
            if (c.start - g_end <= limits.max_merge_gap_s and fits(g + [c])
                    and (g_len < limits.short_s or not sentence_done)):
                g.append(c)
                continue
        groups.append([c])
    return groups, skipped


def import_subtitles(
    media: str | os.PathLike,
    subtitles: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    speaker: str = "speaker",
    encoding: str | None = None,
    limits: SegmentLimits = SegmentLimits(max_merge_gap_s=1.0, pad_s=0.1),
    count_tokens: Callable[[str], int] = approx_token_count,
    eval_fraction: float = 0.1,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Cut ``media`` at the cues of ``subtitles`` into the dataset folder ``out_dir``.

    Returns:
        The dataset report (also written to ``out_dir/dataset_report.json``); the source's
        ``skipped`` list names every cue not turned into a clip and why.

    Raises:
        DataError: unreadable media or subtitles, or no cue produced a clip.
    """
    from tqdm import tqdm

    media, subtitles = Path(media), Path(subtitles)
    if not media.is_file():
        raise DataError(f"media file not found: {media}")
    cues, skipped, out_of_order = read_subtitles(subtitles, encoding)
    n_cues = len(cues) + len(skipped)
    ds = DatasetFolder(out_dir)
    fp = fingerprint(media) + fingerprint(subtitles)[:8]
    if ds.source_for(fp) is not None:
        logger.info("%s with %s already imported; nothing to do", media, subtitles)
        return ds.report
    audio, _ = load_audio(media, TARGET_SR)
    total_s = len(audio) / TARGET_SR
    inside = []
    for c in cues:
        if c.start >= total_s:
            skipped.append({"cue": c.index, "start": c.start, "end": c.end, "text": c.raw, "reason": "outside_media",
                            "detail": f"starts after the media ends ({total_s:.2f} s)"})
        else:
            inside.append(c)
    groups, more = group_cues(inside, limits=limits, count_tokens=count_tokens)
    skipped.extend(more)
    clips = []
    for k, g in enumerate(tqdm(groups, desc="import", unit="clip", disable=not progress)):
        start, end = g[0].start, min(max(c.end for c in g), total_s)
        prev_end = max(c.end for c in groups[k - 1]) if k > 0 else 0.0
        next_start = groups[k + 1][0].start if k + 1 < len(groups) else total_s
        lo = max(0.0, start - limits.pad_s, (prev_end + start) / 2 if prev_end <= start else start)
        hi = min(total_s, end + limits.pad_s, (end + next_start) / 2 if next_start >= end else end)
        text = clean_transcript(" ".join(c.text for c in g))
        d = hi - lo
        if d < limits.min_s or d > limits.max_s or count_tokens(text) > limits.max_tokens:
            reason = "too_short" if d < limits.min_s else "too_long"
            skipped.append({"cue": g[0].index, "start": round(lo, 3), "end": round(hi, 3), "text": text,
                            "reason": reason, "detail": f"{d:.2f} s, {count_tokens(text)} tokens"})
            continue
        clips.append((audio[int(lo * TARGET_SR): int(hi * TARGET_SR)], text, lo, hi))
    skipped.sort(key=lambda s: s["start"])
    if not clips and not ds.rows:
        raise DataError(f"no clip could be cut from {media} with {subtitles} ({len(skipped)} cue(s) skipped: "
                        f"{sorted({s['reason'] for s in skipped})}); check the subtitles belong to this media")
    sid = ds.new_source_id(media, fp)
    ds.add_source(sid, file=str(media), fp=fp, clips=clips, speaker=speaker, skipped=skipped, tool="import_srt",
                  extra={"subtitles": str(subtitles), "cues": n_cues, "cues_out_of_order": out_of_order,
                         "duration_s": round(total_s, 3)})
    ds.report["last_run"] = {"tool": "import_srt", "new_clips": len(clips), "skipped_cues": len(skipped)}
    return ds.save(eval_fraction=eval_fraction, seed=seed)
