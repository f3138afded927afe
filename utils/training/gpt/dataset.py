"""The training dataset: Coqui's XTTSDataset semantics without its silent drops.

Coqui's ``XTTSDataset.__getitem__`` swallows every load error with a bare ``except`` and returns
sample 1 instead, drops too-long/too-short/[UNK] rows silently, recurses forever when every row
fails, samples with replacement (so an "epoch" is not a pass over the data) and decodes each wav
twice (target and conditioning slice). :class:`ToolkitXTTSDataset` keeps its batch format and its
``collate_fn`` (inherited), but:

- rows come from the preflight, so they are known to load; an item that still fails at run time
  is replaced by the next row, counted, logged with its reason and appended to
  ``runtime_exclusions.jsonl`` in the run folder (never silent);
- an epoch is one pass over every row (the DataLoader shuffles);
- each clip is decoded once (soundfile, no FFmpeg) and the conditioning slice is cut from the same
  array, with Coqui's slice rule (random length in [min, max] conditioning samples, eval: the middle
  length from position 0).
"""

from __future__ import annotations

import json
import logging
import os
import random
from pathlib import Path
from typing import Any

import torch
from TTS.tts.layers.xtts.trainer.dataset import XTTSDataset

from utils.data.preflight import Reason, SampleProblem, SpecialTokens, check_length, check_text, check_tokens
from utils.training.gpt.clip_cache import load_audio_soundfile, prompt_slice

logger = logging.getLogger(__name__)


class ToolkitXTTSDataset(XTTSDataset):
    """XTTS GPT training dataset over preflight-checked rows; see the module docstring."""

    def __init__(
        self,
        config: Any,
        samples: list[dict[str, Any]],
        tokenizer: Any,
        sample_rate: int,
        is_eval: bool = False,
        exclusions_path: str | os.PathLike[str] | None = None,
    ) -> None:
        # Deliberately not calling XTTSDataset.__init__: it groups rows by language for sampling
        # with replacement and, for eval, filters rows silently. We keep its attributes.
        torch.utils.data.Dataset.__init__(self)
        args = config.model_args
        self.config = config
        self.samples = list(samples)
        self.tokenizer = tokenizer
        self.sample_rate = sample_rate
        self.is_eval = is_eval
        self.max_conditioning_length = args.max_conditioning_length
        self.min_conditioning_length = args.min_conditioning_length
        self.max_wav_len = args.max_wav_length
        self.max_text_len = args.max_text_length
        self.use_masking_gt_prompt_approach = args.gpt_use_masking_gt_prompt_approach
        self.exclusions_path = Path(exclusions_path) if exclusions_path else None
        self.failed: dict[int, str] = {}
        self._rng = random.Random(config.training_seed)
        self.special = SpecialTokens.of(tokenizer)
        if not self.samples:
            raise ValueError("ToolkitXTTSDataset needs at least one sample")

    def __len__(self) -> int:
        return len(self.samples)

    def _report_failure(self, index: int, reason: str, detail: str) -> None:
        sample = self.samples[index]
        self.failed[index] = reason
        logger.warning("run-time exclusion: %s (%s: %s)", sample["audio_file"], reason, detail)
        if self.exclusions_path is not None:
            record = {"audio_file": sample["audio_file"], "reason": reason, "detail": detail, "eval": self.is_eval}
            with open(self.exclusions_path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")

    def load_row(self, sample: dict[str, Any]) -> dict[str, Any]:
        """Load one row into Coqui's item format; raises :class:`SampleProblem` with the reason."""
        text = str(sample["text"])
        check_text(text)
        tokens = self.tokenizer.encode(text, sample["language"])
        check_tokens(tokens, self.special, self.max_text_len)
        tseq = torch.IntTensor(tokens)
        try:
            wav = load_audio_soundfile(sample["audio_file"], self.sample_rate)
        except (RuntimeError, OSError) as exc:  # soundfile's LibsndfileError is a RuntimeError
            raise SampleProblem(Reason.UNREADABLE_AUDIO, str(exc)) from exc
        check_length(int(wav.shape[-1]), self.sample_rate, max_samples=self.max_wav_len)
        max_len, min_len = self.max_conditioning_length, self.min_conditioning_length
        cond, cond_idxs = prompt_slice(wav[0].numpy(), max_len, min_len, self.is_eval, rng=self._rng)
        cond_len = cond.shape[-1]
        if self.use_masking_gt_prompt_approach:
            cond_len_t = torch.tensor([torch.nan])
            cond_idxs_t = torch.tensor(cond_idxs)
        else:
            cond_len_t = torch.tensor(cond_len, dtype=torch.long)
            cond_idxs_t = torch.tensor([torch.nan])
        return {
            "text": tseq,
            "text_lengths": torch.tensor(tseq.shape[0], dtype=torch.long),
            "wav": wav,
            "wav_lengths": torch.tensor(wav.shape[-1], dtype=torch.long),
            "filenames": sample["audio_file"],
            "conditioning": cond.unsqueeze(1),
            "cond_lens": cond_len_t,
            "cond_idxs": cond_idxs_t,
        }

    def __getitem__(self, index: int) -> dict[str, Any]:
        for offset in range(len(self.samples)):
            idx = (index + offset) % len(self.samples)
            if idx in self.failed:
                continue
            try:
                return self.load_row(self.samples[idx])
            except SampleProblem as problem:
                self._report_failure(idx, problem.reason.value, problem.detail)
            except (ValueError, RuntimeError, OSError) as exc:  # decode errors past the checks
                self._report_failure(idx, Reason.UNREADABLE_AUDIO.value, f"{type(exc).__name__}: {exc}")
        raise RuntimeError(
            f"every one of the {len(self.samples)} {'eval' if self.is_eval else 'training'} rows failed to load; "
            "see runtime_exclusions.jsonl in the run folder and run scripts/validate_dataset.py on the CSV"
        )


def read_runtime_exclusions(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The run-time exclusions recorded by every loader worker of a run (deduplicated)."""
    path = Path(run_dir) / "runtime_exclusions.jsonl"
    if not path.is_file():
        return []
    seen, out = set(), []
    for line in path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        key = (record["audio_file"], record["reason"], record["eval"])
        if key not in seen:
            seen.add(key)
            out.append(record)
    return out
