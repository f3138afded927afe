"""The decoder stage's inputs, computed once per clip and kept on disk: GPT latents, speaker embedding, target.

At inference XTTS feeds its HiFi-GAN decoder the GPT's last hidden states at the audio positions
(``GPT.forward(..., return_latent=True)``, one 1024-d vector per audio code) and a 512-d speaker
embedding from the decoder's own speaker encoder. To train the decoder on what the fine-tuned GPT
really produces, each clip's latents are computed teacher-forced, as in
tuanh123789/Train_Hifigan_XTTS: the GPT in eval mode, without gradients, reads the clip's text,
its DVAE codes and its conditioning (the inference path's ``Xtts.get_gpt_cond_latents`` on the
clip itself) and returns one latent per code. The speaker embedding is the one
``Xtts.get_speaker_embedding`` gives for the clip (its 22.05 kHz audio resampled to 16 kHz), and the
target is the clip decoded straight to the decoder's 24 kHz.

Everything is cached beside the GPT stage's clip cache (``utils.training.gpt.clip_cache``, which also
supplies the decoded 22.05 kHz waveforms, text tokens and DVAE codes) as ``.npy`` files written
atomically, named after the clip's cached waveform (itself named by the audio's content):

- ``STEM.latents-KEY-TOKENS.npy`` float32 (frames, channels). ``KEY`` names the GPT weights (a
  digest of the GPT's tensors, so a new GPT checkpoint gives a new key and the same weights in
  another file do not), the DVAE and mel-statistics files (:func:`utils.training.gpt.clip_cache.dvae_key`) and the
  conditioning settings; ``TOKENS`` the text's token ids.
- ``STEM.speaker-KEY.npy`` float32 (512,): ``KEY`` a digest of the speaker encoder's tensors.
- ``STEM.target-24000.npy`` float32: the 24 kHz waveform (depends on the audio only).

A second run on the same data and GPT computes nothing (:attr:`LatentCacheReport.computed`).
Sizes: 4 KB of latents per 46 ms frame (XTTS v2's 1024 channels) and 96 KB of target per second.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from utils.errors import DataError

logger = logging.getLogger(__name__)

#: Bump when the cached latents' meaning changes (the forward call, the conditioning, the layout).
LATENTS_VERSION = 1
#: The GPT stage's data limits (utils/training/config.py), so both stages keep the same rows.
MAX_WAV_LENGTH = 255995
MAX_TEXT_LENGTH = 200


@dataclass(frozen=True)
class LatentClip:
    """One clip's cached decoder inputs and target."""

    source: str  # the original audio file
    latents_npy: str  # float32 (frames, channels)
    speaker_npy: str  # float32 (speaker_dim,)
    target_npy: str  # float32 waveform at the decoder's output rate
    frames: int
    target_samples: int


@dataclass
class LatentCacheReport:
    """What :func:`prepare_latent_cache` kept, excluded and had to compute."""

    items: list[LatentClip]
    excluded: list[dict[str, Any]]
    latent_key: str
    speaker_key: str
    computed: dict[str, int] = field(default_factory=dict)  # "latents", "speakers", "targets"


