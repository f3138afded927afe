"""What runs during training: ToolkitTrainer ``on_evaluation`` hooks (``fn(trainer, record)``).

- :class:`TestSentencesHook` speaks a few held-out sentences with the current weights at each
  evaluation: wavs (with the guard's sidecars) in ``<run>/test_sentences/step_N/`` and in
  TensorBoard (``TestAudios/``).
- :class:`QualityEvalHook` scores such sentences at each save (``when="save"``, the default: an
  evaluation whose step wrote ``best_model_N.pth`` or ``checkpoint_N.pth``) or at every evaluation
  (``when="evaluation"``) with :class:`utils.after.evaluate.Scorer` (CER/WER where an ASR model
  covers the language, GE2E and XTTS speaker similarity, DNSMOS, timing, flags). The numbers are
  merged, as ``quality_*`` keys, into the evaluation's own row of ``<run>/metrics.jsonl`` (which
  stays one line per evaluation, so the curves and a web page read them from one place) and logged
  to TensorBoard under ``Quality/``. Off by default on a CPU (``enabled=None`` means on only when
  CUDA is available): on two CPU cores scoring three sentences takes longer than many training
  steps.

Both speak through :func:`trainer_model`, which borrows the training model for inference and
restores its modes and torch's RNG afterwards: training goes on exactly as without the hooks.
Wiring them into a trainer is one call: ``on_evaluation=[..., test_sentences_hook(), QualityEvalHook()]``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from utils.after.asr import load_asr
from utils.after.evaluate import Scorer, default_eval_options, selection_score, summarize
from utils.after.quality import GE2ESimilarity
from utils.after.reference import DEFAULT_S_PER_LETTER, choose_references, speaker_rate
from utils.after.synthesize import OUTPUT_SR, LoadedModel, SynthesisOptions, synthesize_with_report, write_sidecar
from utils.data.audio import write_wav
from utils.errors import ConfigError

logger = logging.getLogger(__name__)

PREFIX = "quality_"
ROW_KEYS = (
    "cer",
    "wer",
    "similarity_ge2e",
    "similarity_xtts",
    "dnsmos_ovrl",
    "trailing_s",
    "after_last_word_s",
    "flagged_share",
    "hallucinations",
    "n",
)


def training_model(trainer: Any) -> Any:
    """The model a Coqui Trainer trains (the toolkit's GPT trainer model, which holds ``xtts``).

    ``trainer.model`` is it: Coqui's own DDP path keeps ``DistributedDataParallel(model).module``,
    the same object, and the toolkit's data parallel leaves the model unwrapped. A torch wrapper
    placed there by someone else is taken off through its public ``module``.
    """
    import torch

    model = trainer.model
    if isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
        model = model.module
    return model


def is_main_process(trainer: Any) -> bool:
    """True on the process that writes files (rank 0, or a single-process run)."""
    args = getattr(trainer, "args", None)
    return getattr(args, "rank", None) in (None, 0)


@contextmanager
def trainer_model(trainer: Any, language: str, references: list[Path]) -> Iterator[LoadedModel]:
    """The training model as a :class:`LoadedModel`, for inference in the middle of training.

    Builds the GPT's inference wrapper and puts every module in eval mode; afterwards removes the
    wrapper (as ``GPTTrainer.test_run`` does), restores each module's mode and torch's RNG state,
    so training goes on exactly as without the detour.
    """
    import torch

    xtts = training_model(trainer).xtts
    modes = {m: m.training for m in xtts.modules()}
    gpt = xtts.gpt
    built = not hasattr(gpt, "gpt_inference")
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    # A speed lever keeps the frozen HiFiGAN decoder on the CPU during training (it offloads frozen
    # modules): borrow it onto the GPT's device.
    gpt_device = next(gpt.parameters()).device
    decoder_home = next(xtts.hifigan_decoder.parameters()).device
    try:
        if decoder_home != gpt_device:
            xtts.hifigan_decoder.to(gpt_device)
        if built:
            gpt.init_gpt_for_inference(kv_cache=xtts.args.kv_cache, use_deepspeed=False)
        torch.nn.Module.train(xtts, False)
        with torch.random.fork_rng(devices=devices), torch.inference_mode():
            yield LoadedModel(
                model=xtts, source=Path(trainer.output_path), language=language, references=list(references)
            )
    finally:
        if built:
            del gpt.gpt_inference
            del gpt.gpt.wte
        for m, mode in modes.items():
            m.training = mode
        if decoder_home != gpt_device:
            xtts.hifigan_decoder.to(decoder_home)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


class TestSentencesHook:
    """A ToolkitTrainer ``on_evaluation`` hook: speak held-out sentences with the current weights.

    Wavs go to ``<run>/test_sentences/step_<N>/<i>.wav`` and to TensorBoard (TestAudios/<i>).
    The GPT's training state and the torch RNG are restored afterwards, so training is unchanged.

    Args:
        sentences: texts to speak; default the first ``max_sentences`` eval rows of the run.
        language: default the language of the eval rows (or "en").
        references: reference clips; default chosen from the training rows (utils.after.reference).
        every: run at every ``every``-th evaluation.
        options: sampling settings (seeded: the same seed at every save).
    """

    __test__ = False  # not a pytest class

    def __init__(
        self,
        sentences: list[str] | None = None,
        *,
        language: str | None = None,
        references: list[str | os.PathLike] | None = None,
        max_sentences: int = 3,
        every: int = 1,
        options: SynthesisOptions | None = None,
    ) -> None:
        self.sentences = list(sentences) if sentences else None
        self.language = language
        self.references = [Path(r) for r in references] if references else None
        self.max_sentences = max_sentences
        self.every = max(1, int(every))
        self.options = options or SynthesisOptions(seed=0)
        self.calls = 0
        self.written: list[Path] = []
        self.letters_per_s: float | None = None  # the training rows' speaking rate (the guard's cap)

    def setup(self, trainer: Any) -> None:
        """Fill in what was not given from the trainer's rows: sentences, language, references, rate."""
        samples = list(getattr(trainer, "eval_samples", None) or [])
        if self.sentences is None:
            self.sentences = [s["text"] for s in samples[: self.max_sentences]]
        if self.language is None:
            self.language = samples[0].get("language", "en") if samples else "en"
        if self.references is None:
            train = list(getattr(trainer, "train_samples", None) or [])
            choice = choose_references([(s["audio_file"], s["text"]) for s in train], count=1, language=self.language)
            self.references = [c.path for c in choice.chosen]
            logger.info("test sentences: reference %s (%s)", self.references[0].name, choice.note)
        if self.letters_per_s is None:
            train = list(getattr(trainer, "train_samples", None) or [])
            if train:
                self.letters_per_s = 1.0 / speaker_rate([(s["audio_file"], s["text"]) for s in train], self.language)

    def __call__(self, trainer: Any, record: dict[str, Any]) -> None:
        if not is_main_process(trainer):
            return
        self.calls += 1
        if (self.calls - 1) % self.every:
            return
        if self.sentences is None or self.references is None or self.language is None:
            self.setup(trainer)
        if not self.sentences:
            return
        step = int(record.get("step", getattr(trainer, "total_steps_done", 0)))
        out_dir = Path(trainer.output_path) / "test_sentences" / f"step_{step}"
        with trainer_model(trainer, self.language, self.references) as loaded:
            if self.letters_per_s:
                loaded.letters_per_s, loaded.rate_source = self.letters_per_s, "the run's training rows"
            audios = self._speak(loaded, out_dir)
        dashboard = getattr(trainer, "dashboard_logger", None)
        if dashboard is not None and audios:
            dashboard.test_audios(step, audios, OUTPUT_SR)

    def _speak(self, loaded: LoadedModel, out_dir: Path) -> dict[str, np.ndarray]:
        audios = {}
        for i, text in enumerate(self.sentences or [], start=1):
            result = synthesize_with_report(loaded, text, language=self.language, options=self.options)
            self.written.append(write_wav(out_dir / f"{i:02d}.wav", result.wav, loaded.sample_rate))
            write_sidecar(out_dir / f"{i:02d}.wav", result)
            audios[f"{i:02d}"] = result.wav
        (out_dir / "sentences.txt").write_text("\n".join(self.sentences or []) + "\n", encoding="utf-8")
        logger.info("test sentences: %d wavs in %s", len(audios), out_dir)
        return audios


def test_sentences_hook(**kwargs: Any) -> TestSentencesHook:
    """A :class:`TestSentencesHook` (same arguments); pass it in ToolkitTrainer's ``on_evaluation``."""
    return TestSentencesHook(**kwargs)


test_sentences_hook.__test__ = False  # type: ignore[attr-defined]


class QualityEvalHook:
    """Score held-out sentences at each save and write the row into metrics.jsonl.

    Args:
        sentences / language / references / max_sentences: as :class:`TestSentencesHook`
            (default: the run's first eval rows).
        enabled: True / False; None (default) runs only when CUDA is available.
        when: "save" (evaluations whose step wrote a checkpoint) or "evaluation" (every one).
        asr_model / use_asr: as :func:`utils.after.evaluate.evaluate`.
        options: :class:`utils.after.synthesize.SynthesisOptions` (default
            :func:`utils.after.evaluate.default_eval_options`: seed 0, length cap, no trimming).
    """

    def __init__(
        self,
        sentences: list[str] | None = None,
        *,
        language: str | None = None,
        references: list[str | os.PathLike] | None = None,
        max_sentences: int = 3,
        enabled: bool | None = None,
        when: str = "save",
        asr_model: str | os.PathLike | None = None,
        use_asr: bool = True,
        options: SynthesisOptions | None = None,
    ) -> None:
        if when not in ("save", "evaluation"):
            raise ConfigError(f"when={when!r}: use 'save' or 'evaluation'")
        if enabled is None:
            import torch

            enabled = torch.cuda.is_available()
        self.enabled, self.when = bool(enabled), when
        self._inputs = TestSentencesHook(
            sentences, language=language, references=references, max_sentences=max_sentences
        )
        self.asr_model, self.use_asr = asr_model, use_asr
        self.options = options or default_eval_options()
        self._asr: tuple[Any, str] | None = None
        self._scorer_parts: dict[str, Any] = {}
        self.records: list[dict[str, Any]] = []

    def should_run(self, trainer: Any, step: int) -> bool:
        """Whether this evaluation gets scored (enabled, rank 0, and a save at ``step`` if asked)."""
        if not self.enabled or not is_main_process(trainer):
            return False
        if self.when == "evaluation":
            return True
        run = Path(trainer.output_path)
        return any((run / f"{kind}_{step}.pth").is_file() for kind in ("best_model", "checkpoint"))

    def __call__(self, trainer: Any, record: dict[str, Any]) -> None:
        step = int(record.get("step", getattr(trainer, "total_steps_done", 0)))
        if not self.should_run(trainer, step):
            return
        src = self._inputs
        if src.sentences is None or src.references is None or src.language is None:
            src.setup(trainer)
        if not src.sentences:
            return
        summary = self._score(trainer, src)
        row = {PREFIX + k: summary.get(k) for k in ROW_KEYS}
        row[PREFIX + "score"] = selection_score(summary)
        row[PREFIX + "asr"] = self._asr[1] if self._asr else ""
        record.update(row)  # the trainer's in-memory record (trainer.evaluation_records) too
        merge_into_metrics(Path(trainer.output_path) / "metrics.jsonl", step, row)
        self.records.append({"step": step, **row})
        dashboard = getattr(trainer, "dashboard_logger", None)
        if dashboard is not None:
            scalars = {k[len(PREFIX) :]: v for k, v in row.items() if isinstance(v, (int, float)) and v is not None}
            dashboard.add_scalars("Quality", scalars, step)
        logger.info(
            "quality at step %d: CER %s, GE2E similarity %s, DNSMOS %s, %s flagged",
            step,
            row[PREFIX + "cer"],
            row[PREFIX + "similarity_ge2e"],
            row[PREFIX + "dnsmos_ovrl"],
            row[PREFIX + "flagged_share"],
        )

    def _score(self, trainer: Any, src: TestSentencesHook) -> dict[str, Any]:
        if self._asr is None:
            self._asr = load_asr(src.language, self.asr_model) if self.use_asr else (None, "ASR disabled")
            self._scorer_parts["ge2e"] = GE2ESimilarity()
        rate = 1.0 / src.letters_per_s if src.letters_per_s else DEFAULT_S_PER_LETTER
        with trainer_model(trainer, src.language, src.references) as loaded:
            loaded.letters_per_s, loaded.rate_source = 1.0 / rate, "the run's training rows"
            scorer = Scorer(
                loaded.model, src.language, list(src.references), *self._asr, rate, ge2e=self._scorer_parts["ge2e"]
            )
            samples = []
            for text in src.sentences:
                result = synthesize_with_report(loaded, text, language=src.language, options=self.options)
                samples.append(scorer.score(result.wav, loaded.sample_rate, text))
        return summarize(samples)


def merge_into_metrics(path: Path, step: int, row: dict[str, Any]) -> None:
    """Merge ``row`` into the last line of ``path`` whose step is ``step`` (atomic rewrite).

    When the file has no line of that step (another writer, a trimmed file), ``row`` is
    appended with its step, so nothing measured is lost.
    """
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    for i in range(len(lines) - 1, -1, -1):
        if not lines[i].strip():
            continue
        data = json.loads(lines[i])
        if int(data.get("step", -1)) == step:
            data.update(row)
            lines[i] = json.dumps(data)
            break
    else:
        lines.append(json.dumps({"step": step, **row}))
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    os.replace(tmp, path)
