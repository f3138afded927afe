"""Preflight: check every row of a metadata CSV before any training, and say why rows are excluded.

Coqui's XTTSDataset silently drops rows it cannot use (too long, too short, [UNK] characters,
unreadable files) and recurses forever when all rows fail. This module finds those rows up
front, so training only ever sees rows that load, and the user sees a per-row report.

Audio checks (header, decode, duration, silence, clipping, content hash) run in a small
process pool; text checks (empty, [UNK], token length) run in the calling process because
tokenizers need not be picklable.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import multiprocessing
import os
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from utils.data.csv_io import BadRow, Row, read_coqui_csv
from utils.data.stats import dataset_stats
from utils.data.text import TextTokenizer, load_text_tokenizer
from utils.errors import DataError

logger = logging.getLogger(__name__)

MAX_AUDIO_S = 11.6  # XTTSDataset max_wav_length 255995 samples at 22.05 kHz
MIN_AUDIO_S = 0.5  # XTTSDataset drops clips under 0.5 s
MAX_TEXT_TOKENS = 200  # GPTArgs.max_text_length
SILENCE_RMS_DB = -55.0
MAX_CLIPPED_FRACTION = 0.001
_POOL_MIN_ROWS = 256  # below this, a process pool costs more than it saves


class Reason(str, Enum):
    """Why a sample is excluded: the one vocabulary of the preflight, the training dataset and the
    clip cache (reports and ``runtime_exclusions.jsonl`` hold the values)."""

    MALFORMED_ROW = "malformed_row"
    PATH_OUTSIDE_DATASET = "path_outside_dataset"
    MISSING_FILE = "missing_file"
    EMPTY_FILE = "empty_file"
    UNREADABLE_AUDIO = "unreadable_audio"
    TOO_SHORT = "too_short"
    TOO_LONG = "too_long"
    SILENT = "silent"
    CLIPPED = "clipped"
    EMPTY_TEXT = "empty_text"
    UNSUPPORTED_LANGUAGE = "unsupported_language"
    UNKNOWN_CHARACTERS = "unknown_characters"
    STOP_TOKEN_IN_TEXT = "stop_token_in_text"
    TEXT_TOO_LONG = "text_too_long"
    DUPLICATE_ROW = "duplicate_row"
    WRONG_SCRIPT = "wrong_script"


REASONS = {
    Reason.MALFORMED_ROW.value: "CSV line could not be parsed",
    Reason.PATH_OUTSIDE_DATASET.value: "audio path escapes the dataset folder",
    Reason.MISSING_FILE.value: "audio file does not exist",
    Reason.EMPTY_FILE.value: "audio file has 0 bytes",
    Reason.UNREADABLE_AUDIO.value: "audio file does not decode",
    Reason.TOO_SHORT.value: "audio shorter than the minimum",
    Reason.TOO_LONG.value: "audio longer than the maximum XTTS trains on",
    Reason.SILENT.value: "audio is (near) silent",
    Reason.CLIPPED.value: "audio is clipped",
    Reason.EMPTY_TEXT.value: "transcript is empty",
    Reason.UNSUPPORTED_LANGUAGE.value: "the tokenizer has no support for this language",
    Reason.UNKNOWN_CHARACTERS.value: "transcript has characters the tokenizer maps to [UNK]",
    Reason.STOP_TOKEN_IN_TEXT.value: "transcript encodes to the [STOP] token",
    Reason.TEXT_TOO_LONG.value: "transcript exceeds the text token limit",
    Reason.DUPLICATE_ROW.value: "same audio as an earlier row",
    Reason.WRONG_SCRIPT.value: "transcript mostly in another script than the language's",
}

# Letters outside the language's script: a row with more than ROW_SCRIPT_SHARE of them is
# excluded, and a dataset with more than MAX_SCRIPT_SHARE of them overall is refused (unless the
# user allows mixed scripts). Transcripts in the right script reach a few percent at most (names,
# brands, acronyms in Latin letters); a wrong --language gives close to 100%.
ROW_SCRIPT_SHARE = 0.5
MAX_SCRIPT_SHARE = 0.2


class SampleProblem(ValueError):
    """A sample that cannot be trained on: its :class:`Reason` and a detail for the report."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason, self.detail = reason, detail

    def record(self, audio_file: str) -> dict[str, Any]:
        return {"audio_file": audio_file, "reason": self.reason.value, "detail": self.detail}