@dataclass(frozen=True)
class GPTModelFiles:
    """An XTTS model folder (the GPT stage's export or the base) and the DVAE files its codes need."""

    root: Path
    model: Path
    config: Path
    vocab: Path
    dvae: Path
    mel_stats: Path

    @classmethod
    def locate(
        cls,
        gpt_model: str | os.PathLike[str],
        base_model: str | os.PathLike[str] | None = None,
        *,
        dvae: str | os.PathLike[str] | None = None,
    ) -> GPTModelFiles:
        """Find the files; ``gpt_model`` is a folder or its ``model.pth``, the DVAE files come from
        ``base_model`` (default: the same folder, as in the XTTS v2 release), the DVAE itself from
        ``dvae`` when given (a DVAE stage's dvae.pth).

        Raises:
            DataError: a file is missing, with what to pass instead.
        """
        root = Path(gpt_model)
        root = root.parent if root.is_file() else root
        base = Path(base_model) if base_model is not None else root
        files = cls(
            root=root,
            model=root / "model.pth",
            config=root / "config.json",
            vocab=root / "vocab.json",
            dvae=Path(dvae) if dvae is not None else base / "dvae.pth",
            mel_stats=base / "mel_stats.pth",
        )
        missing = [str(p) for p in (files.model, files.config, files.vocab) if not p.is_file()]
        if missing:
            raise DataError(
                f"{', '.join(missing)} not found: pass the GPT stage's export folder (model.pth, config.json, "
                "vocab.json) or the base model folder"
            )
        if not files.dvae.is_file() or not files.mel_stats.is_file():
            raise DataError(
                f"{files.dvae} or {files.mel_stats} not found: pass the base model folder (it holds dvae.pth and "
                "mel_stats.pth) as the base model"
            )
        return files


def build_latent_model(files: GPTModelFiles) -> Any:
    """The GPT stage's model (``ToolkitGPTTrainer``) on these files: GPT, DVAE, decoder, tokenizer.

    It loads ``model.pth`` as GPTTrainer loads a base (``Xtts.load_checkpoint`` takes an export's
    and a Trainer checkpoint's key names alike) and registers the vocabulary's languages with the
    toolkit's tokenizer, so a language XTTS lacks works here too.
    """
    from TTS.tts.configs.xtts_config import XttsAudioConfig
    from TTS.tts.layers.xtts.trainer.gpt_trainer import GPTArgs, GPTTrainerConfig

    from utils.base_model import BaseModelFiles, load_base_config
    from utils.training.gpt.model import ToolkitGPTTrainer

    arch = load_base_config(
        BaseModelFiles(files.root, files.model, files.config, files.vocab, files.dvae, files.mel_stats, None)
    )
    languages = arch.pop("languages")
    args = GPTArgs(
        max_wav_length=MAX_WAV_LENGTH,
        max_text_length=MAX_TEXT_LENGTH,
        mel_norm_file=str(files.mel_stats),
        dvae_checkpoint=str(files.dvae),
        xtts_checkpoint=str(files.model),
        tokenizer_file=str(files.vocab),
        **arch,
    )
    audio = XttsAudioConfig(sample_rate=22050, dvae_sample_rate=22050, output_sample_rate=24000)
    model = ToolkitGPTTrainer(GPTTrainerConfig(model_args=args, audio=audio, languages=languages))
    model.show_progress = False
    return model.eval()


