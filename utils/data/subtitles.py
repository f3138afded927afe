"""Subtitle import: a media file plus an SRT or VTT file in, one clip per cue (or merged cues) out.

The cue blocks are parsed here (``webvtt-py`` drops cues with no text, which shifts every later
cue number), so each report entry names the cue as the file numbers it. Cue text is cleaned of
markup, speaker labels and bracketed sound notes; WebVTT voice tags (``<v Name>``) become the
clip's speaker. Cues of different voices are never merged, and cues that overlap a cue of
another voice are skipped (their audio holds both). Empty cues, cues that are only sound notes,
cues with several voices, overlaps beyond the limits, broken timing or cues outside the media
are reported as skipped with a reason and the cue number.
"""

from __future__ import annotations

import html
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
    """One subtitle cue: its number in the file, times in seconds, cleaned text, original text, voice."""

    index: int
    start: float
    end: float
    text: str
    raw: str
    speaker: str | None = None


_VOICE = re.compile(r"<v(?:\.[^\s>]*)?\s+([^>]+)>")
_TIME = re.compile(r"(?:(\d+):)?(\d{1,2}):(\d{2})[,.](\d{1,3})")


def cue_voices(raw: str) -> list[str]:
    """Distinct WebVTT voice names in a cue's raw text, in order (``<v Bob>``, ``<v.loud Ann Lee>``)."""
    return list(dict.fromkeys(" ".join(v.replace("|", " ").split()) for v in _VOICE.findall(raw)))


def _seconds(stamp: str) -> float:
    m = _TIME.match(stamp.strip())
    if m is None:
        raise ValueError(stamp)
    h, mi, sec, frac = m.groups()
    return int(h or 0) * 3600 + int(mi) * 60 + int(sec) + int(frac.ljust(3, "0")) / 1000.0


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


def _cue_blocks(text: str, is_vtt: bool) -> list[tuple[int, str | None, str, list[str]]]:
    """(cue number, identifier, timing line, text lines) of each cue, empty cues included.

    SRT cues are numbered as the file numbers them (their identifier), VTT cues by position.
    """
    blocks: list[list[str]] = []
    cur: list[str] = []
    for line in text.splitlines():
        if line.strip():
            cur.append(line)
        elif cur:
            blocks.append(cur)
            cur = []
    if cur:
        blocks.append(cur)
    out = []
    for lines in blocks:
        if lines[0].lstrip("\ufeff").strip().upper().startswith(("WEBVTT", "NOTE", "STYLE", "REGION")):
            continue
        k = next(i for i, ln in enumerate(lines) if "-->" in ln)
        ident = lines[k - 1].strip() if k > 0 else None
        number = len(out) + 1
        if not is_vtt and ident is not None and ident.isdigit():
            number = int(ident)
        out.append((number, ident, lines[k], lines[k + 1 :]))
    return out


def read_subtitles(path: str | os.PathLike, encoding: str | None = None) -> tuple[list[Cue], list[dict[str, Any]], int]:
    """Parse an SRT or VTT file.

    Returns:
        (cues sorted by start time with cleaned text and voice, skipped cues with reasons and
        their numbers in the file, number of cues that were out of order in the file).

    Raises:
        DataError: missing, empty, undecodable or malformed file, or no cue at all.
    """
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
    blocks = _cue_blocks(text, is_vtt)
    if not blocks:
        raise DataError(f"{path} has no subtitle cues; check it is the right file")
    cues: list[Cue] = []
    skipped: list[dict[str, Any]] = []
    for number, _ident, timing, lines in blocks:
        left, right = timing.split("-->", 1)
        start, end = _seconds(left), _seconds(right.split()[0])
        raw = "\n".join(lines)
        entry = {"cue": number, "start": start, "end": end, "text": raw}
        voices = cue_voices(raw)
        cleaned = clean_cue_text(raw)
        if end <= start:
            skipped.append({**entry, "reason": "invalid_timing", "detail": "end is not after start"})
        elif not raw.strip():
            skipped.append({**entry, "reason": "empty_cue", "detail": "the cue has timing but no text"})
        elif not cleaned:
            skipped.append({**entry, "reason": "no_speech_text", "detail": "only tags, labels or sound notes"})
        elif len(voices) > 1:
            skipped.append(
                {
                    **entry,
                    "reason": "several_voices",
                    "detail": f"voices {', '.join(voices)} in one cue; their audio cannot be separated",
                }
            )
        else:
            cues.append(Cue(number, start, end, cleaned, raw, voices[0] if voices else None))
    out_of_order = sum(1 for a, b in zip(cues, cues[1:]) if b.start < a.start)
    cues.sort(key=lambda c: (c.start, c.end))
    return cues, skipped, out_of_order


