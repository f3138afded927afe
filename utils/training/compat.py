"""Every touch of a Coqui or torch private name, in one place, with the versions it was written for.

None of the names below is public API; each may change in any release. Importing this module
checks the installed versions and that each private name still exists, so a different version
fails at once with one clear line instead of deep inside a training step.

What the toolkit relies on (upstream behaviour, by name):

- ``trainer.Trainer._get_model()``: the model without its DDP/DataParallel wrapper.
- ``trainer.Trainer._fit()``: the training loop; ``Trainer.fit()`` wraps it in a bare ``except``
  that calls ``sys.exit(1)`` and deletes a run folder without checkpoints, so the toolkit calls
  ``_fit`` itself (utils/training/trainer.py).
- ``trainer.Trainer._pick_target_avg_loss(keep_avg)``: the loss Coqui compares for "best model".
- ``trainer.Trainer._restore_best_loss()``: reads the best loss back on ``--continue``; the
  toolkit's trainer overrides it (Coqui's reads ``best_model.pth`` by file time).
- ``trainer.Trainer._set_grad_clip_per_optimizer(config, optimizer_idx)``: the clip threshold
  ``optimize`` uses; the toolkit's trainer returns 0 where it clips on the device itself.
- ``torch.optim.Adam``'s ``found_inf`` attribute (the protocol ``torch.amp.GradScaler`` uses): a
  fused Adam/AdamW step with ``found_inf`` = 1 changes nothing, decided on the device
  (:func:`set_found_inf`).
- ``trainer.Trainer.train_epoch`` reads ``len(self.train_loader)`` for its step count: the
  toolkit's mid-epoch resume hands it a loader wrapper whose ``len`` is the batches left.
- ``TTS.tts.layers.xtts.trainer.dataset.XTTSDataset.__init__`` is skipped by
  ``ToolkitXTTSDataset`` (it groups rows for sampling with replacement and filters eval rows
  silently); the subclass sets the attributes ``__getitem__``/``collate_fn`` read.
- ``GPTTrainer.format_batch_on_device`` resamples 22.05 kHz audio to the DVAE's rate with
  :data:`DVAE_RESAMPLE` (the toolkit's cached-code path must compute the same codes).
- ``torch.nn.Module._compiled_call_impl``: what ``Module.compile()`` sets; ``Module.__call__``
  runs it instead of ``_call_impl`` (the eager call with hooks) when present.
- ``torch._dynamo.config.suppress_errors``: a failing compile falls back to eager.
- ``torch._C._accelerator_setAllocatorSettings`` (newer) / ``torch.cuda.memory._set_allocator_settings``.
- ``torch._foreach_norm`` and ``torch._utils._flatten_dense_tensors``/``_unflatten_dense_tensors``.
- torchrun's error file (``TORCHELASTIC_ERROR_FILE``): ``ProcessFailure`` reads
  ``{"message": str, "timestamp": int}`` from it into ``ChildFailedError``'s failures; the
  toolkit's ``--gpus N`` workers write a toolkit error there (:func:`write_elastic_error`).
- ``transformers`` ``PretrainedConfig._attn_implementation``: the packed loss forward switches the
  XTTS GPT2 to an attention function registered under :data:`CAUSAL_ATTENTION` (public
  ``AttentionInterface.register``) while it runs. transformers builds no mask for a name it has no
  mask function for, so it also skips the host check of the position ids for packed sequences (a
  device sync in every forward); the function is transformers' own SDPA attention with no mask,
  which then runs causal (``is_causal``, the flash kernel).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from utils.errors import ConfigError

# Tested ranges (inclusive lower, exclusive upper), as (major, minor).
TESTED = {"coqui-tts": ((0, 28), (0, 29)), "coqui-tts-trainer": ((0, 4), (0, 5)), "torch": ((2, 6), (2, 12))}

# Keyword arguments of torchaudio.functional.resample in GPTTrainer.format_batch_on_device (coqui-tts 0.28).
DVAE_RESAMPLE = {
    "lowpass_filter_width": 64,
    "rolloff": 0.9475937167399596,
    "resampling_method": "kaiser_window",
    "beta": 14.769656459379492,
}

_TRAINER_PRIVATE = (
    "_get_model",
    "_fit",
    "_pick_target_avg_loss",
    "_restore_best_loss",
    "train_epoch",
    "_set_grad_clip_per_optimizer",
)


def _version(dist: str) -> tuple[int, int] | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        parts = version(dist).split("+")[0].split(".")
    except PackageNotFoundError:
        return None
    return int(parts[0]), int("".join(c for c in parts[1] if c.isdigit()) or 0)


def check_versions() -> None:
    """Raise :class:`ConfigError` when an installed version is outside the tested range."""
    for dist, (low, high) in TESTED.items():
        found = _version(dist)
        if found is not None and not (low <= found < high):
            raise ConfigError(
                f"{dist} {found[0]}.{found[1]} is installed; the toolkit's adaptations of its private names "
                "were written "
                f"for {low[0]}.{low[1]} up to (not including) {high[0]}.{high[1]}: install the locked versions "
                "(scripts/setup_env.sh)"
            )


def check_private_names() -> None:
    """Raise :class:`ConfigError` when a private name the toolkit relies on is gone."""
    from trainer import Trainer

    missing = [f"trainer.Trainer.{name}" for name in _TRAINER_PRIVATE if not hasattr(Trainer, name)]
    if missing:
        raise ConfigError(f"{', '.join(missing)} not found in the installed Coqui Trainer: install the locked versions")


check_versions()
check_private_names()


# --- Coqui Trainer ----------------------------------------------------------------------------


def unwrap_model(trainer: Any) -> Any:
    """The model inside a Coqui Trainer (``Trainer._get_model``: the DDP/DataParallel wrapper removed)."""
    return trainer._get_model()


def run_fit_loop(trainer: Any) -> None:
    """``Trainer._fit``: the training loop without ``fit``'s ``sys.exit(1)`` on any exception."""
    trainer._fit()