def tensor_digest(tensors: dict[str, torch.Tensor], *parts: Any) -> str:
    """A 12-hex-digit digest of named tensors (names, dtypes, shapes, bytes) and ``parts``."""
    h = hashlib.blake2b(digest_size=6)
    for part in parts:
        h.update(f"{part}|".encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class Conditioning:
    """How inference turns a reference clip into conditioning (the model's config.json, XttsConfig's defaults)."""

    gpt_cond_len: int = 12  # seconds of audio for the GPT's conditioning latents
    gpt_cond_chunk_len: int = 4  # seconds per chunk, averaged
    max_ref_len: int = 10  # seconds of each reference used at all
    sound_norm_refs: bool = False  # peak-normalise the reference to 0.75 first

    @classmethod
    def of(cls, files: GPTModelFiles) -> Conditioning:
        from TTS.tts.configs.xtts_config import XttsConfig

        config = XttsConfig()
        config.load_json(str(files.config))
        return cls(
            int(config.gpt_cond_len),
            int(config.gpt_cond_chunk_len),
            int(config.max_ref_len),
            bool(config.sound_norm_refs),
        )

    def reference(self, wav: torch.Tensor, sample_rate: int = 22050) -> torch.Tensor:
        """The part of a (1, n) clip inference would use as its reference (``Xtts.get_conditioning_latents``)."""
        wav = wav[:, : sample_rate * self.max_ref_len]
        return (wav / torch.abs(wav).max()) * 0.75 if self.sound_norm_refs else wav


def latent_key(model: Any, cond: Conditioning) -> str:
    """What the latents depend on besides the clip: the GPT's weights, the DVAE, the conditioning."""
    from utils.training.gpt.clip_cache import dvae_key

    gpt = model.xtts.gpt
    return tensor_digest(gpt.state_dict(), f"v{LATENTS_VERSION}", dvae_key(model.config), cond, gpt.code_stride_len)


def speaker_key(model: Any, cond: Conditioning) -> str:
    """What a speaker embedding depends on besides the clip: the decoder's speaker encoder, the reference cut."""
    encoder = model.xtts.hifigan_decoder.speaker_encoder
    return tensor_digest(encoder.state_dict(), f"v{LATENTS_VERSION}", cond.max_ref_len, cond.sound_norm_refs)


def _save_atomic(path: Path, array: np.ndarray) -> None:
    from utils.fs import replace_atomically

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.save(fh, array)

    replace_atomically(path, write)


def _paths(clip: Any, lkey: str, skey: str, output_sr: int) -> tuple[Path, Path, Path]:
    npy = Path(clip.audio_npy)
    tokens = hashlib.blake2b(clip.tokens.numpy().astype(np.int64).tobytes(), digest_size=5).hexdigest()
    return (
        npy.with_name(f"{npy.stem}.latents-{lkey}-{tokens}.npy"),
        npy.with_name(f"{npy.stem}.speaker-{skey}.npy"),
        npy.with_name(f"{npy.stem}.target-{output_sr}.npy"),
    )


@torch.no_grad()
def clip_latents(
    xtts: Any, wav: torch.Tensor, tokens: torch.Tensor, codes: torch.Tensor, cond: Conditioning
) -> np.ndarray:
    """The GPT's latents for one (1, n) 22.05 kHz clip, teacher-forced: (codes, channels) float32.

    The same calls as ``Xtts.inference`` after generation, with the clip's DVAE codes in place of
    generated ones and the clip itself as the speaker reference.
    """
    device = next(xtts.gpt.parameters()).device
    ref = cond.reference(wav).to(device)
    cond_latents = xtts.get_gpt_cond_latents(ref, 22050, length=cond.gpt_cond_len, chunk_length=cond.gpt_cond_chunk_len)
    text = tokens.long().unsqueeze(0).to(device)
    audio_codes = codes.long().unsqueeze(0).to(device)
    latents = xtts.gpt(
        text,
        torch.tensor([text.shape[-1]], device=device),
        audio_codes,
        torch.tensor([audio_codes.shape[-1] * xtts.gpt.code_stride_len], device=device),
        cond_latents=cond_latents,
        return_attentions=False,
        return_latent=True,
    )
    if latents.shape[1] != codes.shape[-1]:  # GPT.forward drops 5 positions in eval mode: one latent per code
        raise RuntimeError(f"expected {codes.shape[-1]} latents, got {latents.shape[1]}: is the GPT in eval mode?")
    return latents[0].float().cpu().numpy()


@torch.no_grad()
def clip_speaker_embedding(xtts: Any, wav: torch.Tensor, cond: Conditioning) -> np.ndarray:
    """``Xtts.get_speaker_embedding`` of a (1, n) 22.05 kHz clip as its own reference: (speaker_dim,) float32."""
    device = next(xtts.hifigan_decoder.parameters()).device
    return xtts.get_speaker_embedding(cond.reference(wav).to(device), 22050).reshape(-1).float().cpu().numpy()


def _targets(
    clips: Sequence[Any], paths: list[tuple[Path, Path, Path]], output_sr: int, load_audio: Callable[..., torch.Tensor]
) -> int:
    """Decode the missing 24 kHz targets (threads: decoding and resampling release the GIL)."""
    from utils.training.gpt.clip_cache import decode_workers

    todo = [(c, p[2]) for c, p in zip(clips, paths) if not p[2].exists()]

    def one(job: tuple[Any, Path]) -> None:
        clip, path = job
        _save_atomic(path, load_audio(clip.source, output_sr)[0].numpy().astype(np.float32))

    with ThreadPoolExecutor(max_workers=decode_workers(len(todo) or 1)) as pool:
        list(pool.map(one, todo))
    return len(todo)


def _inputs(
    model: Any, clips: Sequence[Any], paths: list[tuple[Path, Path, Path]], cond: Conditioning
) -> dict[str, int]:
    """Compute the missing latents and speaker embeddings, one clip at a time.

    One clip per forward: the GPT's latent pass takes no attention mask, so padding a batch would
    change the shorter clips' latents.
    """
    computed = {"latents": 0, "speakers": 0}
    for clip, (lat_path, spk_path, _t) in zip(clips, paths):
        if lat_path.exists() and spk_path.exists():
            continue
        wav = torch.from_numpy(np.load(clip.audio_npy)).unsqueeze(0)
        if not lat_path.exists():
            _save_atomic(lat_path, clip_latents(model.xtts, wav, clip.tokens, clip.codes, cond))
            computed["latents"] += 1
        if not spk_path.exists():
            _save_atomic(spk_path, clip_speaker_embedding(model.xtts, wav, cond))
            computed["speakers"] += 1
    return computed


def _item(clip: Any, paths: tuple[Path, Path, Path]) -> LatentClip:
    return LatentClip(
        source=clip.source,
        latents_npy=str(paths[0]),
        speaker_npy=str(paths[1]),
        target_npy=str(paths[2]),
        frames=int(clip.codes.shape[-1]),
        target_samples=int(np.load(paths[2], mmap_mode="r").shape[-1]),
    )


def prepare_latent_cache(
    model: Any,
    samples: Sequence[dict[str, Any]],
    cache_dir: str | os.PathLike[str],
    files: GPTModelFiles,
    *,
    device: str | None = None,
    load_audio: Callable[..., torch.Tensor] | None = None,
) -> LatentCacheReport:
    """Cached latents, speaker embeddings and targets for ``samples`` (computed where missing).

    Args:
        model: :func:`build_latent_model`'s model on ``files``.
        samples: Coqui sample dicts (``audio_file``, ``text``, ``language``).
        cache_dir: the clip cache folder (shared with the GPT stage; reused across runs).
        files: the model's files (conditioning settings).
        device: where the GPT and the speaker encoder run (default: CUDA when available).
        load_audio: decoder ``(path, sample_rate) -> (1, n)`` tensor (default: soundfile).

    Returns:
        The kept clips in the rows' order, the excluded rows with their reasons, the keys and counts.

    Raises:
        DataError: no row could be used.
    """
    from utils.training.gpt.clip_cache import load_audio_soundfile, prepare_clip_cache

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    load_audio = load_audio or load_audio_soundfile
    cond = Conditioning.of(files)
    lkey, skey = latent_key(model, cond), speaker_key(model, cond)
    output_sr = int(model.xtts.hifigan_decoder.output_sample_rate)
    clips, excluded = prepare_clip_cache(
        model, samples, cache_dir, device=device, progress=False, load_audio=load_audio
    )
    if not clips:
        raise DataError(f"none of the {len(samples)} rows could be used; run scripts/validate_dataset.py on the CSV")
    paths = [_paths(c, lkey, skey, output_sr) for c in clips]
    computed = {"targets": _targets(clips, paths, output_sr, load_audio)}
    home = next(model.xtts.parameters()).device
    model.xtts.to(device)
    try:
        computed.update(_inputs(model, clips, paths, cond))
    finally:
        model.xtts.to(home)
    items = [_item(c, p) for c, p in zip(clips, paths)]
    logger.info(
        "decoder inputs: %d clips (%d excluded); computed %d latents, %d speaker embeddings, %d targets (key %s)",
        len(items),
        len(excluded),
        computed["latents"],
        computed["speakers"],
        computed["targets"],
        lkey,
    )
    return LatentCacheReport(items=items, excluded=excluded, latent_key=lkey, speaker_key=skey, computed=computed)