def split_overlapping_voices(cues: list[Cue]) -> tuple[list[Cue], list[dict[str, Any]]]:
    """Skip every cue that overlaps a cue of another voice (the audio there holds both).

    Returns:
        (the remaining cues, skipped cues with reason ``overlapping_voices``).
    """
    bad: dict[int, Cue] = {}
    for i, a in enumerate(cues):
        for b in cues[i + 1 :]:
            if b.start >= a.end:
                break
            if (a.speaker or "") != (b.speaker or ""):
                bad[id(a)], bad[id(b)] = b, a
    skipped = [
        {
            "cue": c.index,
            "start": c.start,
            "end": c.end,
            "text": c.raw,
            "reason": "overlapping_voices",
            "detail": f"overlaps cue {bad[id(c)].index} of another voice ({bad[id(c)].speaker or 'untagged'})",
        }
        for c in cues
        if id(c) in bad
    ]
    return [c for c in cues if id(c) not in bad], skipped


def group_cues(
    cues: list[Cue],
    *,
    limits: SegmentLimits = SegmentLimits(max_merge_gap_s=1.0),
    count_tokens: Callable[[str], int] = approx_token_count,
) -> tuple[list[list[Cue]], list[dict[str, Any]]]:
    """Merge adjacent cues of one voice into clips within the limits.

    A cue of another voice always starts a new group. Cues overlapping the group so far must join
    it (their audio is shared); if that breaks the limits the overlapping cue is skipped.
    Otherwise a cue joins when the gap is small and the group is still short or does not end a
    sentence.

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
        if groups and (groups[-1][-1].speaker or "") != (c.speaker or ""):
            groups.append([c])  # never two voices in one clip
            continue
        if groups:
            g = groups[-1]
            g_end = max(x.end for x in g)
            if c.start < g_end:  # overlap
                if fits(g + [c]):
                    g.append(c)
                else:
                    skipped.append(
                        {
                            "cue": c.index,
                            "start": c.start,
                            "end": c.end,
                            "text": c.raw,
                            "reason": "overlapping_cue",
                            "detail": f"overlaps cue {g[-1].index} and together they exceed the limits",
                        }
                    )
                continue
            g_len = g_end - g[0].start
            sentence_done = g[-1].text.rstrip("\"')]\u201d\u2019").endswith(SENTENCE_END)
            if (
                c.start - g_end <= limits.max_merge_gap_s
                and fits(g + [c])
                and (g_len < limits.short_s or not sentence_done)
            ):
                g.append(c)
                continue
        groups.append([c])
    return groups, skipped


def _group_clip(
    g: list[Cue],
    audio: Any,
    total_s: float,
    speech: list[tuple[float, float]],
    speaker: str,
    limits: SegmentLimits,
    count_tokens: Callable[[str], int],
) -> tuple | dict[str, Any]:
    """The clip of a cue group (audio, text, start, end, meta), or a skip entry with its reason."""
    start, end = g[0].start, min(max(c.end for c in g), total_s)
    own = {(c.start, c.end) for c in g}
    prev_end = max((e for s_, e in speech if e <= start and (s_, e) not in own), default=0.0)
    next_start = min((s_ for s_, e in speech if s_ >= end and (s_, e) not in own), default=total_s)
    lo = max(0.0, start - limits.pad_s, (prev_end + start) / 2)
    hi = min(total_s, end + limits.pad_s, (end + next_start) / 2)
    text = clean_transcript(" ".join(c.text for c in g))
    d = hi - lo
    if d < limits.min_s or d > limits.max_s or count_tokens(text) > limits.max_tokens:
        return {
            "cue": g[0].index,
            "start": round(lo, 3),
            "end": round(hi, 3),
            "text": text,
            "reason": "too_short" if d < limits.min_s else "too_long",
            "detail": f"{d:.2f} s, {count_tokens(text)} tokens",
        }
    meta = {"speaker": g[0].speaker or speaker, "cues": [c.index for c in g]}
    return audio[int(lo * TARGET_SR) : int(hi * TARGET_SR)], text, lo, hi, meta


def _cue_groups(
    cues: list, skipped: list[dict[str, Any]], total_s: float, limits: SegmentLimits, count_tokens: Callable[[str], int]
) -> tuple[list, list[tuple[float, float]]]:
    """The cue groups to cut (reasons for the rest appended to ``skipped``) and every speech span."""
    inside = [c for c in cues if c.start < total_s]
    skipped.extend(
        {
            "cue": c.index,
            "start": c.start,
            "end": c.end,
            "text": c.raw,
            "reason": "outside_media",
            "detail": f"starts after the media ends ({total_s:.2f} s)",
        }
        for c in cues
        if c.start >= total_s
    )
    inside, more = split_overlapping_voices(inside)
    skipped.extend(more)
    groups, more = group_cues(inside, limits=limits, count_tokens=count_tokens)
    skipped.extend(more)
    # pads stop half-way to any other cue with speech, kept or skipped
    speech = sorted(
        [(c.start, c.end) for c in cues] + [(x["start"], x["end"]) for x in skipped if x["reason"] == "several_voices"]
    )
    return groups, speech


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
    clips = _cut_cues(audio, cues, skipped, speaker, limits, count_tokens, progress)
    if not clips and not ds.rows:
        raise DataError(
            f"no clip could be cut from {media} with {subtitles} ({len(skipped)} cue(s) skipped: "
            f"{sorted({s['reason'] for s in skipped})}); check the subtitles belong to this media"
        )
    sid = ds.new_source_id(media, fp)
    ds.add_source(
        sid,
        file=str(media),
        fp=fp,
        clips=clips,
        speaker=speaker,
        skipped=skipped,
        tool="import_srt",
        extra={
            "subtitles": str(subtitles),
            "cues": n_cues,
            "cues_out_of_order": out_of_order,
            "duration_s": round(total_s, 3),
        },
    )
    ds.report["last_run"] = {"tool": "import_srt", "new_clips": len(clips), "skipped_cues": len(skipped)}
    return ds.save(eval_fraction=eval_fraction, seed=seed)


def _cut_cues(
    audio: Any,
    cues: list[Cue],
    skipped: list[dict[str, Any]],
    speaker: str,
    limits: SegmentLimits,
    count_tokens: Callable[[str], int],
    progress: bool,
) -> list[Any]:
    """The clips cut at the cues; every cue group that gives none goes to ``skipped`` (sorted by start)."""
    from tqdm import tqdm

    total_s = len(audio) / TARGET_SR
    groups, speech = _cue_groups(cues, skipped, total_s, limits, count_tokens)
    made = [
        _group_clip(g, audio, total_s, speech, speaker, limits, count_tokens)
        for g in tqdm(groups, desc="import", unit="clip", disable=not progress)
    ]
    skipped.extend(c for c in made if isinstance(c, dict))
    skipped.sort(key=lambda s: s["start"])
    return [c for c in made if not isinstance(c, dict)]
