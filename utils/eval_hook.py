"""Objective evaluation during training: one row of quality numbers per save, in metrics.jsonl.

:class:`QualityEvalHook` is a ToolkitTrainer ``on_evaluation`` hook (``fn(trainer, record)``). At
each evaluation (``when="evaluation"``) or only at evaluations whose step wrote a checkpoint
(``when="save"``, the default: ``best_model_N.pth`` or ``checkpoint_N.pth`` of that step exists),
it speaks a few held-out sentences with the current weights through the generation guard and
scores them with :class:`utils.evaluate.Scorer` (CER/WER where an ASR model covers the language,
GE2E and XTTS speaker similarity, DNSMOS, timing, flags). The numbers are merged, as
``quality_*`` keys, into the evaluation's own row of ``<run>/metrics.jsonl`` (which stays one line
per evaluation, so the curves and a web page read them from one place) and logged to
TensorBoard under ``Quality/``. Training is unchanged (see :func:`utils.synthesize.trainer_model`).

Off by default on a CPU (``enabled=None`` means on only when CUDA is available): on two CPU cores
scoring three sentences takes longer than many training steps. Wiring it into a trainer is one
call: ``on_evaluation=[..., QualityEvalHook()]``.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

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


class QualityEvalHook:
    """Score held-out sentences at each save and write the row into metrics.jsonl.

    Args:
        sentences / language / references / max_sentences: as
            :class:`utils.synthesize.TestSentencesHook` (default: the run's first eval rows).
        enabled: True / False; None (default) runs only when CUDA is available.
        when: "save" (evaluations whose step wrote a checkpoint) or "evaluation" (every one).
        asr_model / use_asr: as :func:`utils.evaluate.evaluate`.
        options: :class:`utils.synthesize.SynthesisOptions` (default
            :func:`utils.evaluate.default_eval_options`: seed 0, length cap, no trimming).
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
        options: Any = None,
    ) -> None:
        from utils.errors import ConfigError
        from utils.evaluate import default_eval_options
        from utils.synthesize import TestSentencesHook

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
        from utils.synthesize import is_main_process

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
            src._setup(trainer)
        if not src.sentences:
            return
        summary = self._score(trainer, src)
        from utils.evaluate import selection_score

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

    def _score(self, trainer: Any, src: Any) -> dict[str, Any]:
        from utils.evaluate import DEFAULT_S_PER_LETTER, Scorer, load_asr, summarize
        from utils.quality import GE2ESimilarity
        from utils.synthesize import synthesize_with_report, trainer_model

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
