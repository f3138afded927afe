"""The XTTS v2 base model: the files it needs, their download, and a tiny random base for tests.

The real XTTS v2 and the tiny base share one on-disk layout and one loading path
(:func:`load_base_config` + :class:`utils.training.gpt.model.ToolkitGPTTrainer`), so every test on the
tiny base exercises the code that loads the real model.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from utils.errors import BaseModelError

logger = logging.getLogger(__name__)

# The files GPT fine-tuning needs. speakers_xtts.pth (built-in voices) is optional.
REQUIRED_FILES: tuple[str, ...] = ("model.pth", "config.json", "vocab.json", "dvae.pth", "mel_stats.pth")
OPTIONAL_FILES: tuple[str, ...] = ("speakers_xtts.pth",)

XTTS_V2_URL = os.environ.get("XTTS_V2_BASE_URL", "https://huggingface.co/coqui/XTTS-v2/resolve/main")
XTTS_V2_FILES: tuple[str, ...] = (*REQUIRED_FILES, "speakers_xtts.pth")

# The 17 language tokens of XTTS v2's vocab.json, in its order.
XTTS_LANGUAGE_TOKENS: tuple[str, ...] = (
    "en",
    "es",
    "fr",
    "de",
    "it",
    "pt",
    "pl",
    "tr",
    "ru",
    "nl",
    "cs",
    "ar",
    "zh-cn",
    "hu",
    "ko",
    "ja",
    "hi",
)

# Architecture of the tiny base: 2 layers x 128 channels. Trains at several steps/s on 2 CPU cores.
TINY_GPT_ARGS: dict[str, Any] = {
    "gpt_layers": 2,
    "gpt_n_model_channels": 128,
    "gpt_n_heads": 4,
    "decoder_input_dim": 128,  # must equal gpt_n_model_channels
    "gpt_num_audio_tokens": 1026,
    "gpt_start_audio_token": 1024,
    "gpt_stop_audio_token": 1025,
    "gpt_max_audio_tokens": 605,
    "gpt_max_text_tokens": 402,
    "gpt_max_prompt_tokens": 70,
    "gpt_use_masking_gt_prompt_approach": True,
    "gpt_use_perceiver_resampler": True,
}

# Fields of config.json's model_args that define the architecture (copied into GPTArgs).
ARCHITECTURE_KEYS: tuple[str, ...] = (
    "gpt_layers",
    "gpt_n_model_channels",
    "gpt_n_heads",
    "decoder_input_dim",
    "gpt_num_audio_tokens",
    "gpt_start_audio_token",
    "gpt_stop_audio_token",
    "gpt_max_audio_tokens",
    "gpt_max_text_tokens",
    "gpt_max_prompt_tokens",
    "gpt_use_masking_gt_prompt_approach",
    "gpt_use_perceiver_resampler",
    "gpt_code_stride_len",
    "input_sample_rate",
    "output_sample_rate",
    "output_hop_length",
    "d_vector_dim",
    "cond_d_vector_in_each_upsampling_layer",
)


@dataclass(frozen=True)
class BaseModelFiles:
    """Paths of a checked XTTS v2 base-model folder."""

    root: Path
    model: Path
    config: Path
    vocab: Path
    dvae: Path
    mel_stats: Path
    speakers: Path | None


def check_base_model(root: str | os.PathLike[str]) -> BaseModelFiles:
    """Check that ``root`` holds every XTTS v2 file GPT fine-tuning needs.

    Raises:
        BaseModelError: naming each missing or empty file and how to get the files.
    """
    root = Path(os.path.abspath(Path(root).expanduser()))  # recorded in run folders: the same from any folder
    if root.is_file():
        raise BaseModelError(
            f"base model {root} is a file; pass the folder that holds model.pth, config.json, vocab.json, "
            f"dvae.pth and mel_stats.pth (here: --base-model {root.parent})"
        )
    if not root.is_dir():
        raise BaseModelError(
            f"base model folder {root} does not exist; download XTTS v2 with "
            f"`python scripts/download_xtts_v2.py {root}` or point --base-model at the folder"
        )
    missing = [name for name in REQUIRED_FILES if not (root / name).is_file() or (root / name).stat().st_size == 0]
    if missing:
        raise BaseModelError(
            f"base model folder {root} lacks {', '.join(missing)}; download XTTS v2 with "
            f"`python scripts/download_xtts_v2.py {root}` (it skips files already complete)"
        )
    try:
        json.loads((root / "config.json").read_text(encoding="utf-8"))
        json.loads((root / "vocab.json").read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BaseModelError(
            f"{root}: config.json or vocab.json is not valid JSON ({exc}); delete it and run "
            f"`python scripts/download_xtts_v2.py {root}` again"
        ) from None
    speakers = root / "speakers_xtts.pth"
    from utils.safe_load import check_model_files

    # Coqui loads these itself (weights_only=True, but its refusal is a raw traceback): refuse a
    # file that pickles code here, with one line naming it.
    check_model_files(
        [root / n for n in ("model.pth", "dvae.pth", "mel_stats.pth")] + ([speakers] if speakers.is_file() else [])
    )
    return BaseModelFiles(
        root=root,
        model=root / "model.pth",
        config=root / "config.json",
        vocab=root / "vocab.json",
        dvae=root / "dvae.pth",
        mel_stats=root / "mel_stats.pth",
        speakers=speakers if speakers.is_file() else None,
    )


def load_base_config(files: BaseModelFiles) -> dict[str, Any]:
    """Return the architecture fields of the base model's config.json (``model_args`` subset)."""
    cfg = json.loads(files.config.read_text(encoding="utf-8"))
    model_args = cfg.get("model_args", {})
    arch = {k: model_args[k] for k in ARCHITECTURE_KEYS if k in model_args}
    arch["languages"] = list(cfg.get("languages") or XTTS_LANGUAGE_TOKENS)
    return arch