def target_avg_loss(trainer: Any, keep_avg: Any) -> Any:
    """``Trainer._pick_target_avg_loss``: the averaged loss Coqui ranks checkpoints by."""
    return trainer._pick_target_avg_loss(keep_avg)


# Trainer 0.4's train_epoch reads len(self.train_loader) for its step count and the
# batch index for its accumulation phase: a resumed epoch hands it this wrapper.
class EpochTail:
    """The first ``len(loader) - skip`` batches of a fresh pass, reporting the full length.

    Coqui's ``train_epoch`` takes the epoch length from ``len(loader)`` and the accumulation
    phase from the batch index; the trainer adds ``skip`` to that index.
    """

    def __init__(self, loader: Any, skip: int) -> None:
        self.loader, self.skip = loader, skip

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Any:
        import itertools

        return itertools.islice(iter(self.loader), max(0, len(self.loader) - self.skip))


# --- torch --------------------------------------------------------------------------------------


def write_elastic_error(path: str, message: str) -> None:
    """Record ``message`` as this torchrun worker's error (what ``@record`` would write, minus the traceback)."""
    import json
    import time
    from pathlib import Path

    Path(path).write_text(json.dumps({"message": message, "timestamp": int(time.time())}), encoding="utf-8")


def eager_call(module: Any) -> Callable[..., Any]:
    """``nn.Module._call_impl``: the module's call with hooks, what ``torch.compile`` wraps for modules."""
    return module._call_impl


def set_compiled_call(module: Any, call: Callable[..., Any]) -> None:
    """What ``nn.Module.compile`` does: ``Module.__call__`` runs ``_compiled_call_impl`` when set."""
    module._compiled_call_impl = call


def default_compile_cache_dir() -> str:
    """The folder torch's inductor caches go to when ``TORCHINDUCTOR_CACHE_DIR`` is not set.

    Importing ``torch._dynamo`` (transformers does) already writes that default into the
    environment variable, so a set variable alone does not mean a user chose it.
    """
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    return default_cache_dir()


def suppress_compile_errors() -> None:
    """A compile that fails falls back to eager with a warning (``torch._dynamo.config.suppress_errors``)."""
    import torch._dynamo

    torch._dynamo.config.suppress_errors = True


#: The calls ``with sdpa_kernel(backends)`` leaves in a compiled graph (torch.nn.attention).
SDPA_KERNEL_GRAPH_CALLS = ("torch.nn.attention._backend_from_string", "torch.nn.attention._sdpa_kernel")


def cache_graphs_with_sdpa_kernel() -> None:
    """Let AOTAutograd's on-disk cache keep graphs that enter ``sdpa_kernel`` inside the compiled region.

    AOTAutograd caches only graphs whose calls it knows; the two private functions an
    ``sdpa_kernel`` block leaves in the graph are not on its list, so every such graph bypassed the
    cache and every run traced forward and backward again (torch's counter ``autograd_cache_bypass``
    in a second run on an H200, BENCHMARKS.md). The backends appear in the graph as string
    constants (``_backend_from_string('CUDNN_ATTENTION')``), which are part of the cache key, so
    graphs traced under different backend choices keep different entries. Keyed by the torch version,
    as torch's own example for this setting does.
    """
    import torch
    import torch._inductor.config as inductor_config

    for name in SDPA_KERNEL_GRAPH_CALLS:
        inductor_config.unsafe_marked_cacheable_functions.setdefault(name, torch.__version__)