@dataclass(frozen=True)
class SpecialTokens:
    """The ids of the tokens a transcript must not encode to, read from the tokenizer's vocabulary."""

    unk: int | None
    stop: int | None

    @classmethod
    def of(cls, tokenizer: Any) -> SpecialTokens:
        """From Coqui's ``VoiceBpeTokenizer`` or the toolkit's (both wrap a ``tokenizers`` object)."""
        inner = getattr(tokenizer, "tokenizer", None)
        if inner is not None and hasattr(inner, "token_to_id"):
            return cls(unk=inner.token_to_id("[UNK]"), stop=inner.token_to_id("[STOP]"))
        return cls(unk=getattr(tokenizer, "unk_id", None), stop=getattr(tokenizer, "stop_id", None))


def check_text(text: str) -> None:
    """Raise :class:`SampleProblem` for an empty transcript."""
    if not text.strip():
        raise SampleProblem(Reason.EMPTY_TEXT, "no transcript")


def check_tokens(ids: Sequence[int], special: SpecialTokens, max_tokens: int) -> None:
    """Raise :class:`SampleProblem` for [UNK] or [STOP] in the token ids, or too many of them."""
    if special.unk is not None and special.unk in ids:
        raise SampleProblem(
            Reason.UNKNOWN_CHARACTERS, "the encoding holds [UNK]; extend the vocabulary or fix the text"
        )
    if special.stop is not None and special.stop in ids:
        raise SampleProblem(Reason.STOP_TOKEN_IN_TEXT, "the text encodes to the [STOP] token")
    if len(ids) > max_tokens:
        raise SampleProblem(Reason.TEXT_TOO_LONG, f"{len(ids)} tokens > {max_tokens}")


def check_length(num_samples: int, sample_rate: int, *, max_samples: int, min_s: float = MIN_AUDIO_S) -> None:
    """Raise :class:`SampleProblem` for a clip shorter than ``min_s`` or longer than ``max_samples``."""
    seconds = num_samples / sample_rate
    if seconds < min_s:
        raise SampleProblem(Reason.TOO_SHORT, f"{seconds:.2f} s < {min_s} s")
    if num_samples > max_samples:
        raise SampleProblem(Reason.TOO_LONG, f"{seconds:.2f} s > {max_samples / sample_rate:.2f} s (max_wav_length)")