# --------------------------------------------------------------------------------------------
# Download
# --------------------------------------------------------------------------------------------


def download_xtts_v2(dest: str | os.PathLike[str], *, base_url: str = XTTS_V2_URL, timeout: float = 30.0) -> Path:
    """Fetch the official XTTS v2 files into ``dest``; idempotent.

    A file whose size matches the server's Content-Length (or the manifest written by an earlier
    complete download) is skipped. Each file is written to ``NAME.part`` and renamed when its size
    is verified, so an interrupted download never leaves a truncated file under the real name.

    Raises:
        BaseModelError: when the server cannot be reached (offline) or a file is incomplete.
    """
    from tqdm import tqdm

    dest = Path(dest).expanduser()
    dest.mkdir(parents=True, exist_ok=True)
    manifest_path = dest / "download_manifest.json"
    manifest: dict[str, Any] = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    for name in XTTS_V2_FILES:
        target = dest / name
        recorded = manifest.get(name)
        if recorded and target.is_file() and target.stat().st_size == recorded["size"]:
            logger.info("%s: complete (%d bytes), skipped", name, recorded["size"])
            continue
        url = f"{base_url}/{name}"
        try:
            response = urllib.request.urlopen(url, timeout=timeout)  # fixed https URL
        except (urllib.error.URLError, OSError) as exc:
            raise BaseModelError(
                f"cannot download {url} ({getattr(exc, 'reason', exc)}); this machine seems offline. Copy the XTTS v2 "
                f"files ({', '.join(REQUIRED_FILES)}) into {dest} by hand, or rerun with internet access"
            ) from None
        with response:
            expected = int(response.headers.get("Content-Length") or 0) or None
            if expected and target.is_file() and target.stat().st_size == expected:
                logger.info("%s: already complete (%d bytes), skipped", name, expected)
                manifest[name] = {"size": expected, "sha256": _sha256(target)}
                continue
            part = target.with_name(name + ".part")
            digest = hashlib.sha256()
            size = 0
            with open(part, "wb") as fh, tqdm(total=expected, unit="B", unit_scale=True, desc=name) as bar:
                for chunk in iter(functools.partial(response.read, 1 << 20), b""):
                    fh.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                    bar.update(len(chunk))
        if expected is not None and size != expected:
            part.unlink(missing_ok=True)
            raise BaseModelError(f"{name}: got {size} of {expected} bytes; rerun the download to try again")
        _verify_content(name, part)
        os.replace(part, target)
        manifest[name] = {"size": size, "sha256": digest.hexdigest()}
        manifest_path.write_text(json.dumps(manifest, indent=2))
        logger.info("%s: downloaded %d bytes", name, size)
    manifest_path.write_text(json.dumps(manifest, indent=2))
    check_base_model(dest)
    return dest


def _verify_content(name: str, path: Path) -> None:
    """Cheap structural check: JSON parses, torch files are zip archives (torch.save format)."""
    if name.endswith(".json"):
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            path.unlink(missing_ok=True)
            raise BaseModelError(f"{name}: the server sent something that is not JSON; try again later") from None
    elif name.endswith(".pth"):
        with open(path, "rb") as fh:
            if fh.read(2) != b"PK":
                path.unlink(missing_ok=True)
                raise BaseModelError(f"{name}: not a torch checkpoint (bad header); try again later")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# Tiny base