def specialize_float_attributes() -> None:
    """Trace a module's float attributes (layer-norm eps, dropout p, attention scale) as constants.

    Under ``torch.compile(dynamic=True)`` Dynamo makes each such float a symbol; a later pass that
    turns symbolic floats into tensors gives up on these and restarts the whole frame with them
    fixed, after AOTAutograd has already traced (and missed its cache for) the first attempt. That
    attempt's key is never saved, so every run, a second one on a warm cache too, paid one wasted
    trace per compiled frame (``autograd_cache_miss: 2`` beside ``hit: 2`` on an H200, BENCHMARKS.md).
    Fixing the floats from the start gives the same graph the restart ends with. The setting is
    process-wide; the toolkit compiles nothing whose floats change between calls.
    """
    import torch._dynamo.config as dynamo_config

    dynamo_config.specialize_float = True


def set_allocator_settings(settings: str) -> None:
    """CUDA caching-allocator settings at run time (raises RuntimeError on allocators without them)."""
    import torch

    setter = getattr(torch._C, "_accelerator_setAllocatorSettings", None) or torch.cuda.memory._set_allocator_settings
    setter(settings)


def supports_found_inf(optimizer: Any) -> bool:
    """A fused torch Adam/AdamW: its step reads ``found_inf`` and skips itself on the device."""
    import torch

    return isinstance(optimizer, torch.optim.Adam) and bool(optimizer.defaults.get("fused"))


def set_found_inf(optimizer: Any, flag: Any) -> None:
    """``optimizer.found_inf = flag`` for the next step (None: no flag)."""
    if flag is None:
        if getattr(optimizer, "found_inf", None) is not None:
            optimizer.found_inf = None
        return
    optimizer.found_inf = flag


def foreach_norm(tensors: list[Any]) -> list[Any]:
    """One norm per tensor in a single fused call (``torch._foreach_norm``)."""
    import torch

    return torch._foreach_norm(tensors)


def flatten_dense_tensors(tensors: list[Any]) -> Any:
    from torch._utils import _flatten_dense_tensors

    return _flatten_dense_tensors(tensors)


def unflatten_dense_tensors(flat: Any, tensors: list[Any]) -> Any:
    from torch._utils import _unflatten_dense_tensors

    return _unflatten_dense_tensors(flat, tensors)


# --- transformers -----------------------------------------------------------------------------

CAUSAL_ATTENTION = "xtts_toolkit_causal_sdpa"


def _causal_sdpa(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, **kwargs: Any) -> Any:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(module, query, key, value, None, **kwargs)


def causal_attention(gpt2: Any) -> Any:
    """Context: ``gpt2`` (a transformers GPT2Model on SDPA) runs causal attention with no mask step.

    Only for inputs whose rows need no padding mask (the packed loss forward). Other attention
    implementations (eager) are left as they are.
    """
    from contextlib import contextmanager

    @contextmanager
    def scope() -> Any:
        config = gpt2.config
        old = config._attn_implementation
        if old != "sdpa":
            yield
            return
        from transformers import AttentionInterface

        if CAUSAL_ATTENTION not in AttentionInterface._global_mapping:
            AttentionInterface.register(CAUSAL_ATTENTION, _causal_sdpa)
        config._attn_implementation = CAUSAL_ATTENTION
        try:
            yield
        finally:
            config._attn_implementation = old

    return scope()


# --- Coqui Trainer: private methods the toolkit's trainer overrides or calls ---------------------


class TrainerPrivateHooks:
    """Two private ``trainer.Trainer`` methods turned into public hooks of the toolkit's trainer.

    Listed before ``Trainer`` in the toolkit trainer's bases. ``optimize`` asks
    ``_set_grad_clip_per_optimizer(config, optimizer_idx)`` for its clip threshold: answered by
    ``grad_clip(config, optimizer_idx)``. ``_fit`` starts with ``_restore_best_loss()``: answered
    by ``restore_best_loss()``, which may run Coqui's own first (:func:`coqui_restore_best_loss`).
    """

    def _set_grad_clip_per_optimizer(self, config: Any, optimizer_idx: int | None) -> float:
        return self.grad_clip(config, optimizer_idx)  # type: ignore[attr-defined]

    def _restore_best_loss(self) -> None:
        self.restore_best_loss()  # type: ignore[attr-defined]


def coqui_grad_clip(config: Any, optimizer_idx: int | None) -> float:
    """``Trainer._set_grad_clip_per_optimizer``: Coqui's clip threshold for one optimizer (0: no clipping)."""
    from trainer import Trainer

    return float(Trainer._set_grad_clip_per_optimizer(config=config, optimizer_idx=optimizer_idx) or 0.0)


def coqui_restore_best_loss(trainer: Any) -> None:
    """``Trainer._restore_best_loss``: on ``--continue``, the best loss stored in the resumed checkpoint."""
    from trainer import Trainer

    Trainer._restore_best_loss(trainer)
