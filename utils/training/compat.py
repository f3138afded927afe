"""Every touch of a Coqui or torch private name, in one place, with the versions it was written for.

None of the names in :data:`PRIVATE_NAMES` is public API; each may change in any release. Importing
this module checks the installed versions and that each listed name still exists (those of modules
already imported; :func:`check_private_names` with ``import_modules=True`` checks them all, as the
tests do), so a different version fails at once with one clear line instead of deep inside a
training step. Each entry names the upstream behaviour the toolkit relies on.

Upstream behaviours adapted here without a private name:

- ``trainer.Trainer.train_epoch`` reads ``len(self.train_loader)`` for its step count: the
  toolkit's mid-epoch resume hands it a loader wrapper whose ``len`` is the batches left
  (:class:`EpochTail`).
- ``TTS.tts.layers.xtts.trainer.dataset.XTTSDataset.__init__`` is skipped by
  ``ToolkitXTTSDataset`` (it groups rows for sampling with replacement and filters eval rows
  silently); the subclass sets the attributes ``__getitem__``/``collate_fn`` read.
- ``GPTTrainer.format_batch_on_device`` resamples 22.05 kHz audio to the DVAE's rate with
  :data:`DVAE_RESAMPLE` (the toolkit's cached-code path must compute the same codes).
- torchrun's error file (``TORCHELASTIC_ERROR_FILE``): ``ProcessFailure`` reads
  ``{"message": str, "timestamp": int}`` from it into ``ChildFailedError``'s failures; the
  toolkit's ``--gpus N`` workers write a toolkit error there (:func:`write_elastic_error`).
- ``trainer.Trainer.__init__`` names its run folder ``get_experiment_folder_path(output_path,
  run_name)`` (``{run_name}-{date}-{commit}``), a function it imports into ``trainer.trainer``:
  for a stage's plain folder inside a run folder, :func:`experiment_folder` has that name return
  the folder itself while the Trainer is built, and :func:`exact_run_folder` makes it
  ``output_path/run_name`` (a toolkit run name already holds one time stamp and an id).
- Coqui builds the GPT, its GPT2 stack and the conditioning encoder inside ``GPTTrainer``, so the
  toolkit cannot subclass those modules: the speed levers give single instances their own
  ``forward`` (:func:`replace_forward`; ``nn.Module.__call__`` looks ``forward`` up on the
  instance first), and ``GPTTrainer.__init__`` runs with two Coqui functions replaced for its
  duration (:func:`gpt2_init_skipped`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
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


@dataclass(frozen=True)
class PrivateName:
    """A private upstream name the toolkit uses: where it lives and the behaviour relied on.

    ``optional``: used only where present (a newer name beside an older one). ``on_instances``: an
    attribute upstream code sets on objects it builds; it is read with a default, so there is
    nothing to find on a class.
    """

    module: str
    path: str
    behaviour: str
    optional: bool = False
    on_instances: bool = False

    @property
    def name(self) -> str:
        return f"{self.module}.{self.path}"

    def exists(self, *, import_module: bool = False) -> bool | None:
        """Whether the name is there (None: not checked, its module is not imported yet)."""
        if self.on_instances:
            return None
        if not import_module and self.module not in sys.modules:
            return None
        import importlib

        obj: Any = importlib.import_module(self.module)
        for part in self.path.split("."):
            if not hasattr(obj, part):
                return False
            obj = getattr(obj, part)
        return True


PRIVATE_NAMES = (
    PrivateName("trainer", "Trainer._get_model", "the model without its DDP/DataParallel wrapper"),
    PrivateName(
        "trainer.trainer",
        "get_experiment_folder_path",
        "the name Trainer.__init__ calls for a new run's folder (run_name plus the date and the git commit); "
        "replaced while a Trainer is built: a stage's own folder (experiment_folder), or output_path/run_name "
        "since the toolkit's run names carry their own time and id (exact_run_folder)",
    ),
    PrivateName(
        "trainer",
        "Trainer._fit",
        "the training loop; Trainer.fit() wraps it in a bare except that calls sys.exit(1) and deletes a run "
        "folder without checkpoints, so the toolkit calls _fit itself (utils/training/trainer.py)",
    ),
    PrivateName("trainer", "Trainer._pick_target_avg_loss", "the averaged loss Coqui ranks checkpoints by"),
    PrivateName(
        "trainer",
        "Trainer._restore_best_loss",
        "reads the best loss back on --continue; the toolkit's trainer overrides it (Coqui's reads "
        "best_model.pth by file time)",
    ),
    PrivateName(
        "trainer",
        "Trainer._set_grad_clip_per_optimizer",
        "the clip threshold optimize() uses; the toolkit's trainer returns 0 where it clips on the device itself",
    ),
    PrivateName(
        "torch.optim",
        "Adam(fused=True).found_inf",
        "the protocol torch.amp.GradScaler uses: a fused Adam/AdamW step with found_inf = 1 changes nothing, "
        "decided on the device (set_found_inf)",
        on_instances=True,
    ),
    PrivateName(
        "TTS.tts.layers.xtts.trainer.gpt_trainer",
        "GPTTrainer.get_optimizer() -> optimizer._group_names",
        "GPTTrainer.get_optimizer sets _group_names (each group's parameter names) on its optimizer; nothing "
        "upstream reads it, the 8-bit optimizer carries it too (copy_group_names)",
        on_instances=True,
    ),
    PrivateName(
        "torch.nn",
        "Module._call_impl",
        "the module call with hooks, what torch.compile wraps for a module (eager_call)",
    ),
    PrivateName(
        "torch.nn",
        "Module._compiled_call_impl",
        "what Module.compile() sets; Module.__call__ runs it instead of _call_impl when present (set_compiled_call)",
    ),
    PrivateName("torch._dynamo.config", "suppress_errors", "a failing compile falls back to eager"),
    PrivateName(
        "torch._dynamo.config",
        "specialize_float",
        "float attributes traced as constants: no restarted frame per compile (specialize_float_attributes)",
    ),
    PrivateName(
        "torch._inductor.config",
        "unsafe_marked_cacheable_functions",
        "functions AOTAutograd's cache may keep in a graph (cache_graphs_with_sdpa_kernel)",
    ),
    PrivateName("torch.nn.attention", "_backend_from_string", "left in a graph by sdpa_kernel inside torch.compile"),
    PrivateName("torch.nn.attention", "_sdpa_kernel", "left in a graph by sdpa_kernel inside torch.compile"),
    PrivateName(
        "torch._inductor.runtime.cache_dir_utils",
        "default_cache_dir",
        "the folder inductor's caches go to when TORCHINDUCTOR_CACHE_DIR is not set",
    ),
    PrivateName(
        "torch._C",
        "_accelerator_setAllocatorSettings",
        "the caching allocator's settings at run time (newer torch)",
        optional=True,
    ),
    PrivateName("torch.cuda.memory", "_set_allocator_settings", "the caching allocator's settings at run time"),
    PrivateName("torch", "_foreach_norm", "one norm per tensor in a single fused call"),
    PrivateName("torch._utils", "_flatten_dense_tensors", "gradient buckets for the all-reduce"),
    PrivateName("torch._utils", "_unflatten_dense_tensors", "gradient buckets for the all-reduce"),
    PrivateName(
        "transformers",
        "PretrainedConfig._attn_implementation",
        "the attention function a model runs: the packed loss forward switches the XTTS GPT2 to one registered "
        "under CAUSAL_ATTENTION while it runs (causal_attention)",
    ),
    PrivateName(
        "transformers",
        "AttentionInterface._global_mapping",
        "the registered attention functions (CAUSAL_ATTENTION is registered once)",
    ),
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


def check_private_names(*, import_modules: bool = False) -> None:
    """Raise :class:`ConfigError` when a private name of :data:`PRIVATE_NAMES` is gone.

    Without ``import_modules`` only the names of modules already imported are checked (importing
    torch._dynamo or transformers for it would cost seconds at every start), and Coqui's Trainer's,
    which the toolkit's trainer subclasses.
    """
    import trainer  # noqa: F401

    missing = [
        entry.name
        for entry in PRIVATE_NAMES
        if not entry.optional and entry.exists(import_module=import_modules) is False
    ]
    if missing:
        raise ConfigError(
            f"{', '.join(missing)} not found in the installed versions: install the locked versions "
            "(scripts/setup_env.sh)"
        )


check_versions()
check_private_names()


# --- Coqui Trainer ----------------------------------------------------------------------------


def unwrap_model(trainer: Any) -> Any:
    """The model inside a Coqui Trainer (``Trainer._get_model``: the DDP/DataParallel wrapper removed)."""
    return trainer._get_model()


@contextmanager
def exact_run_folder() -> Iterator[None]:
    """While a Trainer is built: its new run folder is ``output_path/run_name``, without Coqui's suffix.

    ``trainer.trainer.get_experiment_folder_path`` names it ``{run_name}-{Month-DD-YYYY_HH+MMPM}-{commit}``;
    a toolkit run name already holds the time and a unique id (``xtts_ft_20261207-141335_c078cd``).
    """
    import trainer.trainer as coqui_trainer

    coqui_name = coqui_trainer.get_experiment_folder_path

    def exact(root_path: Any, model_name: str) -> Any:
        from pathlib import Path

        return Path(root_path) / model_name

    coqui_trainer.get_experiment_folder_path = exact
    try:
        yield
    finally:
        coqui_trainer.get_experiment_folder_path = coqui_name


def run_fit_loop(trainer: Any) -> None:
    """``Trainer._fit``: the training loop without ``fit``'s ``sys.exit(1)`` on any exception."""
    trainer._fit()


