"""The toolkit's adaptation of Coqui's GPTTrainer (subclass, not a fork).

What changes against ``TTS.tts.layers.xtts.trainer.gpt_trainer.GPTTrainer``:
- ``get_scheduler`` returns :class:`~utils.training.lr_schedule.LRBridge`, because Trainer 0.4
  never steps a single-optimizer scheduler at epoch end and steps it per optimizer step without
  the metric ReduceLROnPlateau needs.
- ``get_data_loader`` builds :class:`~utils.training.gpt.dataset.ToolkitXTTSDataset` (no silent drops,
  one pass per epoch, one decode per clip) and shuffles training rows with a seeded generator; with
  the ``cache_dvae_codes`` speed option, the cached-code loader of :mod:`utils.training.gpt.clip_cache`.
- ``format_batch``, ``format_batch_on_device``, ``get_optimizer`` and ``on_init_end`` follow the run's
  speed options (:class:`SpeedLevers`): CPU copies of the lengths, cached DVAE codes, the 8-bit
  optimizer, frozen modules off the GPU.
- The tokenizer is the toolkit's :class:`~utils.language.tokenizer.TextTokenizer`, so languages XTTS
  lacks (registered from the vocabulary's ``[code]`` tokens) work in training, evaluation and after
  a resume; Coqui's ``VoiceBpeTokenizer`` raises NotImplementedError for them.
- ``before_gradient_clipping`` averages the GPT's gradients over data-parallel ranks
  (:mod:`utils.training.distributed`; Coqui's DDP wrapper never does), and the train sampler of a
  distributed run is seeded with ``training_seed`` and sharded by rank (the cached-code loader's
  length buckets too); rank 0 fills the shared clip cache before the other ranks read it.
- The GPT2 stack is built without its random initialisation when a base checkpoint is loaded
  right after (about 6 s of ``normal_`` for the full GPT on a CPU core): every GPT2 weight comes
  from the checkpoint. If the checkpoint lacks any of them, the model is built again the slow way.
- For a new language the base weights are loaded with the base vocabulary (GPTTrainer loads them
  with ``strict=False``, which still fails on a larger text embedding), then the text embedding and
  head grow to the extended vocabulary (new rows from the pretrained rows' statistics).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from trainer.torch import DistributedSampler
from trainer.utils.distributed import is_dist_avail_and_initialized
from TTS.tts.layers.xtts.trainer.gpt_trainer import GPTTrainer

from utils.errors import ConfigError
from utils.training import compat
from utils.training.distributed import sync_gradients
from utils.training.gpt.dataset import ToolkitXTTSDataset
from utils.training.lr_schedule import LRBridge, ScheduleSpec
from utils.training.memory import offload_to_cpu
from utils.training.optim import build_optimizer
from utils.training.speed_options import SpeedOptions

logger = logging.getLogger(__name__)


class SpeedLevers:
    """GPTTrainer's own step methods as the run's speed options change them (``speed``; None: Coqui's).

    Put in front of ``GPTTrainer``: :class:`ToolkitGPTTrainer` does, and so does the training-step
    benchmark (``bench/train_step.py``) with Coqui's own GPTTrainer, to measure both in one process.
    :func:`utils.training.speed_options.apply_speed_options` sets ``speed``.
    """

    speed: SpeedOptions | None = None

    def format_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        """With ``host_lengths``: CPU copies of the lengths ride along to ``format_batch_on_device``.

        Coqui's ``GPT.forward`` loops over the batch indexing with the length tensors; on the GPU
        each index is a device sync. A plain dict is not moved by the Trainer's ``to_cuda``.
        """
        if self.speed is None or not self.speed.host_lengths:
            return super().format_batch(batch)  # type: ignore[misc]
        host = {"text_lengths": batch["text_lengths"].clone(), "wav_lengths": batch["wav_lengths"].clone()}
        if batch.get("cond_idxs") is not None:
            host["cond_idxs"] = batch["cond_idxs"].clone()
        batch["host"] = host
        return batch

    @torch.no_grad()
    def format_batch_on_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Coqui's ``format_batch_on_device``, with cached DVAE codes and CPU lengths where the levers give them.

        Same conditioning mel as Coqui's; DVAE codes taken from ``batch["audio_codes"]`` when
        present (the cached-code loader), else computed exactly as Coqui does, so stock
        ``XTTSDataset`` batches work too (they need the DVAE on the GPU: ``offload_frozen=False``).
        """
        if self.speed is None or not (self.speed.host_lengths or self.speed.cache_dvae_codes):
            return super().format_batch_on_device(batch)  # type: ignore[misc]
        host = batch.pop("host", None)
        batch["text_inputs"] = batch.pop("padded_text")
        cond = batch.pop("conditioning")
        b, n, c, t = cond.size()
        style = self.torch_mel_spectrogram_style_encoder  # type: ignore[attr-defined]
        mel = style(cond.view(b * n, c, t))
        batch["cond_mels"] = mel.view(b, n, style.n_mel_channels, mel.size(2))
        wav = batch.pop("wav", None)
        if batch.get("audio_codes") is None:
            batch["audio_codes"] = self._dvae_codes(wav)
        if host is not None:
            batch["text_lengths"] = host["text_lengths"]
            batch["wav_lengths"] = host["wav_lengths"]
            if batch.get("cond_idxs") is not None and "cond_idxs" in host:
                batch["cond_idxs"] = host["cond_idxs"]
        return batch

    def _dvae_codes(self, wav: torch.Tensor | None) -> torch.Tensor:
        """The DVAE codes of a stock batch's audio, as Coqui's ``format_batch_on_device`` computes them."""
        if wav is None:
            raise ValueError("batch has neither cached audio_codes nor wav")
        if next(self.dvae.parameters()).device != wav.device:  # type: ignore[attr-defined]
            raise ConfigError(
                "the DVAE was moved off the GPU but this batch has no cached codes: "
                "use the cached-code loader or turn off offload_frozen"
            )
        audio = self.config.audio  # type: ignore[attr-defined]
        if audio.sample_rate != audio.dvae_sample_rate:
            import torchaudio

            wav = torchaudio.functional.resample(
                wav, orig_freq=audio.sample_rate, new_freq=audio.dvae_sample_rate, **compat.DVAE_RESAMPLE
            )
        return self.dvae.get_codebook_indices(self.torch_mel_spectrogram_dvae(wav))  # type: ignore[attr-defined]

    def get_optimizer(self) -> torch.optim.Optimizer:
        """Coqui's optimizer (its parameter groups and hyperparameters), 8-bit with ``optimizer_8bit``."""
        return build_optimizer(super().get_optimizer(), self.config, self.speed)  # type: ignore[misc,attr-defined]

    def on_init_end(self, trainer: Any) -> None:
        """With ``offload_frozen``: once the Trainer has moved the model to the GPU, the modules a
        training step never uses go back to the CPU (anything that synthesises moves
        ``xtts.hifigan_decoder`` back first)."""
        super().on_init_end(trainer)  # type: ignore[misc]
        if self.speed is not None and self.speed.offload_frozen:
            moved = self.offload_frozen_modules()
            logger.info("moved frozen modules to the CPU: %s", ", ".join(moved))

    def offload_frozen_modules(self) -> list[str]:
        """The HiFiGAN decoder, and the DVAE when codes come from the cache, moved to the CPU."""
        return offload_frozen_modules(self, dvae=bool(self.speed is not None and self.speed.cache_dvae_codes))


def offload_frozen_modules(model: Any, *, dvae: bool) -> list[str]:
    """Move a GPTTrainer's modules that no training step uses to the CPU (names returned).

    Args:
        model: the GPTTrainer.
        dvae: also move the DVAE (only when codes come from a cache).
    """
    frozen = {}
    if getattr(model.xtts, "hifigan_decoder", None) is not None:
        frozen["xtts.hifigan_decoder"] = model.xtts.hifigan_decoder
    if dvae:
        frozen["dvae"] = model.dvae
    return offload_to_cpu(frozen)


class ToolkitGPTTrainer(SpeedLevers, GPTTrainer):
    """GPTTrainer with the LR bridge, the toolkit dataset and tokenizer, vocabulary growth and the speed levers."""

    run_dir: Path | None = None  # set by utils.finetune.training before fit(); run-time exclusions go there
    loss_keys = ("loss", "loss_text_ce", "loss_mel_ce")  # what each evaluation record holds (utils.training.stage)

    def __init__(self, config: Any) -> None:
        from utils.language import use_toolkit_tokenizer
        from utils.language.embeddings import NewTokenWarmup, grow_xtts_text_vocab

        ext = (getattr(config, "toolkit", None) or {}).get("vocab_extension")
        if ext:
            vocab = config.model_args.tokenizer_file
            config.model_args.tokenizer_file = ext["base_vocab"]
            try:
                self._build_from_checkpoint(config)
            finally:
                config.model_args.tokenizer_file = vocab
            info = grow_xtts_text_vocab(self.xtts, int(ext["new_size"]), seed=int(config.training_seed))
            self.new_token_warmup = NewTokenWarmup(self.xtts.gpt, info.old_num_tokens, int(ext.get("warmup_steps", 0)))
        else:
            self._build_from_checkpoint(config)
            self.new_token_warmup = None
        # Also checks vocab size == text-embedding rows and adds new codes to config.languages.
        use_toolkit_tokenizer(self.xtts, config.model_args.tokenizer_file)

    def _build_from_checkpoint(self, config: Any) -> None:
        """``GPTTrainer.__init__``, with the GPT2 stack left uninitialised when the checkpoint fills it."""
        if not getattr(config.model_args, "xtts_checkpoint", None):
            super().__init__(config)
            return
        with compat.gpt2_init_skipped() as loaded:
            super().__init__(config)
        gpt2_keys = {f"gpt.gpt.{name}" for name, _ in self.xtts.gpt.gpt.named_parameters()}
        missing = gpt2_keys & set(loaded.get("missing", gpt2_keys))
        if missing:
            logger.warning(
                "the base checkpoint lacks %d GPT2 weights (e.g. %s); building the model with random "
                "initialisation for them",
                len(missing),
                sorted(missing)[0],
            )
            super().__init__(config)

    def on_train_epoch_start(self, trainer: Any) -> None:
        super().on_train_epoch_start(trainer)
        warmup = self.new_token_warmup
        if warmup is not None and not warmup.active and trainer.optimizer_steps < warmup.steps:
            warmup.start()  # also after a resume that stopped inside the warm-up

    def on_train_step_end(self, trainer: Any) -> None:
        if self.new_token_warmup is not None:
            self.new_token_warmup.after_step(trainer.optimizer_steps)

    def before_gradient_clipping(self) -> None:
        # Data parallel: average the GPT's gradients over the ranks before clipping (a no-op in a
        # single process). Coqui's DDP wrapper never does it; see utils/training/distributed.py.
        sync_gradients(self.xtts.gpt.parameters())

    def get_scheduler(self, optimizer: list[torch.optim.Optimizer] | torch.optim.Optimizer) -> LRBridge:
        opt = optimizer[0] if isinstance(optimizer, (list, tuple)) else optimizer
        return LRBridge(opt, ScheduleSpec.from_config(self.config))

    def get_data_loader(
        self,
        config: Any,
        *,
        is_eval: bool = False,
        samples: list[Any] | None = None,
        verbose: bool = True,
    ) -> DataLoader:
        exclusions = Path(self.run_dir) / "runtime_exclusions.jsonl" if self.run_dir else None
        if self.speed is not None and self.speed.cache_dvae_codes:
            return self._cached_code_loader(config, samples or [], is_eval, exclusions)
        dataset = ToolkitXTTSDataset(
            self.config, samples or [], self.xtts.tokenizer, config.audio.sample_rate, is_eval, exclusions
        )
        batch_size = config.eval_batch_size if is_eval else config.batch_size
        workers = config.num_eval_loader_workers if is_eval else config.num_loader_workers
        kwargs: dict[str, Any] = {
            "batch_size": batch_size,
            "collate_fn": dataset.collate_fn,
            "num_workers": workers,
            "pin_memory": torch.cuda.is_available(),
            "persistent_workers": workers > 0,
        }
        if is_eval:
            return DataLoader(dataset, shuffle=False, drop_last=False, **kwargs)
        if is_dist_avail_and_initialized():
            # Each rank its own shard; the Trainer callbacks of utils.training.distributed call set_epoch.
            sampler = DistributedSampler(dataset, shuffle=True, seed=int(config.training_seed), drop_last=False)
            return DataLoader(dataset, sampler=sampler, **kwargs)
        generator = torch.Generator().manual_seed(int(config.training_seed))
        return DataLoader(dataset, shuffle=True, drop_last=False, generator=generator, **kwargs)

    def _cached_code_loader(self, config: Any, samples: list[Any], is_eval: bool, exclusions: Path | None) -> Any:
        """The fast path: each clip decoded once, DVAE codes computed once, length-bucketed batches.

        Clips that cannot be used are recorded in runtime_exclusions.jsonl with their reason (the
        preflight normally keeps none of them).
        """
        from utils.training import distributed
        from utils.training.gpt.clip_cache import build_fast_loader

        speed = self.speed
        workers = config.num_eval_loader_workers if is_eval else config.num_loader_workers
        # Data parallel: each rank its shard of the training batches (set_epoch from the Trainer
        # callbacks of utils.training.distributed); every rank evaluates the whole eval set.
        replicas, rank = (1, 0) if is_eval else (distributed.world_size(), distributed.rank())
        return build_fast_loader(
            self.clip_dataset(config, samples, is_eval=is_eval, exclusions=exclusions),
            config.eval_batch_size if is_eval else config.batch_size,
            bucket_lengths=speed.bucket_lengths,
            num_workers=workers,
            pin_memory=speed.pin_memory,
            shuffle=not is_eval,
            seed=int(config.training_seed),
            num_replicas=replicas,
            rank=rank,
        )

    def clip_dataset(self, config: Any, samples: list[Any], *, is_eval: bool, exclusions: Path | None = None) -> Any:
        """The cached-code dataset of these rows, built once per split and kept (loader rebuilds
        after a micro-batch change and the micro-batch probe reuse it)."""
        import json

        from utils.errors import DataError
        from utils.training.gpt.clip_cache import CachedClipDataset, prepare_clip_cache

        memo = self.__dict__.setdefault("_clip_datasets", {})
        if is_eval in memo and memo[is_eval][0] == len(samples):
            return memo[is_eval][1]
        if exclusions is None and self.run_dir:
            exclusions = Path(self.run_dir) / "runtime_exclusions.jsonl"
        from utils.training import distributed

        device = "cuda" if torch.cuda.is_available() else "cpu"
        cache_dir = Path(config.output_path) / ".clip_cache"  # one folder for every rank (and machine)
        # Data parallel: rank 0 decodes the clips into the shared cache first; the other ranks then
        # find them there instead of writing the same files at the same time.
        first = distributed.is_rank_zero()
        if not first:
            distributed.barrier()
        # 64 clips per DVAE batch on a GPU (fewer, fuller launches; a clip's codes do not depend on
        # its batch), 16 on a CPU
        items, excluded = prepare_clip_cache(
            self,
            samples,
            cache_dir,
            device=device,
            batch_size=64 if device == "cuda" else 16,
            progress=first and getattr(self, "show_progress", True),
        )
        if first:
            distributed.barrier()
        if excluded and exclusions is not None and distributed.is_rank_zero():
            with open(exclusions, "a", encoding="utf-8") as fh:
                for record in excluded:
                    fh.write(json.dumps({**record, "eval": is_eval}) + "\n")
        if not items:
            raise DataError(
                f"none of the {len(samples)} {'eval' if is_eval else 'training'} rows could be used "
                "(see runtime_exclusions.jsonl in the run folder); run scripts/validate_dataset.py on the CSV"
            )
        dataset = CachedClipDataset(items, config, is_eval)
        memo[is_eval] = (len(samples), dataset)
        return dataset