@dataclass
class PreflightReport:
    """Result of :func:`run_preflight`; ``to_dict`` is the ``preflight_report.json`` schema."""

    csv_path: str
    language: str
    total: int = 0
    kept: int = 0
    hours_kept: float = 0.0
    excluded: list[dict[str, Any]] = field(default_factory=list)
    converted: int = 0
    conversions: dict[str, int] = field(default_factory=dict)
    checks_skipped: list[str] = field(default_factory=list)
    limits: dict[str, float] = field(default_factory=dict)
    kept_rows: list[Row] = field(default_factory=list, repr=False)
    kept_hashes: dict[str, int] = field(default_factory=dict, repr=False)
    flagged: list[dict[str, Any]] = field(default_factory=list)  # kept, but worth a look (see flag_rates)
    scripts: dict[str, Any] = field(default_factory=dict)  # letters outside the language's script (ScriptScreen)

    @property
    def excluded_share(self) -> float:
        return len(self.excluded) / self.total if self.total else 0.0

    def reason_counts(self) -> dict[str, int]:
        return dict(Counter(e["reason"] for e in self.excluded).most_common())

    def to_dict(self) -> dict[str, Any]:
        return {
            "csv": self.csv_path,
            "language": self.language,
            "total": self.total,
            "kept": self.kept,
            "hours_kept": round(self.hours_kept, 6),
            "excluded_count": len(self.excluded),
            "reason_counts": self.reason_counts(),
            "excluded": self.excluded,
            "converted": self.converted,
            "conversions": self.conversions,
            "checks_skipped": self.checks_skipped,
            "limits": self.limits,
            "flagged": self.flagged,
            "scripts": self.scripts,
            "stats": dataset_stats(self.kept_rows),
        }

    def write_json(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return path

    def summary_lines(self, examples: int = 3) -> list[str]:
        """Human summary: totals, counts per reason, the first few examples of each."""
        lines = [
            f"{self.csv_path}: {self.total} rows, {self.kept} kept ({self.hours_kept:.3f} h), "
            f"{len(self.excluded)} excluded"
        ]
        if self.converted:
            what = ", ".join(f"{k}: {v}" for k, v in sorted(self.conversions.items()))
            lines.append(f"  {self.converted} rows will be converted on load to 22050 Hz mono 16-bit ({what})")
        for check in self.checks_skipped:
            lines.append(f"  skipped check: {check}")
        if self.scripts.get("outside"):
            lines.append(f"  letters outside the language's script: {self.scripts['detail']}")
        if self.flagged:
            kinds = ", ".join(sorted({f["reason"] for f in self.flagged}))
            lines.append(f"  {len(self.flagged)} kept rows flagged for review ({kinds}):")
            for f in self.flagged[:examples]:
                lines.append(f"    row {f['row']} {f['audio_file']}: {f['detail']}")
        for reason, count in self.reason_counts().items():
            lines.append(f"  {reason}: {count} ({REASONS.get(reason, '')})")
            for e in [e for e in self.excluded if e["reason"] == reason][:examples]:
                lines.append(f"    row {e['row']} {e['audio_file']}: {e['detail']}")
        return lines


def _audio_check(args: tuple[str, float, float, float, float]) -> dict[str, Any]:
    """Check one audio file (runs in a worker process). Returns reason/detail or facts."""
    path, min_s, max_s, silence_db, max_clipped = args
    try:
        size = os.path.getsize(path)
    except OSError:
        return {"reason": Reason.MISSING_FILE.value, "detail": f"{path} not found"}
    if size == 0:
        return {"reason": Reason.EMPTY_FILE.value, "detail": "0 bytes"}
    try:
        info = sf.info(path)
    except (sf.LibsndfileError, RuntimeError) as exc:
        return {
            "reason": Reason.UNREADABLE_AUDIO.value,
            "detail": f"{str(exc).strip()[:200]}; convert it to WAV or FLAC",
        }
    if info.samplerate <= 0 or info.frames <= 0:
        return {"reason": Reason.UNREADABLE_AUDIO.value, "detail": "no audio frames"}
    duration = info.frames / info.samplerate
    facts = {
        "duration": duration,
        "sr": int(info.samplerate),
        "channels": int(info.channels),
        "subtype": str(info.subtype),
    }
    if duration < min_s:
        return {**facts, "reason": Reason.TOO_SHORT.value, "detail": f"{duration:.2f} s < {min_s} s"}
    if duration > max_s:
        return {**facts, "reason": Reason.TOO_LONG.value, "detail": f"{duration:.2f} s > {max_s} s"}
    try:
        # int16 whatever the file holds: the clip is trained as 16-bit, so clipping and silence
        # are judged on what training will see, and hashing half the bytes of float32 is faster.
        # (float files are read as float: libsndfile does not scale float to int on read)
        if info.subtype.startswith("PCM") or info.subtype in ("ULAW", "ALAW"):
            data, _ = sf.read(path, dtype="int16", always_2d=True)
        else:
            f32, _ = sf.read(path, dtype="float32", always_2d=True)
            data = np.round(np.clip(f32, -1.0, 1.0) * 32767.0).astype(np.int16)
    except (sf.LibsndfileError, RuntimeError) as exc:
        return {**facts, "reason": Reason.UNREADABLE_AUDIO.value, "detail": str(exc).strip()[:200]}
    if data.shape[0] == 0:
        return {**facts, "reason": Reason.UNREADABLE_AUDIO.value, "detail": "no audio frames decoded"}
    facts["hash"] = hashlib.sha1(data.tobytes()).hexdigest()
    mono = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0].astype(np.float32)
    rms = math.sqrt(float(np.dot(mono, mono)) / mono.size) / 32768.0
    rms_db = 20.0 * math.log10(max(rms, 1e-10))
    if rms_db < silence_db:
        return {**facts, "reason": Reason.SILENT.value, "detail": f"RMS {rms_db:.1f} dBFS < {silence_db} dBFS"}
    full = 0.999 * 32767
    if max(float(mono.max()), -float(mono.min())) >= full:
        clipped = float(np.count_nonzero(np.abs(mono) >= full)) / mono.size
        if clipped > max_clipped:
            return {
                **facts,
                "reason": Reason.CLIPPED.value,
                "detail": f"{clipped:.2%} of samples at full scale (> {max_clipped:.2%})",
            }
    return facts