def target_avg_loss(trainer: Any, keep_avg: Any) -> Any:
    """``Trainer._pick_target_avg_loss``: the averaged loss Coqui ranks checkpoints by."""
    return trainer._pick_target_avg_loss(keep_avg)


def copy_group_names(source: Any, target: Any) -> None:
    """Give ``target`` the ``_group_names`` GPTTrainer.get_optimizer set on ``source`` (where it did)."""
    if hasattr(source, "_group_names"):
        target._group_names = source._group_names


@contextmanager
def experiment_folder(folder: Any) -> Iterator[None]:
    """While a Coqui Trainer is built, make it write into exactly ``folder`` (None: Coqui's own name).

    ``Trainer.__init__`` calls ``get_experiment_folder_path(output_path, run_name)``, bound in
    ``trainer.trainer``, for a new run's folder; here that call returns ``folder``. A continued run
    (``args.continue_path``) never calls it.
    """
    if folder is None:
        yield
        return
    from pathlib import Path

    import trainer.trainer as coqui_trainer

    original = coqui_trainer.get_experiment_folder_path
    coqui_trainer.get_experiment_folder_path = lambda _root, _name: Path(folder)
    try:
        yield
    finally:
        coqui_trainer.get_experiment_folder_path = original


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


def replace_forward(module: Any, forward: Callable[..., Any]) -> None:
    """Give one module instance its own ``forward`` (``nn.Module.__call__`` finds it before the class's).

    Only for modules the toolkit does not construct (Coqui builds the GPT, its GPT2 stack, the
    conditioning encoder and the heads inside ``GPTTrainer``), so they cannot be subclassed; the
    caller says why at each use. A bound method (``types.MethodType``) is copied with its module by
    ``copy.deepcopy``, a closure is not.
    """
    module.forward = forward


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


