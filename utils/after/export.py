"""Export a fine-tuned XTTS v2 into a compact inference folder that Coqui's own API loads.

A Trainer checkpoint holds the optimizer state, the frozen DVAE, the training mel front-ends and
an ``xtts.`` prefix on every model key (GPTTrainer wraps ``Xtts``). The export keeps only what
``Xtts`` needs, under ``Xtts``'s own names:

    DIR/model.pth        {"model": Xtts state dict} (no optimizer, no dvae.*, no torch_mel_spectrogram_*,
                         no gpt.gpt_inference.* / gpt.gpt.wte.*, which Xtts rebuilds when it loads)
    DIR/config.json      XttsConfig: the base model's settings, the run's architecture and every
                         language of the model (new ones included)
    DIR/vocab.json       the run's vocabulary (the extended one for a new language)
    DIR/reference/*.wav  speaker reference clips chosen from the training data (utils.after.reference)
    DIR/export_info.json where it came from and why these references
    DIR/README.txt       how to synthesize

It loads with ``Xtts.init_from_config(config)`` + ``model.load_checkpoint(config, checkpoint_dir=DIR)``
and with ``TTS.api.TTS(model_path=DIR, config_path=DIR/config.json)``; a language XTTS lacks
needs one more call after loading: ``utils.language.use_toolkit_tokenizer(model, DIR/vocab.json)``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from utils.after.reference import choose_references_for_run, run_rows
from utils.errors import DataError
from utils.language.registry import is_xtts_language
from utils.runs import checkpoint_step, locate_recorded, read_run_config, resolve_checkpoint, run_language
from utils.safe_load import load_torch_file

logger = logging.getLogger(__name__)

# Top-level keys of a GPTTrainer state dict that inference never uses (see
# TTS.tts.models.xtts.Xtts.get_compatible_checkpoint_state_dict, which drops the same ones on load).
TRAINING_ONLY_PREFIXES = ("dvae.", "torch_mel_spectrogram_style_encoder.", "torch_mel_spectrogram_dvae.")
# Built by GPT.init_gpt_for_inference from weights that are saved anyway (mel_embedding, mel_head, ...).
INFERENCE_ALIAS_PREFIXES = ("gpt.gpt_inference.", "gpt.gpt.wte.")
README_TEMPLATE = """XTTS v2 fine-tune exported by xtts-finetune-toolkit
=================================================

Source checkpoint: {checkpoint}
Languages trained: {language}
Reference clips:   {references}