# --------------------------------------------------------------------------------------------

# English/Latin text for the tiny vocabulary: every ASCII letter, digit and common punctuation,
# so English demo text never hits [UNK], while Ge'ez (Amharic) is absent exactly as in XTTS v2.
_TINY_VOCAB_TEXT = (
    "the quick brown fox jumps over the lazy dog. pack my box with five dozen liquor jugs! "
    "how vexingly quick daft zebras jump? sphinx of black quartz, judge my vow; "
    "a journey of a thousand miles begins with a single step. she sells sea shells by the sea shore. "
    "we train a voice model on our own recordings and listen to the result carefully. "
    "numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000. quotes 'single' \"double\" (paren) [bracket] - dash: colon"
)


def tiny_vocab_text(extra_text: Iterable[str] = ()) -> list[str]:
    """Training text for the tiny vocabulary (lower-cased, as XTTS's cleaners lower-case)."""
    lines = [_TINY_VOCAB_TEXT, _TINY_VOCAB_TEXT.upper()]
    lines.extend(extra_text)
    return lines


def build_tiny_vocab(path: Path, extra_text: Iterable[str] = (), vocab_size: int = 400) -> Path:
    """Train a BPE vocab.json in XTTS's format: [STOP]=0 [UNK]=1 [SPACE]=2 [START]=3, then languages."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    specials = ["[STOP]", "[UNK]", "[SPACE]", "[START]", *(f"[{code}]" for code in XTTS_LANGUAGE_TOKENS)]
    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False)
    text = [line.replace(" ", "[SPACE]") for line in tiny_vocab_text(extra_text)]
    tokenizer.train_from_iterator(text, trainer=trainer)
    for idx, token in enumerate(specials):
        assert tokenizer.token_to_id(token) == idx, f"{token} must have id {idx}"
    tokenizer.save(str(path))
    return path


def make_tiny_base(
    out_dir: str | os.PathLike[str],
    *,
    extra_text: Iterable[str] = (),
    seed: int = 0,
    gpt_args: Mapping[str, Any] | None = None,
) -> Path:
    """Write a tiny random XTTS v2 base in the real on-disk layout.

    Files: vocab.json (BPE from ``tokenizers``), mel_stats.pth (ones, shape (80,)), dvae.pth (a real
    DVAE, seeded random weights, so every process computes the same audio codes), model.pth
    (``{"model": Xtts state dict}`` with a 2-layer GPT and the real HiFiGAN decoder), config.json
    (an XttsConfig whose model_args hold the tiny architecture). ``gpt_args`` replaces
    :data:`TINY_GPT_ARGS` (e.g. the full XTTS v2 GPT size, for benchmarks).

    Raises:
        BaseModelError: if ``out_dir`` already holds a base model (nothing is overwritten).
    """
    import torch
    from TTS.tts.configs.xtts_config import XttsConfig
    from TTS.tts.layers.xtts.dvae import DiscreteVAE
    from TTS.tts.models.xtts import Xtts, XttsArgs

    out = Path(out_dir).expanduser()
    existing = [name for name in REQUIRED_FILES if (out / name).exists()]
    if existing:
        raise BaseModelError(
            f"{out} already holds {', '.join(existing)}; choose an empty folder (nothing was overwritten)"
        )
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    build_tiny_vocab(out / "vocab.json", extra_text)
    torch.save(torch.ones(80), out / "mel_stats.pth")
    args = XttsArgs(**dict(gpt_args or TINY_GPT_ARGS))
    dvae = DiscreteVAE(
        channels=80,
        normalization=None,
        positional_dims=1,
        num_tokens=args.gpt_num_audio_tokens - 2,
        codebook_dim=512,
        hidden_dim=512,
        num_resnet_blocks=3,
        kernel_size=3,
        num_layers=2,
        use_transposed_convs=False,
    )  #  (the DVAE GPTTrainer builds; same shapes as XTTS v2's dvae.pth)
    torch.save(dvae.state_dict(), out / "dvae.pth")
    config = XttsConfig(model_args=args)
    config.model_args.tokenizer_file = ""  # vocab.json sits beside model.pth, as in the XTTS v2 release
    model = Xtts(config)
    from TTS.tts.layers.xtts.tokenizer import VoiceBpeTokenizer

    model.tokenizer = VoiceBpeTokenizer(str(out / "vocab.json"))
    model.init_models()
    torch.save({"model": model.state_dict()}, out / "model.pth")
    config.save_json(str(out / "config.json"))
    logger.info("tiny XTTS base written to %s", out)
    return out