# --- coqui-tts -----------------------------------------------------------------------------------


@contextmanager
def gpt2_init_skipped() -> Iterator[dict[str, list[str]]]:
    """Build Coqui's GPT2 stack without random initialisation; yields the keys the checkpoint lacked.

    ``TTS.tts.layers.xtts.gpt`` calls ``build_hf_gpt_transformer`` by its module-level name; it
    runs here under transformers' ``no_init_weights`` (the torch init functions and
    ``init_weights`` do nothing). ``Xtts.load_state_dict`` (``strict=False`` in GPTTrainer) takes
    the loaded tensors as they are (``assign=True``: no copy into untouched memory) and is
    watched so the caller can tell whether every GPT2 weight came from the checkpoint; the
    yielded dict holds ``"missing"`` once the checkpoint was loaded. Both are Coqui's again when
    the block ends.
    """
    import torch
    import TTS.tts.layers.xtts.gpt as xtts_gpt
    from TTS.tts.models.xtts import Xtts

    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers 4.x
        from transformers.modeling_utils import no_init_weights
    build = xtts_gpt.build_hf_gpt_transformer
    had_own_load = "load_state_dict" in Xtts.__dict__
    load = Xtts.load_state_dict
    seen: dict[str, list[str]] = {}

    def quick_build(*args: Any, **kwargs: Any) -> Any:
        with no_init_weights():
            return build(*args, **kwargs)

    def watched_load(module: Any, state_dict: Any, *args: Any, **kwargs: Any) -> Any:
        # assign: the module keeps the loaded tensors instead of copying them into fresh memory;
        # a tensor stored in another dtype (a half-precision checkpoint) is cast to the module's first
        own = module.state_dict(keep_vars=True)
        state_dict = {
            k: v.to(own[k].dtype) if k in own and torch.is_tensor(v) and v.dtype != own[k].dtype else v
            for k, v in state_dict.items()
        }
        result = load(module, state_dict, *args, **{**kwargs, "assign": True})
        seen["missing"] = list(result.missing_keys)
        return result

    xtts_gpt.build_hf_gpt_transformer = quick_build
    Xtts.load_state_dict = watched_load  # type: ignore[method-assign]
    try:
        yield seen
    finally:
        xtts_gpt.build_hf_gpt_transformer = build
        if had_own_load:
            Xtts.load_state_dict = load  # type: ignore[method-assign]
        else:
            del Xtts.load_state_dict


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
