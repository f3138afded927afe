"""Objective evaluation of a fine-tune: ASR error rates, two speaker encoders, DNSMOS, timing.

For each checkpoint (``checkpoint_N.pth`` and ``best_model_N.pth``, one per step) the eval
sentences are synthesized with the same reference clip(s) and seed, through the generation guard
(:mod:`utils.after.guard`) with its text-based length cap but without trimming, so what a
checkpoint does after the last word is measured, not hidden. Each output is scored:

- CER / WER (:mod:`utils.after.asr`): faster-whisper transcribes the output; both the transcript
  and the sentence pass through the language's normaliser (XTTS's cleaners, or the toolkit's for a
  new language), are lower-cased and stripped of punctuation, then compared by Levenshtein distance. Skipped, with
  the reason in the report, when no ASR model covers the language (an English-only model and
  another language, no model folder, or Whisper lacks the language).
- Where the text ends: the transcript's word times are aligned with the text
  (:func:`utils.after.asr.align_last_word`); ``after_last_word_s`` is the audio after the
  text's last word, ``extra_words`` what was transcribed after it.
- Speaker similarity, twice: ``similarity_ge2e`` from Resemblyzer's GE2E encoder
  (:mod:`utils.after.quality`, independent of XTTS) and ``similarity_xtts`` from XTTS's own speaker
  encoder (``hifigan_decoder.speaker_encoder``, which the model is conditioned on: biased, and
  near 1.0 even for noise on an untrained model). Cosine with the references' mean; 1.0 is the
  same voice. An output in which GE2E finds no speech to embed scores 0.0.
- DNSMOS (``dnsmos_ovrl``, ``dnsmos_sig``, ``dnsmos_bak``; 1-5): noise and distortion, no
  reference needed.
- Timing: seconds per letter of the normalised text, leading/trailing non-speech (Silero VAD,
  shipped inside faster-whisper) and whether the tail is silence or noise. Flags mark likely
  failures: ``too_long`` (more than 2.5x the speaker's seconds per letter: babbling),
  ``too_short`` (under 0.4x: words vanish), ``trailing_noise``, ``long_leading_silence``,
  ``no_speech``, ``asr_mismatch`` (CER > 0.5), ``extra_words``. ``hallucination`` is true for
  ``extra_words`` or ``too_long``.

The best checkpoint (:data:`SELECT_RULE`) has the lowest
``mean CER + 0.5 * (1 - mean GE2E similarity) + 0.25 * (5 - mean DNSMOS OVRL) / 4 + 0.5 * share
of flagged outputs``; a term whose metric was skipped is dropped; ties go to the later step.
XTTS's own similarity is reported but not used: it favours the model's own bias.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from utils.after.asr import Transcriber, align_last_word, error_rates, letters, load_asr, metric_text
from utils.after.guard import NOISE_DBFS, GuardOptions, rms_dbfs, speech_bounds
from utils.after.quality import GE2ESimilarity, dnsmos
from utils.after.reference import DEFAULT_S_PER_LETTER, choose_references, run_rows, speaker_rate
from utils.after.synthesize import SynthesisOptions, load_model, synthesize_with_report, write_sidecar
from utils.data.audio import load_audio, write_wav
from utils.errors import ConfigError, DataError
from utils.plots import pyplot, save_png
from utils.runs import checkpoint_step, list_checkpoints, read_run_config, run_language

logger = logging.getLogger(__name__)

TOO_LONG_RATIO = 2.5
TOO_SHORT_RATIO = 0.4
MAX_TRAILING_S = 1.0
MAX_LEADING_S = 1.0
ASR_MISMATCH_CER = 0.5
SELECT_RULE = (
    "lowest mean CER + 0.5 * (1 - mean GE2E similarity) + 0.25 * (5 - mean DNSMOS OVRL) / 4 "
    "+ 0.5 * share of flagged outputs (a skipped metric's term is dropped); ties go to the later step"
)


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


# --------------------------------------------------------------------------------------------
# Scoring one output
# --------------------------------------------------------------------------------------------


@dataclass
class Scorer:
    """Scores synthesized audio against its text and the reference voice.

    Args:
        xtts: an ``Xtts`` (its speaker encoder gives ``similarity_xtts``), or None to skip that measure.
        language: language of the texts.
        references: the reference clip(s); their mean embedding is the target voice.
        asr: a Transcriber, or None (``asr_note`` says why).
        s_per_letter: the speaker's typical seconds per letter (for the timing flags).
        ge2e: the independent speaker encoder (default a new :class:`utils.after.quality.GE2ESimilarity`);
            None skips ``similarity_ge2e``.
        quality: False skips DNSMOS.
    """

    xtts: Any
    language: str
    references: list[Path]
    asr: Transcriber | None = None
    asr_note: str = ""
    s_per_letter: float = DEFAULT_S_PER_LETTER
    ge2e: Any = "default"
    quality: bool = True
    _target: np.ndarray | None = field(default=None, repr=False)
    _ge2e_target: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.ge2e == "default":
            self.ge2e = GE2ESimilarity()

    def _reference_audio(self) -> list[tuple[np.ndarray, int]]:
        return [load_audio(ref, target_sr=None) for ref in self.references]

    def target_embedding(self) -> np.ndarray:
        """XTTS's mean speaker embedding of the references."""
        if self._target is None:
            embs = [speaker_embedding(self.xtts, audio, sr) for audio, sr in self._reference_audio()]
            mean = np.mean(embs, axis=0)
            self._target = mean / max(float(np.linalg.norm(mean)), 1e-12)
        return self._target

    def ge2e_target(self) -> np.ndarray | None:
        """GE2E's mean embedding of the references (None when they hold no speech)."""
        if self._ge2e_target is None and self.ge2e is not None:
            self._ge2e_target = self.ge2e.target(self._reference_audio())
        return self._ge2e_target

    def score(self, audio: np.ndarray, sr: int, text: str) -> dict[str, Any]:
        """Metrics and flags for one output (see the module docstring)."""
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        duration = audio.size / sr
        n_letters = max(1, letters(metric_text(text, self.language)))
        rec: dict[str, Any] = {"text": text, "duration_s": round(duration, 3), "letters": n_letters}
        rec["s_per_letter"] = round(duration / n_letters, 4)
        flags: list[str] = []
        self._timing(rec, audio, sr, flags)
        ratio = rec["s_per_letter"] / self.s_per_letter
        rec["rate_ratio"] = round(ratio, 3)
        if ratio > TOO_LONG_RATIO:
            flags.append("too_long")
        elif ratio < TOO_SHORT_RATIO:
            flags.append("too_short")
        rec["similarity_xtts"] = rec["similarity_ge2e"] = None
        if audio.size:
            if self.xtts is not None:  # None: wavs scored without their model (on a machine that lacks it)
                sim = cosine(speaker_embedding(self.xtts, audio, sr), self.target_embedding())
                rec["similarity_xtts"] = round(sim, 4)
            target = self.ge2e_target() if self.ge2e is not None else None
            if target is not None:  # no speech GE2E can embed counts as no likeness (0.0), not as skipped
                sim = self.ge2e.similarity(audio, sr, target)
                rec["similarity_ge2e"] = 0.0 if sim is None else round(sim, 4)
        rec.update(self._dnsmos(audio, sr))
        self._asr(rec, audio, sr, text, flags)
        rec["hallucination"] = bool({"extra_words", "too_long"} & set(flags))
        rec["flags"] = flags
        return rec

    def _timing(self, rec: dict[str, Any], audio: np.ndarray, sr: int, flags: list[str]) -> None:
        duration = audio.size / sr
        bounds = speech_bounds(audio, sr) if audio.size else None
        if bounds is None:
            d = round(duration, 3)
            rec.update({"speech_s": 0.0, "leading_s": d, "trailing_s": d, "trailing_kind": "none"})
            flags.append("no_speech")
            return
        start, end = bounds
        tail = audio[int(end * sr) :]
        rec.update(
            {
                "speech_s": round(end - start, 3),
                "leading_s": round(start, 3),
                "trailing_s": round(max(0.0, duration - end), 3),
                "trailing_kind": "noise" if rms_dbfs(tail) > NOISE_DBFS else "silence",
            }
        )
        if rec["trailing_s"] > MAX_TRAILING_S:
            flags.append("trailing_noise" if rec["trailing_kind"] == "noise" else "long_trailing_silence")
        if start > MAX_LEADING_S:
            flags.append("long_leading_silence")

    def _dnsmos(self, audio: np.ndarray, sr: int) -> dict[str, float | None]:
        keys = ("dnsmos_ovrl", "dnsmos_sig", "dnsmos_bak")
        if not self.quality or not audio.size:
            return dict.fromkeys(keys)
        scores = dnsmos(audio, sr)
        return {"dnsmos_ovrl": scores["ovrl_mos"], "dnsmos_sig": scores["sig_mos"], "dnsmos_bak": scores["bak_mos"]}

    def _asr(self, rec: dict[str, Any], audio: np.ndarray, sr: int, text: str, flags: list[str]) -> None:
        """CER/WER, and where the text's last word ends in the audio (word times aligned to the text)."""
        rec.update(dict.fromkeys(("asr_text", "cer", "wer", "last_word_end_s", "after_last_word_s")))
        rec["extra_words"] = []
        if self.asr is None or not audio.size:
            return
        words = self.asr.words(audio, sr, max_new_tokens=len(text) + 20)
        rec["asr_text"] = " ".join(w for w, _s, _e in words).strip()
        cer, wer = error_rates(text, rec["asr_text"], self.language)
        rec["cer"], rec["wer"] = round(cer, 4), round(wer, 4)
        if cer > ASR_MISMATCH_CER:
            flags.append("asr_mismatch")
        last, extra = align_last_word(text, words, self.language) if words else (-1, [])
        if last >= 0:
            rec["last_word_end_s"] = round(words[last][2], 3)
            rec["after_last_word_s"] = round(max(0.0, audio.size / sr - words[last][2]), 3)
        if extra and sum(len(w) for w in extra) >= 3:
            rec["extra_words"] = extra
            flags.append("extra_words")