def _text_check(
    text: str, language: str, tokenizer: TextTokenizer | None, max_tokens: int, special: SpecialTokens | None = None
) -> tuple[str, str] | None:
    try:
        check_text(text)
        if tokenizer is None:
            return None
        special = special or SpecialTokens(None, None)
        ids = tokenizer.encode(text, language)
        # unknown_characters is only asked when the encoding holds [UNK] (or the id is unknown):
        # it is the slow call, and clean rows are the common case.
        if special.unk is None or special.unk in ids:
            unknown = tokenizer.unknown_characters(text, language)
            if unknown:
                shown = " ".join(f"{c!r} (U+{ord(c):04X})" for c in unknown[:10])
                raise SampleProblem(
                    Reason.UNKNOWN_CHARACTERS, f"[UNK] for: {shown}; extend the vocabulary or fix the text"
                )
        check_tokens(ids, special, max_tokens)
    except SampleProblem as problem:
        return problem.reason.value, problem.detail
    except NotImplementedError as exc:
        return Reason.UNSUPPORTED_LANGUAGE.value, f"{exc}; add a normaliser/vocabulary for {language!r}"
    return None


def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
    except ValueError:
        return False
    return True


def _run_checks(
    jobs: list[tuple], text_check: Callable[[int], tuple[str, str] | None], num_texts: int, workers: int, progress: bool
) -> tuple[list[dict[str, Any]], list[tuple[str, str] | None]]:
    """Audio checks of ``jobs`` in a process pool while the ``num_texts`` text checks run here."""
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), desc="preflight", unit="clip", disable=not progress, leave=False)
    results: list[dict[str, Any]] = []
    if workers <= 1 or len(jobs) < _POOL_MIN_ROWS:
        texts = [text_check(i) for i in range(num_texts)]
        for job in jobs:
            results.append(_audio_check(job))
            bar.update()
    else:
        # spawn, not fork: the trainer calls this with torch (and its threads) already loaded.
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            pending = pool.map(_audio_check, jobs, chunksize=max(1, min(64, len(jobs) // (4 * workers))))
            texts = [text_check(i) for i in range(num_texts)]  # while the pool works
            for res in pending:
                results.append(res)
                bar.update()
    bar.close()
    return results, texts


class AudioCheckCache:
    """Audio check results kept in a JSON file, keyed by path, size, modification time and limits.

    A second preflight of the same files reads no audio: the checks (and the audio hash that finds
    duplicates) depend only on the file's bytes and the limits. A file that changed size or
    modification time, or a run with other limits, is checked again. Missing and empty files are
    never cached.
    """

    VERSION = 1

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.entries: dict[str, list[Any]] = {}
        self.changed = False
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if data.get("version") == self.VERSION and isinstance(data.get("entries"), dict):
                self.entries = data["entries"]
        except (OSError, ValueError, AttributeError):
            pass  # no cache yet, or an unreadable one: everything is checked again

    @staticmethod
    def _stamp(job: tuple) -> list[Any] | None:
        try:
            st = os.stat(job[0])
        except OSError:
            return None
        return [st.st_size, st.st_mtime_ns, list(job[1:])] if st.st_size > 0 else None

    def get(self, job: tuple) -> dict[str, Any] | None:
        entry = self.entries.get(job[0])
        stamp = self._stamp(job)
        if stamp is None or not entry or entry[:3] != stamp:
            return None
        return dict(entry[3])

    def put(self, job: tuple, result: dict[str, Any]) -> None:
        stamp = self._stamp(job)
        if stamp is not None and result.get("reason") not in (Reason.MISSING_FILE.value, Reason.EMPTY_FILE.value):
            self.entries[job[0]] = [*stamp, result]
            self.changed = True

    def save(self) -> None:
        if not self.changed:
            return
        from utils.fs import write_json_atomic

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.path, {"version": self.VERSION, "entries": self.entries})
        except OSError as exc:  # a cache that cannot be written costs time, not correctness
            logger.warning("preflight cache not written (%s): the next run checks the audio again", exc)
        self.changed = False


def _audio_results(
    jobs: list[tuple],
    text_check: Callable[[int], tuple[str, str] | None],
    workers: int,
    progress: bool,
    cache: AudioCheckCache | None,
) -> tuple[list[dict[str, Any]], list[tuple[str, str] | None]]:
    """Every job's audio check (from ``cache`` where it still holds) and every text check, in row order."""
    results: list[dict[str, Any] | None] = [cache.get(job) if cache else None for job in jobs]
    todo = [i for i, res in enumerate(results) if res is None]
    computed, texts = _run_checks([jobs[i] for i in todo], text_check, len(jobs), workers, progress)
    for i, res in zip(todo, computed, strict=True):
        results[i] = res
        if cache is not None:
            cache.put(jobs[i], res)
    if cache is not None:
        if todo != list(range(len(jobs))):
            logger.info("preflight: %d of %d audio checks read from %s", len(jobs) - len(todo), len(jobs), cache.path)
    return [r for r in results if r is not None], texts


def run_preflight(
    csv_path: str | os.PathLike,
    *,
    language: str,
    tokenizer: TextTokenizer | None = None,
    vocab_path: str | os.PathLike | None = None,
    dataset_root: str | os.PathLike | None = None,
    max_audio_s: float = MAX_AUDIO_S,
    min_audio_s: float = MIN_AUDIO_S,
    max_text_tokens: int = MAX_TEXT_TOKENS,
    silence_rms_db: float = SILENCE_RMS_DB,
    max_clipped_fraction: float = MAX_CLIPPED_FRACTION,
    workers: int | None = None,
    progress: bool = True,
    exclude_duplicates_of: PreflightReport | None = None,
    audio_cache: str | os.PathLike | AudioCheckCache | None = None,
    allow_mixed_script: bool = False,
) -> PreflightReport:
    """Check every row of a ``coqui``-format CSV; the report lists each excluded row with its reason.

    Args:
        csv_path: metadata CSV; its audio paths are relative to ``dataset_root`` (default: the
            CSV's folder) and must stay inside it.
        tokenizer: ``encode`` and ``unknown_characters`` (else built from ``vocab_path``); with
            neither, the [UNK] and token-length checks are skipped and the report says so.
        workers: processes for the audio checks (default: min(8, CPU count)); ``progress``: a bar.
        exclude_duplicates_of: an earlier report (the train CSV's, when checking eval): rows with
            the same file or audio as one of its kept rows are excluded as ``duplicate_row``.
        audio_cache: earlier audio check results (:class:`AudioCheckCache`): unchanged files are not
            read again; a path is written back at once, an object is the caller's to ``save()``.
        allow_mixed_script: rows mostly in another script than the language's are flagged, not
            excluded as ``wrong_script``, nor refused by :func:`check_usable`.

    Returns:
        The report; ``kept_rows`` carry their ``duration``.

    Raises:
        DataError: the CSV cannot be read at all (missing, not UTF-8, wrong delimiter, missing columns).
    """
    csv_path = Path(csv_path)
    root = Path(dataset_root).resolve() if dataset_root is not None else csv_path.resolve().parent
    bad: list[BadRow] = []
    rows = read_coqui_csv(csv_path, dataset_root=root, bad_rows=bad)
    limits = {"min_audio_s": min_audio_s, "max_audio_s": max_audio_s, "max_text_tokens": max_text_tokens}
    limits.update(silence_rms_db=silence_rms_db, max_clipped_fraction=max_clipped_fraction)
    report = PreflightReport(csv_path=str(csv_path), language=language, total=len(rows) + len(bad), limits=limits)
    tokenizer = _text_tokenizer(tokenizer, vocab_path, language, report)
    screen = _Screen(root, exclude_duplicates_of)
    for b in bad:
        screen.exclude(b, Reason.MALFORMED_ROW, b.detail)
    scripts = ScriptScreen(language, allow_mixed_script)
    candidates = [r for r in rows if screen.admit(r) and scripts.admit(r, screen)]
    checked = _check_rows(candidates, limits, language, tokenizer, workers, progress, audio_cache)
    kept = [r for r, (res, text) in zip(candidates, checked, strict=True) if screen.keep(r, res, text, report)]
    report.excluded = [screen.excluded[k] for k in sorted(screen.excluded)]
    report.kept_rows, report.kept_hashes, report.kept = kept, screen.seen_hashes, len(kept)
    report.hours_kept, report.scripts = sum(r.duration or 0.0 for r in kept) / 3600.0, scripts.summary(csv_path)
    logger.info("preflight %s: %d/%d rows kept, %.3f h", csv_path, report.kept, report.total, report.hours_kept)
    report.flagged = flag_rates(report) + scripts.flagged(kept)
    return report


def _text_tokenizer(
    tokenizer: TextTokenizer | None, vocab_path: str | os.PathLike | None, language: str, report: PreflightReport
) -> TextTokenizer | None:
    """The tokenizer to check with (None: the report says which checks are skipped)."""
    tokenizer = tokenizer if tokenizer is not None or vocab_path is None else load_text_tokenizer(vocab_path)
    if tokenizer is None:
        report.checks_skipped.append("unknown_characters and text_too_long: no --vocab/tokenizer given")
        return None
    from utils.language.registry import check_frontend

    check_frontend(language)  # a missing text front end is one line, not an error per row
    return tokenizer


class ScriptScreen:
    """Letters outside the language's script, per row and over one CSV (:mod:`utils.language.script`).

    A row with more than :data:`ROW_SCRIPT_SHARE` of its letters outside is excluded as
    ``wrong_script`` (kept and flagged with ``allow_mixed``); a kept row with any is flagged as
    ``mixed_script``. Languages whose script the toolkit does not know are not checked.
    """

    def __init__(self, language: str, allow_mixed: bool = False) -> None:
        from utils.language.script import ScriptCount, expected_scripts

        self.language, self.allow = language, allow_mixed
        self.expected = expected_scripts(language)
        self.total = ScriptCount()
        self.rows = self.rows_outside = 0
        self.flags: dict[int, dict[str, Any]] = {}

    def admit(self, r: Row, screen: _Screen) -> bool:
        """Count the row's letters; False (and excluded through ``screen``) for a row in another script."""
        from utils.language.script import count_scripts

        count = count_scripts(r.text, self.language) if self.expected else None
        if count is None:
            return True
        self.total.add(count)
        self.rows += 1
        if not count.outside:
            return True
        self.rows_outside += 1
        detail = count.describe(self.expected)
        if count.share > ROW_SCRIPT_SHARE and not self.allow:
            hint = "check --language, fix the transcript, or pass --allow-mixed-script"
            return screen.exclude(r, Reason.WRONG_SCRIPT, f"{detail}; {hint}")
        self.flags[r.row] = {"row": r.row, "audio_file": r.audio_file, "reason": "mixed_script", "detail": detail}
        return True

    def flagged(self, kept: list[Row]) -> list[dict[str, Any]]:
        """The flags of the rows that were kept, in row order."""
        return [self.flags[r.row] for r in kept if r.row in self.flags]

    def summary(self, csv_path: str | os.PathLike) -> dict[str, Any]:
        """The report's ``scripts`` entry; logs a warning when any letter is outside the script."""
        if self.expected is None:
            return {"expected": None, "checked": False, "language": self.language}
        out = {
            "expected": list(self.expected),
            "checked": True,
            "language": self.language,
            "letters": self.total.letters,
            "outside": self.total.outside,
            "share": round(self.total.share, 4),
            "outside_by_script": dict(self.total.by_script.most_common()),
            "rows": self.rows,
            "rows_with_outside": self.rows_outside,
            "allow_mixed_script": self.allow,
            "detail": f"{self.total.describe(self.expected)}, in {self.rows_outside} of {self.rows} rows",
        }
        if self.total.outside:
            logger.warning(
                "preflight %s: %s (--language %s; each row's share is in the report)",
                csv_path,
                out["detail"],
                self.language,
            )
        return out


def _check_rows(
    rows: list[Row],
    limits: dict[str, Any],
    language: str,
    tokenizer: TextTokenizer | None,
    workers: int | None,
    progress: bool,
    audio_cache: str | os.PathLike | AudioCheckCache | None,
) -> list[tuple[dict[str, Any], tuple[str, str] | None]]:
    """(audio check, text check) of every row, in row order; the audio ones from the cache where it holds."""
    workers = workers if workers is not None else min(8, os.cpu_count() or 1)
    audio_limits = [limits[k] for k in ("min_audio_s", "max_audio_s", "silence_rms_db", "max_clipped_fraction")]
    jobs = [(str(r.path), *audio_limits) for r in rows]
    special = SpecialTokens.of(tokenizer) if tokenizer is not None else None
    max_tokens = int(limits["max_text_tokens"])
    own_cache = audio_cache is not None and not isinstance(audio_cache, AudioCheckCache)
    cache = AudioCheckCache(audio_cache) if own_cache else audio_cache
    audio_results, text_results = _audio_results(
        jobs,
        lambda i: _text_check(rows[i].text, language, tokenizer, max_tokens, special),
        workers,
        progress,
        cache,
    )
    if own_cache:
        cache.save()  # a path: written back now (a caller's cache object is the caller's to save)
    return list(zip(audio_results, text_results, strict=True))


class _Screen:
    """The per-row bookkeeping of one preflight: exclusions, duplicates within and across CSVs."""

    def __init__(self, root: Path, other: PreflightReport | None) -> None:
        self.root = root
        self.excluded: dict[int, dict[str, Any]] = {}
        self.seen_paths: dict[Path, int] = {}
        self.seen_hashes: dict[str, int] = {}
        self.other_paths = {r.path: r.row for r in other.kept_rows} if other is not None else {}
        self.other_hashes = other.kept_hashes if other is not None else {}
        self.other_name = Path(other.csv_path).name if other is not None else ""

    def exclude(self, r: Row | BadRow, reason: Reason | str, detail: str) -> bool:
        reason = reason.value if isinstance(reason, Reason) else reason
        self.excluded[r.row] = {"row": r.row, "audio_file": r.audio_file, "reason": reason, "detail": detail}
        return False

    def admit(self, r: Row) -> bool:
        """Checks before any file is opened: path present, inside the dataset, not a repeat."""
        if not r.audio_file:
            return self.exclude(r, Reason.MISSING_FILE, "audio_file column is empty")
        if not _inside(r.path, self.root):
            return self.exclude(
                r,
                Reason.PATH_OUTSIDE_DATASET,
                f"resolves to {r.path}, outside {self.root}; move the "
                f"file into that folder (paths relative to the CSV), or check against a folder that "
                f"holds both with scripts/validate_dataset.py --dataset-root DIR",
            )
        if r.path in self.seen_paths:
            return self.exclude(r, Reason.DUPLICATE_ROW, f"same file as row {self.seen_paths[r.path]}")
        if r.path in self.other_paths:
            return self.exclude(
                r, Reason.DUPLICATE_ROW, f"same file as row {self.other_paths[r.path]} of {self.other_name}"
            )
        self.seen_paths[r.path] = r.row
        return True

    def keep(self, r: Row, res: dict[str, Any], text_problem: tuple[str, str] | None, report: PreflightReport) -> bool:
        """The audio and text results of one row: excluded with its reason, or kept (and counted)."""
        if "reason" in res:
            return self.exclude(r, res["reason"], res["detail"])
        if text_problem is not None:
            return self.exclude(r, *text_problem)
        if res["hash"] in self.seen_hashes:
            return self.exclude(r, Reason.DUPLICATE_ROW, f"same audio content as row {self.seen_hashes[res['hash']]}")
        if res["hash"] in self.other_hashes:
            row = self.other_hashes[res["hash"]]
            return self.exclude(r, Reason.DUPLICATE_ROW, f"same audio content as row {row} of {self.other_name}")
        self.seen_hashes[res["hash"]] = r.row
        r.duration = res["duration"]
        changes = [
            name
            for name, changed in (
                ("sample_rate", res["sr"] != 22050),
                ("channels", res["channels"] != 1),
                ("bit_depth", res["subtype"] != "PCM_16"),
            )
            if changed
        ]
        if changes:
            report.converted += 1
            for c in changes:
                report.conversions[c] = report.conversions.get(c, 0) + 1
        return True


# A transcript whose characters per second are this far from its speaker's median (by this factor,
# either way) is flagged: "A" for a 2.3 s clip (0.4/s against ~14/s) has lost most of its words.
RATE_FACTOR = 2.5
RATE_MIN_ROWS = 5  # below this many rows the median means little: fixed bounds instead
RATE_BOUNDS = (2.0, 40.0)  # characters per second, any language's speech


def flag_rates(report: PreflightReport) -> list[dict[str, Any]]:
    """Flag kept rows whose speaking rate is far from their speaker's typical rate.

    The same measure as data preparation's transcript review (:func:`utils.data.review.chars_per_second`:
    letters and digits per second, against the speaker's median), with a looser factor: any dataset
    reaches the preflight, recorded in many sessions, while the review compares clips of one recording.
    """
    from collections import defaultdict

    from utils.data.review import chars_per_second

    rates = [(r, chars_per_second(r.text, r.duration)) for r in report.kept_rows if r.duration]
    by_speaker: dict[str, list[float]] = defaultdict(list)
    for r, rate in rates:
        by_speaker[r.speaker_name].append(rate)
    medians = {
        name: sorted(values)[len(values) // 2] for name, values in by_speaker.items() if len(values) >= RATE_MIN_ROWS
    }
    flagged = []
    for r, rate in rates:
        median = medians.get(r.speaker_name)
        if median is not None:
            low, high, basis = median / RATE_FACTOR, median * RATE_FACTOR, f"speaker's median {median:.1f}"
        else:
            (low, high), basis = RATE_BOUNDS, f"expected {RATE_BOUNDS[0]:g}-{RATE_BOUNDS[1]:g}"
        if rate < low or rate > high:
            hint = "the transcript may be missing words" if rate < low else "the audio may be cut short"
            flagged.append(
                {
                    "row": r.row,
                    "audio_file": r.audio_file,
                    "reason": "speaking_rate",
                    "detail": f"{rate:.1f} characters/s over {r.duration:.1f} s ({basis}): {hint}",
                }
            )
    if flagged:
        logger.warning(
            "preflight %s: %d kept rows have a speaking rate far from the rest (listed in the report, e.g. row %d: %s)",
            report.csv_path,
            len(flagged),
            flagged[0]["row"],
            flagged[0]["detail"],
        )
    return flagged


def check_scripts(reports: Sequence[PreflightReport], max_share: float = MAX_SCRIPT_SHARE) -> None:
    """Refuse transcripts whose letters are mostly outside the language's script.

    Raises:
        DataError: more than ``max_share`` of the letters of ``reports`` together are outside the
            script, and the preflight ran without ``allow_mixed_script``.
    """
    from utils.language.script import ScriptCount

    checked = [r.scripts for r in reports if r.scripts.get("checked")]
    if not checked or any(s["allow_mixed_script"] for s in checked):
        return
    total = ScriptCount()
    for s in checked:
        total.add(ScriptCount(s["letters"], s["outside"], Counter(s["outside_by_script"])))
    rows = (sum(s["rows_with_outside"] for s in checked), sum(s["rows"] for s in checked))
    _refuse_scripts(total, tuple(checked[0]["expected"]), checked[0]["language"], rows, max_share)


def check_script_texts(texts: Sequence[str], language: str, max_share: float = MAX_SCRIPT_SHARE) -> None:
    """:func:`check_scripts` for raw transcripts, before anything (a vocabulary) is built from them."""
    from utils.language.script import ScriptCount, count_scripts, expected_scripts

    expected = expected_scripts(language)
    if expected is None:
        return
    total, rows_outside = ScriptCount(), 0
    for text in texts:
        count = count_scripts(text, language)
        total.add(count)
        rows_outside += count.outside > 0
    _refuse_scripts(total, expected, language, (rows_outside, len(texts)), max_share)


def _refuse_scripts(
    total: Any, expected: tuple[str, ...], language: str, rows: tuple[int, int], max_share: float
) -> None:
    if not total.letters or total.share <= max_share:
        return
    by = ", ".join(f"{k} {v}" for k, v in total.by_script.most_common())
    raise DataError(
        f"{total.share:.0%} of the transcripts' letters ({total.outside} of {total.letters}, in {rows[0]} of {rows[1]} "
        f"rows) are outside the {'/'.join(expected)} script that --language {language} expects ({by}), more than "
        f"{max_share:.0%}; check --language, fix the transcripts, or pass --allow-mixed-script to use them as they are"
    )


def check_usable(
    report: PreflightReport,
    eval_report: PreflightReport | None = None,
    max_excluded_share: float = 0.2,
) -> None:
    """Refuse a dataset training cannot use well.

    Raises:
        DataError: transcripts mostly outside the language's script (:func:`check_scripts`), no
            kept train rows, an empty eval set, or more than ``max_excluded_share`` of the rows
            (train and eval together) excluded.
    """
    if report.total == 0:
        raise DataError(
            f"{report.csv_path} has no rows (only a header, or empty); add audio_file|text|speaker_name rows"
        )
    check_scripts([report] + ([eval_report] if eval_report is not None else []))
    if report.kept == 0:
        raise DataError(
            f"no usable rows in {report.csv_path} ({report.total} rows, all excluded: {report.reason_counts()}); "
            f"list each row's reason with: python scripts/validate_dataset.py {report.csv_path} --report rows.json"
        )
    if eval_report is not None and eval_report.kept == 0:
        raise DataError(
            f"the eval set {eval_report.csv_path} has no usable rows ({eval_report.total} rows); "
            f"add clips to it or re-split with scripts/prepare_dataset.py / scripts/merge_datasets.py"
        )
    reports = [report] + ([eval_report] if eval_report is not None else [])
    total = sum(r.total for r in reports)
    n_excluded = sum(len(r.excluded) for r in reports)
    share = n_excluded / total if total else 0.0
    if share > max_excluded_share:
        counts: Counter[str] = Counter()
        for r in reports:
            counts.update(r.reason_counts())
        raise DataError(
            f"{n_excluded} of {total} rows ({share:.1%}) fail the preflight, more than the allowed "
            f"{max_excluded_share:.0%} ({dict(counts.most_common())}); fix the data (each row's reason: "
            "python scripts/validate_dataset.py CSV --report rows.json) or raise the threshold with "
            "--max-excluded-share"
        )