Synthesize (from the toolkit's folder):

    python scripts/synthesize.py --model {out_dir} --language {language} \\
        --text "{example}" --out out.wav

Or with Coqui's own API:

    from TTS.tts.configs.xtts_config import XttsConfig
    from TTS.tts.models.xtts import Xtts
    config = XttsConfig(); config.load_json("{out_dir}/config.json")
    model = Xtts.init_from_config(config)
    model.load_checkpoint(config, checkpoint_dir="{out_dir}", eval=True)
{tokenizer_line}    out = model.synthesize("{example}", speaker_wav={first_ref!r}, language="{language}")
"""


@dataclass
class ExportResult:
    """What :func:`export_model` wrote."""

    out_dir: Path
    size_bytes: int
    checkpoint: Path
    languages: list[str]
    new_languages: list[str]
    references: list[Path] = field(default_factory=list)

    def size_text(self) -> str:
        return f"{self.size_bytes / 1e6:.1f} MB"


# --------------------------------------------------------------------------------------------
# State dict and config
# --------------------------------------------------------------------------------------------


def load_state_dict(checkpoint: str | os.PathLike) -> dict[str, Any]:
    """The ``model`` state dict of a Trainer checkpoint or an exported model.pth (tensors only)."""
    data = load_torch_file(checkpoint)
    state = data.get("model", data) if isinstance(data, dict) else None
    if not isinstance(state, dict):
        raise DataError(f"{checkpoint} holds no model state dict; pass a Trainer checkpoint or an exported model.pth")
    return state


def compact_state_dict(state: dict[str, Any]) -> dict[str, Any]:
    """Keep the inference weights under Xtts's names (drop training-only keys, strip ``xtts.``)."""
    out: dict[str, Any] = {}
    for key, value in state.items():
        if key.startswith(TRAINING_ONLY_PREFIXES):
            continue
        name = key[len("xtts.") :] if key.startswith("xtts.") else key
        if name.startswith(INFERENCE_ALIAS_PREFIXES):
            continue
        out[name] = value
    return out


def inference_config(run_config: dict[str, Any], base_config_path: str | os.PathLike | None = None):
    """An ``XttsConfig`` for the run's model (what ``Xtts.init_from_config`` and ``TTS.api`` read).

    Sampling settings and everything else come from the base model's config.json when it is
    there; the architecture and the language list come from the run; ``tokenizer_file`` is left
    empty so Coqui reads vocab.json beside model.pth.
    """
    from TTS.tts.configs.xtts_config import XttsAudioConfig, XttsConfig
    from TTS.tts.models.xtts import XttsArgs

    config = XttsConfig()
    if base_config_path is not None and Path(base_config_path).is_file():
        config.load_json(str(base_config_path))
    arg_fields = {f.name for f in dataclasses.fields(XttsArgs)}
    run_args = run_config.get("model_args", {})
    for name in arg_fields:
        if name in run_args:
            setattr(config.model_args, name, run_args[name])
    config.model_args.tokenizer_file = ""
    config.model_args.gpt_checkpoint = ""
    audio = run_config.get("audio") or {}
    keys = ("sample_rate", "output_sample_rate", "dvae_sample_rate")
    config.audio = XttsAudioConfig(**{k: v for k, v in audio.items() if k in keys})
    languages = list(config.languages or [])
    for code in run_config.get("languages") or []:
        if code not in languages:
            languages.append(code)
    config.languages = languages
    config.output_path = ""
    return config


def folder_size(path: str | os.PathLike) -> int:
    """Bytes in all files under ``path``."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def export_model(
    checkpoint: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    run_dir: str | os.PathLike | None = None,
    references: list[str | os.PathLike] | None = None,
    num_references: int = 3,
    overwrite: bool = False,
) -> ExportResult:
    """Write the compact inference folder for one checkpoint.

    Args:
        checkpoint: a Trainer checkpoint (``checkpoint_N.pth``, ``best_model.pth``) of a run.
        out_dir: the folder to create (must not exist or be empty, unless ``overwrite``).
        run_dir: the run folder (default: the checkpoint's folder); gives config.json and vocab.json.
        references: speaker clips to ship; default: chosen from the run's training rows by
            :func:`utils.after.reference.choose_references`.
        num_references: how many clips to choose when ``references`` is None.
        overwrite: replace an existing non-empty ``out_dir``.

    Returns:
        The :class:`ExportResult` (folder, size, languages, references).

    Raises:
        DataError: missing checkpoint/config/vocab, or ``out_dir`` in the way.
    """
    checkpoint, out_dir = _check_paths(Path(checkpoint), Path(out_dir), overwrite)
    run_dir = Path(run_dir) if run_dir is not None else checkpoint.parent
    run_config = read_run_config(run_dir)
    vocab = run_vocab(run_dir, run_config)
    language = run_language(run_config)
    references, reference_info = _references(run_dir, references, num_references)
    state = compact_state_dict(load_state_dict(checkpoint))
    config = inference_config(run_config, base_config_path(run_config, run_dir))
    new_languages, shipped = _write_folder(
        out_dir,
        state,
        config,
        vocab,
        references,
        info={
            "checkpoint": str(checkpoint.resolve()),
            "step": checkpoint_step(checkpoint),
            "run_dir": str(run_dir.resolve()),
            "language": language,
            "reference_choice": reference_info,
            "parameters": int(sum(v.numel() for v in state.values())),
        },
        readme=lambda shipped, new: _readme(out_dir, checkpoint, language, shipped, new, _example_text(run_dir)),
    )
    shipped_paths = [out_dir / p for p in shipped]
    result = ExportResult(
        out_dir, folder_size(out_dir), checkpoint, list(config.languages), new_languages, shipped_paths
    )
    logger.info("exported %s -> %s (%s, %d references)", checkpoint.name, out_dir, result.size_text(), len(shipped))
    return result


def _check_paths(checkpoint: Path, out_dir: Path, overwrite: bool) -> tuple[Path, Path]:
    """The checkpoint must exist and ``out_dir`` be free (missing or empty) unless ``overwrite``."""
    if not checkpoint.is_file():
        raise DataError(f"checkpoint {checkpoint} not found")
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise DataError(f"{out_dir} exists and is not empty; choose another --out or pass --overwrite")
    return checkpoint, out_dir


def _references(run_dir: Path, references: list | None, count: int) -> tuple[list, dict[str, Any]]:
    """The speaker clips to ship (given, or chosen from the run's training rows) and why."""
    if references is not None:
        return references, {"given": [str(p) for p in references]}
    choice = choose_references_for_run(run_dir, count=count)
    return [c.path for c in choice.chosen], choice.to_dict()


def _write_folder(
    out_dir: Path, state: dict[str, Any], config: Any, vocab: Path, references: list, info: dict[str, Any], readme: Any
) -> tuple[list[str], list[str]]:
    """Write the folder under a temporary name, then rename it into place (never half written).

    Returns:
        (the model's languages XTTS v2 lacks, the shipped reference paths relative to the folder).
    """
    import torch

    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{secrets.token_hex(3)}")
    tmp.mkdir(parents=True)
    try:
        torch.save({"model": state}, tmp / "model.pth")
        config.save_json(str(tmp / "config.json"))
        shutil.copyfile(vocab, tmp / "vocab.json")
        ref_dir = tmp / "reference"
        ref_dir.mkdir()
        shipped = []
        for i, ref in enumerate(references, start=1):
            dest = ref_dir / f"ref_{i:02d}{Path(ref).suffix or '.wav'}"
            shutil.copy2(ref, dest)
            shipped.append(dest.relative_to(tmp).as_posix())
        new_languages = [c for c in config.languages if not is_xtts_language(c)]
        info = {**info, "languages": list(config.languages), "new_languages": new_languages, "references": shipped}
        (tmp / "export_info.json").write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        (tmp / "README.txt").write_text(readme(shipped, new_languages), encoding="utf-8")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return new_languages, shipped


def export_run(run_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None, *, which: str = "best") -> Path:
    """Export a run's best (or last) checkpoint; the hook training calls when it ends.

    Args:
        run_dir: the run folder.
        out_dir: default ``<run_dir>/export`` (replaced if it exists: it is the run's own export).
        which: "best" (lowest eval loss) or "last".

    Returns:
        The export folder.
    """
    run_dir, ckpt = resolve_checkpoint(run_dir, which=which)
    out = Path(out_dir) if out_dir is not None else run_dir / "export"
    return export_model(ckpt, out, run_dir=run_dir, overwrite=out_dir is None).out_dir


def run_vocab(run_dir: Path, run_config: dict[str, Any]) -> Path:
    """The vocabulary a run trained with: its own vocab.json, else the config's ``tokenizer_file``.

    Raises:
        DataError: neither file exists.
    """
    candidates = [run_dir / "vocab.json"]
    recorded = run_config.get("model_args", {}).get("tokenizer_file")
    if recorded:
        candidates.append(locate_recorded(run_dir, recorded, run_config))
    for path in candidates:
        if path.is_file():
            return path
    raise DataError(f"{run_dir} has no vocab.json; copy the vocabulary the run trained with into the run folder")


def base_config_path(run_config: dict[str, Any], run_dir: str | os.PathLike | None = None) -> Path | None:
    """The base model's config.json named in the run's config (sampling settings), or None when gone.

    ``run_dir`` locates a relative path of an older run (:func:`utils.runs.locate_recorded`).
    """
    base = (run_config.get("toolkit") or {}).get("base_model")
    if base and run_dir is not None:
        base = locate_recorded(run_dir, base, run_config)
    path = Path(base) / "config.json" if base else None
    if path is None or not path.is_file():
        logger.info("base model config.json not found; sampling settings use XttsConfig defaults")
        return None
    return path


def _example_text(run_dir: Path) -> str:
    try:
        rows = run_rows(run_dir, "eval")
    except DataError:
        rows = []
    text = rows[0].text if rows else "Hello, this is my fine-tuned voice."
    return text.replace('"', "'")


def _readme(
    out_dir: Path, checkpoint: Path, language: str, refs: list[str], new_languages: list[str], example: str
) -> str:
    tokenizer_line = (
        "    from utils.language import use_toolkit_tokenizer  # a language XTTS lacks: register it\n"
        f'    use_toolkit_tokenizer(model, "{out_dir}/vocab.json")\n'
        if new_languages
        else ""
    )
    return README_TEMPLATE.format(
        checkpoint=checkpoint.name,
        language=language,
        references=", ".join(refs) or "none",
        out_dir=out_dir,
        example=example,
        tokenizer_line=tokenizer_line,
        first_ref=f"{out_dir}/{refs[0]}" if refs else "speaker.wav",
    )