def summarize(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over one checkpoint's outputs (None where a metric was skipped)."""

    def mean(key: str) -> float | None:
        vals = [s[key] for s in samples if s.get(key) is not None]
        return round(float(np.mean(vals)), 4) if vals else None

    flagged = sum(1 for s in samples if s["flags"])
    keys = (
        "cer",
        "wer",
        "similarity_xtts",
        "similarity_ge2e",
        "dnsmos_ovrl",
        "dnsmos_sig",
        "dnsmos_bak",
        "s_per_letter",
        "leading_s",
        "trailing_s",
        "after_last_word_s",
    )
    return {
        "n": len(samples),
        **{k: mean(k) for k in keys},
        "hallucinations": sum(1 for s in samples if s.get("hallucination")),
        "flagged": flagged,
        "flagged_share": round(flagged / len(samples), 4) if samples else None,
        "flag_counts": {
            f: sum(1 for s in samples if f in s["flags"]) for f in sorted({f for s in samples for f in s["flags"]})
        },
    }


def selection_score(summary: dict[str, Any]) -> float:
    """The number :data:`SELECT_RULE` minimises (lower is better)."""
    score = summary["cer"] or 0.0
    if summary.get("similarity_ge2e") is not None:
        score += 0.5 * (1.0 - summary["similarity_ge2e"])
    if summary.get("dnsmos_ovrl") is not None:
        score += 0.25 * (5.0 - summary["dnsmos_ovrl"]) / 4.0
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
        cols = ("CER", "WER", "sim GE2E", "sim XTTS", "DNSMOS", "s/letter", "trailing s", "after last word s")
        keys = (
            "cer",
            "wer",
            "similarity_ge2e",
            "similarity_xtts",
            "dnsmos_ovrl",
            "s_per_letter",
            "trailing_s",
            "after_last_word_s",
        )
        lines = [
            "| checkpoint | step | " + " | ".join(cols) + " | hallucinations | flagged | score |",
            "|" + "---|" * (len(cols) + 5),
        ]
        for c in self.checkpoints:
            s = c["summary"]
            name = c["name"] + (f" (= {', '.join(c['same_step'])})" if c.get("same_step") else "")
            values = " | ".join(_f(s.get(k)) for k in keys)
            lines.append(
                f"| {name} | {c['step'] if c['step'] is not None else '-'} | {values} | "
                f"{s['hallucinations']}/{s['n']} | "
                f"{s['flagged']}/{s['n']} | {c['score']:.3f} |"
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


def run_checkpoints(run_dir: str | os.PathLike) -> list[tuple[Path, list[str]]]:
    """Every checkpoint of a run, one per step, each with the names of the other files of its step.

    ``checkpoint_N.pth`` and ``best_model_N.pth`` of one step hold the same weights, so the step
    is evaluated once (see :func:`utils.runs.list_checkpoints`); a ``best_model_N.pth`` whose step
    has no full checkpoint is evaluated on its own.
    """
    run_dir = Path(run_dir)
    steps: dict[int, list[str]] = {}
    for path in sorted(run_dir.glob("*.pth")):
        step = checkpoint_step(path)
        if step is not None:
            steps.setdefault(step, []).append(path.name)
    out = []
    for ckpt in list_checkpoints(run_dir):
        step = checkpoint_step(ckpt)
        out.append((ckpt, [n for n in steps.get(step, []) if n != ckpt.name] if step is not None else []))
    return out


def _eval_inputs(
    run_dir: Path,
    language: str,
    sentences: list[str] | None,
    references: list[Any] | None,
    max_sentences: int,
    short_probes: int,
    num_references: int,
) -> tuple[list[str], list[Path], float]:
    """The sentences, the reference clips and the speaker's seconds per letter of an evaluation."""
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
    rate = speaker_rate([(r.path, r.text) for r in train_rows], language)
    return list(sentences), [Path(r) for r in references], rate


def default_eval_options() -> SynthesisOptions:
    """Seed 0 and the guard's length cap, without trimming (the tail is what is measured)."""
    return SynthesisOptions(seed=0, guard=GuardOptions(trim=False))


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
    options: SynthesisOptions | None = None,
    out_dir: str | os.PathLike | None = None,
    device: str | None = None,
) -> EvalReport:
    """Synthesize the eval sentences with each checkpoint and score them; write the report.

    Args:
        run_dir: the run folder (its eval rows give the sentences, its training rows the
            references and the speaker's rate).
        checkpoints: checkpoints or export folders to evaluate; default every checkpoint of the
            run (:func:`run_checkpoints`, best models included).
        short_probes: short texts added to the run's eval sentences (see :func:`short_texts`),
            where babbling and trailing noise show most.
        sentences / language / references: override the run's.
        num_references: clips chosen from the training rows when ``references`` is None (as the export).
        asr_model: faster-whisper model folder (default :func:`default_asr_model`).
        options: :class:`utils.after.synthesize.SynthesisOptions` (default :func:`default_eval_options`).
        out_dir: where eval_report.json, eval_report.md, eval_metrics.png and the wavs go
            (default ``<run>/eval``).

    Returns:
        The :class:`EvalReport` (also written as eval_report.json, eval_report.md, eval_metrics.png).
    """
    from tqdm import tqdm

    run_dir = Path(run_dir)
    language = language or run_language(read_run_config(run_dir))
    sentences, references, rate = _eval_inputs(
        run_dir, language, sentences, references, max_sentences, short_probes, num_references
    )
    ckpts = [(Path(c), []) for c in checkpoints] if checkpoints else run_checkpoints(run_dir)
    if not ckpts:
        raise DataError(f"{run_dir} holds no checkpoint to evaluate")
    out_dir = Path(out_dir) if out_dir else run_dir / "eval"
    ctx = _eval_context(language, references, rate, asr_model if use_asr else False, options, device)
    report = EvalReport(run_dir, language, sentences, references, ctx["asr"][1])
    with tqdm(total=len(ckpts) * len(sentences), desc="evaluate", unit="wav") as bar:
        for ckpt, same_step in ckpts:
            entry = _evaluate_checkpoint(ckpt, sentences, out_dir, ctx, bar)
            entry["same_step"] = same_step
            report.checkpoints.append(entry)
    report.best = choose_best(report.checkpoints)
    write_report(report, out_dir)
    return report


def _eval_context(
    language: str, references: list, rate: float, asr_model: Any, options: Any, device: str | None
) -> dict[str, Any]:
    """What scoring each checkpoint needs: ASR (``asr_model`` False: off), GE2E, options."""
    asr, asr_note = (
        load_asr(language, asr_model or None) if asr_model is not False else (None, "ASR disabled (--no-asr)")
    )
    if asr is None:
        logger.warning("CER/WER skipped: %s", asr_note)
    return {
        "language": language,
        "references": references,
        "asr": (asr, asr_note),
        "s_per_letter": rate,
        "ge2e": GE2ESimilarity(),
        "options": options or default_eval_options(),
        "device": device,
    }


def choose_best(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """The entry :data:`SELECT_RULE` picks: the lowest score, ties to the later step."""
    best = min(entries, key=lambda c: (c["score"], -(c["step"] or 0)))
    return {"name": best["name"], "path": best["path"], "step": best["step"], "score": best["score"]}


def _evaluate_checkpoint(
    ckpt: Path, sentences: list[str], out_dir: Path, ctx: dict[str, Any], bar: Any
) -> dict[str, Any]:
    """Speak and score every sentence with one checkpoint: its entry in the report."""
    loaded = load_model(ckpt, device=ctx["device"])
    loaded.letters_per_s, loaded.rate_source = 1.0 / ctx["s_per_letter"], "the run's training rows"
    scorer = Scorer(
        loaded.model, ctx["language"], ctx["references"], *ctx["asr"], ctx["s_per_letter"], ge2e=ctx["ge2e"]
    )
    samples = []
    for i, text in enumerate(sentences, start=1):
        result = synthesize_with_report(
            loaded, text, language=ctx["language"], speaker_wav=ctx["references"], options=ctx["options"]
        )
        path = write_wav(out_dir / ckpt.stem / f"{i:02d}.wav", result.wav, loaded.sample_rate)
        write_sidecar(path, result)
        rec = scorer.score(result.wav, loaded.sample_rate, text)
        rec["guard_flags"] = result.flags
        rec["max_new_tokens"] = sum(c.max_new_tokens for c in result.chunks)
        rec["wav"] = str(path)
        samples.append(rec)
        bar.update()
    summary = summarize(samples)
    entry = {
        "name": ckpt.name,
        "path": str(ckpt),
        "step": checkpoint_step(ckpt),
        "summary": summary,
        "samples": samples,
    }
    entry["score"] = selection_score(summary)
    return entry


def write_report(report: EvalReport, out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write eval_report.json, eval_report.md and eval_metrics.png into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    js = out_dir / "eval_report.json"
    md = out_dir / "eval_report.md"
    js.write_text(json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    md.write_text(report.table(), encoding="utf-8")
    plot_metrics(report, out_dir / "eval_metrics.png")
    logger.info("evaluation report: %s", js)
    return js, md


def plot_metrics(report: EvalReport, path: str | os.PathLike) -> Path:
    """One PNG of the metrics over the checkpoints' steps (the best one marked)."""
    plt = pyplot()
    entries = report.checkpoints
    xs = [c["step"] if c["step"] is not None else i for i, c in enumerate(entries)]
    panels = (  # fixed ranges where the scale is bounded, so small wiggles don't look like trends
        ("ASR error rate (lower is better)", ("cer", "wer"), (0.0, None)),
        ("speaker similarity, cosine (higher is better)", ("similarity_ge2e", "similarity_xtts"), (0.0, 1.02)),
        ("DNSMOS 1-5 (higher is better)", ("dnsmos_ovrl", "dnsmos_sig", "dnsmos_bak"), (1.0, 5.0)),
        (
            "seconds after speech / last word; share flagged",
            ("trailing_s", "after_last_word_s", "flagged_share"),
            (0.0, None),
        ),
    )
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    best_x = next((x for x, c in zip(xs, entries) if report.best and c["name"] == report.best["name"]), None)
    for ax, (title, keys, ylim) in zip(axes.flat, panels):
        for key in keys:
            ys = [c["summary"].get(key) for c in entries]
            if any(y is not None for y in ys):
                ax.plot(xs, [float("nan") if y is None else y for y in ys], marker="o", label=key)
        if best_x is not None:
            ax.axvline(best_x, color="grey", linestyle="--", linewidth=1, label="best (select rule)")
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.set_ylim(bottom=ylim[0], top=ylim[1])
        ax.grid(alpha=0.3)
        if ax.has_data():
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "skipped", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle(f"evaluation of {len(entries)} checkpoint(s), {len(report.sentences)} sentences each")
    fig.tight_layout()
    out = save_png(fig, path)
    plt.close(fig)
    return out


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
