"""Fast training data for the XTTS GPT: decode each clip once, cache its DVAE codes, bucket by length.

Coqui's ``XTTSDataset`` decodes every clip twice per step (target and conditioning slice) and the
model recomputes the frozen DVAE's codes for every batch on the GPU (``GPTTrainer.
format_batch_on_device``). Here a one-off pass (:func:`prepare_clip_cache`) decodes each clip once,
stores the 22.05 kHz mono waveform as a ``.npy`` file and its DVAE codes beside it (both keyed by
the audio's content, the codes also by the DVAE files, so a later run reuses them); training then
reads only the random conditioning slice from a memory map and ships the cached codes, not the
waveform. The conditioning slice keeps Coqui's semantics exactly (``get_prompt_slice``: random
length between ``min_conditioning_length`` and ``max_conditioning_length``, random start, zero
padded to the maximum; middle length from the start for evaluation).

How the GPT stage uses it (:class:`utils.training.gpt.model.ToolkitGPTTrainer`, with the
``cache_dvae_codes`` speed option):

1. ``items, excluded = prepare_clip_cache(model, samples, cache_dir, device="cuda")`` once per split
   (``clip_dataset``; it borrows the DVAE back onto ``device`` if it was offloaded).
2. ``dataset = CachedClipDataset(items, model.config)`` and
   ``loader = build_fast_loader(dataset, batch_size, ...)`` in ``get_data_loader``.
3. The model's ``format_batch`` / ``format_batch_on_device`` (:class:`utils.training.gpt.model.
   SpeedLevers`) take these batches and the stock ``XTTSDataset`` batches alike.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import random
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.utils.data

from utils.data.preflight import SampleProblem, SpecialTokens, check_length, check_text, check_tokens

logger = logging.getLogger(__name__)

#: Coqui's GPT reads ``ceil(wav_length / code_stride_len)`` codes per clip (gpt.py, ``forward``).
CODE_STRIDE = 1024
#: Zero samples appended after each clip when computing its codes (see compute_dvae_codes): the
#: rest of its last code's 1024 samples plus the DVAE's reach beyond them (up to about 2,560 samples
#: measured; with 2,048 the last code of about 1 clip in 50 still depended on its batch).
PAD_AFTER = 4096


def load_audio_soundfile(path: str | Path, sample_rate: int) -> torch.Tensor:
    """Decode a clip like Coqui's ``TTS.tts.models.xtts.load_audio`` but through soundfile.

    Same result (mono by channel mean, resampled with torchaudio when needed, clipped to [-1, 1]),
    no FFmpeg / torchcodec needed for wav, flac and ogg.

    Returns:
        Float tensor of shape (1, samples).
    """
    import soundfile as sf

    data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    audio = torch.from_numpy(np.ascontiguousarray(data.T))
    if audio.size(0) != 1:
        audio = torch.mean(audio, dim=0, keepdim=True)
    if sr != sample_rate:
        import torchaudio

        audio = torchaudio.functional.resample(audio, sr, sample_rate)
    audio.clip_(-1, 1)
    return audio


@dataclass
class CachedClip:
    """One training clip after the one-off preparation pass."""

    audio_npy: str  # float32 mono waveform at the model's sample rate
    num_samples: int
    tokens: torch.Tensor  # int32 text token ids (no start/stop)
    codes: torch.Tensor  # int16/int64 DVAE codes, ceil(num_samples / 1024) of them
    language: str
    source: str  # the original audio_file, for reports


#: Bump when the cached codes' meaning changes (PAD_AFTER, CODE_STRIDE, the resampling call).
CODES_VERSION = 3


def _cache_name(content: str, sample_rate: int) -> str:
    return f"{content}-{sample_rate}.npy"


def file_digest(path: str | Path) -> str:
    """The audio file's content key (BLAKE2b, 20 hex digits): a changed file is decoded again."""
    h = hashlib.blake2b(digest_size=10)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_digests(paths: Sequence[str], index: Path | None = None, workers: int = 8) -> list[str | None]:
    """:func:`file_digest` of each path (None where unreadable), in a thread pool.

    With ``index`` (a JSON file in the clip cache: path -> size, modification time, digest), a file
    whose size and modification time are unchanged is not read again: a second run on the same
    data hashes nothing. The index is rewritten when something changed.
    """
    import json
    import os
    from concurrent.futures import ThreadPoolExecutor

    from utils.fs import write_json_atomic

    known: dict[str, Any] = {}
    if index is not None and index.is_file():
        try:
            known = json.loads(index.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            known = {}
    if not isinstance(known, dict):
        known = {}

    def one(p: str) -> tuple[str, list[Any] | None]:
        key = os.path.abspath(p)
        try:
            st = os.stat(p)
            entry = known.get(key)
            if isinstance(entry, list) and len(entry) == 3 and entry[:2] == [st.st_size, st.st_mtime_ns]:
                return key, entry
            return key, [st.st_size, st.st_mtime_ns, file_digest(p)]
        except OSError:
            return key, None  # the decode step reports it with its reason

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        found = list(pool.map(one, paths))
    fresh = {k: e for k, e in found if e is not None}
    if index is not None and any(known.get(k) != e for k, e in fresh.items()):
        try:
            write_json_atomic(index, {**known, **fresh})
        except OSError as exc:
            logger.info("clip cache: could not keep the file digests in %s (%s)", index, exc)
    return [e[2] if e is not None else None for _k, e in found]


def dvae_key(config: Any) -> str:
    """What the DVAE codes depend on besides the audio: the DVAE and mel-statistics files, rates, this code.

    The files count by their content (size and digest), not their place: a base model moved to
    another folder (``--continue RUN --base-model DIR``) keeps its cached codes and a decoder
    stage's latents, and another file at the same path gets new ones.
    """
    args = config.model_args
    parts = [f"v{CODES_VERSION}", str(config.audio.sample_rate), str(config.audio.dvae_sample_rate)]
    for f in (getattr(args, "dvae_checkpoint", None), getattr(args, "mel_norm_file", None)):
        if f and Path(f).is_file():
            parts += [str(Path(f).stat().st_size), file_digest(f)]
        else:
            parts.append(str(f))
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:12]


def _save_atomic(path: Path, array: np.ndarray) -> None:
    """np.save written whole (another rank or a later run never reads half a file)."""
    from utils.fs import replace_atomically

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.save(fh, array)

    replace_atomically(path, write)


@torch.no_grad()
def compute_dvae_codes(model: Any, wavs: Sequence[torch.Tensor], device: torch.device | str) -> list[torch.Tensor]:
    """DVAE codes of several clips in one zero-padded batch, exactly as ``format_batch_on_device``.

    Each clip gets ``ceil(len / 1024)`` codes (zero codes appended if the DVAE returned fewer, as
    Coqui's GPT pads them). Batch clips of similar length: padding is zeros either way, as in a
    stock batch.
    """
    config = model.config
    lengths = [int(w.shape[-1]) for w in wavs]
    # At least PAD_AFTER zeros after every clip: in a stock batch a clip is followed by zero padding
    # unless it is the batch's longest, so its last code sees zeros, not the STFT's reflection.
    batch = torch.zeros(len(wavs), 1, max(lengths) + PAD_AFTER)
    for i, w in enumerate(wavs):
        batch[i, :, : lengths[i]] = w
    dvae_param = next(model.dvae.parameters())
    batch = batch.to(dvae_param.device)
    if config.audio.sample_rate != config.audio.dvae_sample_rate:
        import torchaudio

        from utils.training.compat import DVAE_RESAMPLE

        # Same call as GPTTrainer.format_batch_on_device.
        batch = torchaudio.functional.resample(
            batch, orig_freq=config.audio.sample_rate, new_freq=config.audio.dvae_sample_rate, **DVAE_RESAMPLE
        )
    mel = model.torch_mel_spectrogram_dvae.to(batch.device)(batch)
    codes = model.dvae.get_codebook_indices(mel).cpu()
    out = []
    for i, n in enumerate(lengths):
        need = math.ceil(n / CODE_STRIDE)
        c = codes[i, :need]
        if c.shape[0] < need:
            c = torch.nn.functional.pad(c, (0, need - c.shape[0]))
        out.append(c.to(torch.int16 if int(codes.max()) < 32767 else torch.int64).clone())
    del device  # the DVAE decides the device; kept in the signature for clarity at call sites
    return out


def _check_and_decode(
    s: dict[str, Any],
    tokenizer: Any,
    special: SpecialTokens,
    args: Any,
    sr: int,
    cache_dir: Path,
    load_audio: Callable[[str, int], torch.Tensor],
    content: str | None,
    lengths: dict[str, int],
) -> tuple[dict[str, Any], torch.Tensor, str, int]:
    """The sample checks (utils.data.preflight) on one row, and its waveform in the cache.

    ``lengths`` (cached file name -> samples, see :data:`LENGTHS_INDEX`) spares opening a cached
    waveform to read its length, and gets the length of each waveform decoded here.

    Raises:
        SampleProblem: the row fails a check (empty text, [UNK]/[STOP] tokens, too long, length).
    """
    text = str(s["text"])
    check_text(text)
    ids = tokenizer.encode(text, s["language"])
    check_tokens(ids, special, int(args.max_text_length))
    key = content or hashlib.sha1(str(s["audio_file"]).encode()).hexdigest()[:20]
    npy = cache_dir / _cache_name(key, sr)
    if content is not None and npy.exists():
        n = lengths.get(npy.name)
        if n is None:
            n = lengths[npy.name] = int(np.load(npy, mmap_mode="r").shape[-1])
        wav = None
    else:
        wav = load_audio(s["audio_file"], sr)
        n = int(wav.shape[-1])
    check_length(n, sr, max_samples=int(args.max_wav_length))
    if wav is not None:
        _save_atomic(npy, wav[0].numpy().astype(np.float32))
        if content is not None:
            lengths[npy.name] = n
    return s, torch.IntTensor(ids), str(npy), n


#: The clip cache's index of waveform lengths (cached file name -> samples). The names are keyed
#: by the audio's content and sample rate, so a name's length never changes.
LENGTHS_INDEX = "clip_lengths.json"


def _read_lengths(path: Path) -> dict[str, int]:
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {str(k): int(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _codes_path(npy: str, key: str) -> Path:
    return Path(npy).with_suffix(f".codes-{key}.npy")


def _codes_for(
    model: Any,
    pending: list[tuple[dict[str, Any], torch.Tensor, str, int]],
    device: torch.device | str,
    batch_size: int,
    progress: bool,
    codes_key: str | None = None,
) -> list[CachedClip | None]:
    """DVAE codes of the decoded clips in length-sorted batches; the clips in the input order.

    With ``codes_key``, codes already on disk for that key are read instead of computed, and the
    computed ones are written there for the next run.
    """
    from tqdm import tqdm

    items: list[CachedClip | None] = [None] * len(pending)

    def item(i: int, c: torch.Tensor) -> CachedClip:
        s, tokens, npy, n = pending[i]
        return CachedClip(
            audio_npy=npy, num_samples=n, tokens=tokens, codes=c, language=s["language"], source=str(s["audio_file"])
        )

    todo = []
    for i, (_s, _t, npy, n) in enumerate(pending):
        path = _codes_path(npy, codes_key) if codes_key else None
        if path is not None and path.exists():
            c = torch.from_numpy(np.load(path))
            if c.shape[0] == math.ceil(n / CODE_STRIDE):
                items[i] = item(i, c)
                continue
        todo.append(i)
    if len(todo) < len(pending):
        logger.info("DVAE codes: %d of %d clips read from the cache", len(pending) - len(todo), len(pending))
    if not todo:
        return items
    order = sorted(todo, key=lambda i: pending[i][3])
    # The DVAE may have been moved off the GPU (the offload_frozen speed option): borrow it back.
    home = next(model.dvae.parameters()).device
    model.dvae.to(device)
    try:
        for start in tqdm(range(0, len(order), batch_size), desc="DVAE codes", disable=not progress):
            idx = order[start : start + batch_size]
            wavs = [torch.from_numpy(np.load(pending[i][2])).unsqueeze(0) for i in idx]
            codes = compute_dvae_codes(model, wavs, device)
            for i, c in zip(idx, codes):
                items[i] = item(i, c)
                if codes_key:
                    _save_atomic(_codes_path(pending[i][2], codes_key), c.numpy())
    finally:
        model.dvae.to(home)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return items


def decode_workers(clips: int) -> int:
    """Threads for the clip cache's decode pass: one per core up to 8, never more than clips."""
    return max(1, min(8, os.cpu_count() or 1, clips))


def prepare_clip_cache(
    model: Any,
    samples: Sequence[dict[str, Any]],
    cache_dir: str | Path,
    *,
    device: torch.device | str = "cuda",
    batch_size: int = 16,
    load_audio: Callable[[str, int], torch.Tensor] = load_audio_soundfile,
    progress: bool = True,
) -> tuple[list[CachedClip], list[dict[str, Any]]]:
    """Decode each clip once, store its waveform as .npy and compute its DVAE codes.

    Applies the same limits as Coqui's ``XTTSDataset`` (``max_wav_length``, ``max_text_length``,
    clips under 0.5 s, empty text, [UNK] or [STOP] in the tokens) but reports each excluded clip
    with its reason instead of dropping it silently.

    Args:
        model: a ``GPTTrainer`` (uses ``config``, ``xtts.tokenizer``, ``dvae``,
            ``torch_mel_spectrogram_dvae``); its DVAE may sit on the GPU or the CPU.
        samples: Coqui sample dicts (``audio_file``, ``text``, ``language``).
        cache_dir: folder for the decoded waveforms and their DVAE codes, reused across runs: both
            are keyed by the audio file's content, the codes also by the DVAE and mel-statistics
            files (:func:`dvae_key`), so a second run on the same data decodes and encodes nothing.
        device: where the DVAE runs for this pass (moved there and back if it lives elsewhere).
        batch_size: clips per DVAE batch (length-sorted).
        load_audio: decoder, ``(path, sample_rate) -> (1, n)`` float tensor.
        progress: show one tqdm bar.

    Returns:
        ``(items, excluded)``: kept clips and ``{"audio_file", "reason", "detail"}`` dicts.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    pending, excluded = _decode_clips(model, samples, cache_dir, load_audio, progress)
    items = _codes_for(model, pending, device, batch_size, progress, codes_key=dvae_key(model.config))
    kept = [it for it in items if it is not None]
    for e in excluded:
        logger.warning("excluded %s: %s %s", e["audio_file"], e["reason"], e["detail"])
    logger.info("clip cache: %d clips kept, %d excluded, in %s", len(kept), len(excluded), cache_dir)
    return kept, excluded


def _decode_clips(
    model: Any,
    samples: Sequence[dict[str, Any]],
    cache_dir: Path,
    load_audio: Callable[[str, int], torch.Tensor],
    progress: bool,
) -> tuple[list[tuple[dict[str, Any], torch.Tensor, str, int]], list[dict[str, Any]]]:
    """The sample checks on every row and its waveform in the cache: ``(pending, excluded)``, in the rows' order.

    ``pending`` holds ``(row, tokens, cached .npy, samples)`` of each row that passed.
    """
    from tqdm import tqdm

    config = model.config
    args = config.model_args
    sr = int(config.audio.sample_rate)
    tokenizer = model.xtts.tokenizer
    special = SpecialTokens.of(tokenizer)
    contents = file_digests([str(s["audio_file"]) for s in samples], index=cache_dir / "file_digests.json")
    lengths = _read_lengths(cache_dir / LENGTHS_INDEX)
    known = len(lengths)

    def check_and_decode(job: tuple[dict[str, Any], str | None]) -> tuple[dict[str, Any], Any]:
        s, content = job
        try:
            return s, _check_and_decode(s, tokenizer, special, args, sr, cache_dir, load_audio, content, lengths)
        except SampleProblem as problem:
            return s, problem

    pending: list[tuple[dict[str, Any], torch.Tensor, str, int]] = []
    excluded: list[dict[str, Any]] = []
    # decoding, resampling and the .npy writes release the GIL: a few threads keep the disk and
    # the cores busy; results come back in the rows' order
    with ThreadPoolExecutor(max_workers=decode_workers(len(samples))) as pool:
        done = pool.map(check_and_decode, zip(samples, contents))
        for s, result in tqdm(done, total=len(samples), desc="decode clips", disable=not progress):
            if isinstance(result, SampleProblem):
                excluded.append(result.record(s["audio_file"]))
            else:
                pending.append(result)
    if len(lengths) != known:
        from utils.fs import write_json_atomic

        write_json_atomic(cache_dir / LENGTHS_INDEX, lengths)
    return pending, excluded


def prompt_slice(
    clip: np.ndarray, max_len: int, min_len: int, is_eval: bool, rng: random.Random | None = None
) -> tuple[torch.Tensor, list[int]]:
    """Coqui's ``get_prompt_slice`` on an already decoded clip (same arithmetic, same RNG calls).

    Returns:
        ``(slice of shape (1, max_len), [start, end])``.
    """
    r = rng or random
    n = clip.shape[-1]
    sample_length = int((min_len + max_len) / 2) if is_eval else r.randint(min_len, max_len)
    if n - sample_length < 0:
        sample_length = n // 2
    gap = n - sample_length
    start = 0 if is_eval else r.randint(0, gap)
    end = start + sample_length
    out = torch.zeros(1, max_len)
    out[0, : end - start] = torch.from_numpy(np.array(clip[start:end], dtype=np.float32))
    return out, [start, end]


class CachedClipDataset(torch.utils.data.Dataset):
    """Items for the XTTS GPT from :class:`CachedClip` records (codes cached, one slice read).

    ``__getitem__(i)`` returns the keys of Coqui's ``XTTSDataset`` minus ``wav`` (not needed once
    codes are cached) plus ``audio_codes``. Index ``i`` is the clip index: each epoch is one pass
    over the data (Coqui's dataset samples with replacement instead).
    """

    def __init__(self, items: Sequence[CachedClip], config: Any, is_eval: bool = False) -> None:
        self.items = list(items)
        args = config.model_args
        self.max_cond = int(args.max_conditioning_length)
        self.min_cond = int(args.min_conditioning_length)
        self.use_masking = bool(args.gpt_use_masking_gt_prompt_approach)
        self.is_eval = is_eval

    def __len__(self) -> int:
        return len(self.items)

    def lengths(self) -> list[int]:
        """Waveform lengths in samples, for the bucketing sampler."""
        return [it.num_samples for it in self.items]

    def __getitem__(self, index: int) -> dict[str, Any]:
        it = self.items[index]
        clip = np.load(it.audio_npy, mmap_mode="r")
        cond, idxs = prompt_slice(clip, self.max_cond, self.min_cond, self.is_eval)
        return {
            "text": it.tokens,
            "text_lengths": torch.tensor(it.tokens.shape[0], dtype=torch.long),
            "wav_lengths": torch.tensor(it.num_samples, dtype=torch.long),
            "audio_codes": it.codes.long(),
            "filenames": it.source,
            "conditioning": cond.unsqueeze(1),
            "cond_idxs": torch.tensor(idxs) if self.use_masking else None,
        }


def collate_cached(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Pad a list of :class:`CachedClipDataset` items into a batch for ``format_batch_on_device``.

    Keys match Coqui's ``XTTSDataset.collate_fn`` (``padded_text``, ``text_lengths``,
    ``wav_lengths``, ``conditioning`` (B, 1, 1, T), ``cond_idxs`` or None, ``cond_lens`` None)
    plus ``audio_codes`` (B, max codes) in place of ``wav``.
    """
    b = len(batch)
    text_lengths = torch.stack([x["text_lengths"] for x in batch])
    wav_lengths = torch.stack([x["wav_lengths"] for x in batch])
    text = torch.zeros(b, int(text_lengths.max()), dtype=torch.int32)
    max_codes = max(x["audio_codes"].shape[0] for x in batch)
    codes = torch.zeros(b, max_codes, dtype=torch.long)
    for i, x in enumerate(batch):
        text[i, : x["text"].shape[0]] = x["text"]
        codes[i, : x["audio_codes"].shape[0]] = x["audio_codes"]
    cond_idxs = None
    if batch[0]["cond_idxs"] is not None:
        cond_idxs = torch.stack([x["cond_idxs"] for x in batch])
    return {
        "padded_text": text,
        "text_lengths": text_lengths,
        "wav_lengths": wav_lengths,
        "audio_codes": codes,
        "conditioning": torch.stack([x["conditioning"] for x in batch]),
        "cond_idxs": cond_idxs,
        "cond_lens": None,
        "filenames": [x["filenames"] for x in batch],
    }


class LengthBucketBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Batches of similar length to cut padding, in random order, each clip once per epoch.

    The shuffled index list is cut into pools of ``batch_size * pool_batches`` clips; each pool is
    sorted by length and cut into batches; all batches are then shuffled. Small pools keep the
    order random, large pools cut more padding.

    Data parallel (``num_replicas`` > 1): every rank draws the same epoch's batches (same seed and
    epoch) and keeps every ``num_replicas``-th from ``rank`` on, so the shards are disjoint and
    cover the epoch. Every rank gets the same number of batches (the collectives of each step
    stay in step): the list is padded with its first batches, as ``DistributedSampler`` pads
    rows. ``set_epoch`` (called by the Trainer callbacks at each epoch start) and each pass's own
    increment keep the ranks on the same epoch.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        *,
        pool_batches: int = 32,
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} of {num_replicas} replicas")
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.pool = max(1, pool_batches) * batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.epoch = 0
        self.num_replicas = num_replicas
        self.rank = rank

    def set_epoch(self, epoch: int) -> None:
        """Change the shuffle for a new epoch (called automatically on each ``__iter__``)."""
        self.epoch = epoch

    def _all_batches(self) -> list[list[int]]:
        rng = random.Random(self.seed + self.epoch)
        idx = list(range(len(self.lengths)))
        if self.shuffle:
            rng.shuffle(idx)
        batches: list[list[int]] = []
        for p in range(0, len(idx), self.pool):
            pool = sorted(idx[p : p + self.pool], key=lambda i: self.lengths[i])
            for b in range(0, len(pool), self.batch_size):
                chunk = pool[b : b + self.batch_size]
                if len(chunk) < self.batch_size and self.drop_last:
                    continue
                batches.append(chunk)
        if self.shuffle:
            rng.shuffle(batches)
        return batches

    def _batches(self) -> list[list[int]]:
        batches = self._all_batches()
        if self.num_replicas == 1 or not batches:
            return batches
        per_rank = math.ceil(len(batches) / self.num_replicas)
        padded = batches + [batches[i % len(batches)] for i in range(per_rank * self.num_replicas - len(batches))]
        return padded[self.rank :: self.num_replicas]

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._batches()
        self.epoch += 1
        return iter(batches)

    def _num_all_batches(self) -> int:
        if self.drop_last:
            # pools may leave a short batch each; count exactly
            return len(self._all_batches())
        full, rest = divmod(len(self.lengths), self.pool)
        return full * math.ceil(self.pool / self.batch_size) + math.ceil(rest / self.batch_size)

    def __len__(self) -> int:
        return math.ceil(self._num_all_batches() / self.num_replicas)


class _Cycle(torch.utils.data.Sampler[list[int]]):
    """Endless batches: the wrapped batch sampler's passes one after another (a new shuffle each)."""

    def __init__(self, inner: torch.utils.data.Sampler[list[int]]) -> None:
        self.inner = inner

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.inner, "set_epoch"):
            self.inner.set_epoch(epoch)

    def __iter__(self) -> Iterator[list[int]]:
        while True:
            yield from iter(self.inner)


class ContinuousLoader:
    """A DataLoader whose workers keep prefetching across epoch boundaries.

    A plain DataLoader starts a new iterator each epoch and waits for its workers to produce the
    first batch again (a stall per epoch, a few percent of the step time when an epoch is only
    tens of batches). Here one iterator over an endless sampler lives on; each ``iter()`` yields
    the next ``len(self)`` batches, which is exactly one pass of the bucketing sampler.
    Exposes ``dataset``, ``batch_sampler`` and ``batch_size`` like a DataLoader.
    """

    def __init__(self, loader: torch.utils.data.DataLoader, batches_per_epoch: int, batch_size: int) -> None:
        self.loader = loader
        self.dataset = loader.dataset
        self.batch_sampler = loader.batch_sampler
        self.batch_size = batch_size
        self._n = batches_per_epoch
        self._it: Iterator[Any] | None = None

    def __len__(self) -> int:
        return self._n

    def set_epoch(self, epoch: int) -> None:
        """The sampler's epoch, before the first pass only: later passes are already being
        prefetched and count their epochs themselves (set on resume, to the epochs done)."""
        if self._it is None and hasattr(self.batch_sampler, "set_epoch"):
            self.batch_sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[Any]:
        if self._it is None:
            self._it = iter(self.loader)
        for _ in range(self._n):
            yield next(self._it)


def build_fast_loader(
    dataset: CachedClipDataset,
    batch_size: int,
    *,
    bucket_lengths: bool = True,
    num_workers: int = 4,
    pin_memory: bool = True,
    shuffle: bool = True,
    drop_last: bool = False,
    seed: int = 0,
    prefetch_factor: int = 4,
    continuous: bool | None = None,
    num_replicas: int = 1,
    rank: int = 0,
) -> torch.utils.data.DataLoader | ContinuousLoader:
    """DataLoader over :class:`CachedClipDataset` with bucketing, pinned memory and workers.

    Without bucketing the batches are plain shuffled (or ordered for eval) chunks. ``continuous``
    (default: when shuffling with workers) returns a :class:`ContinuousLoader`, so the workers
    run ahead across epoch boundaries. ``num_replicas`` > 1 (data parallel): this rank's shard
    of the batches (:class:`LengthBucketBatchSampler`; without bucketing, one length for all).
    """
    lengths = dataset.lengths()
    if bucket_lengths or num_replicas > 1:
        sampler = LengthBucketBatchSampler(
            lengths if bucket_lengths else [0] * len(lengths),
            batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            seed=seed,
            num_replicas=num_replicas,
            rank=rank,
        )
    else:
        base = torch.utils.data.RandomSampler(dataset) if shuffle else torch.utils.data.SequentialSampler(dataset)
        sampler = torch.utils.data.BatchSampler(base, batch_size, drop_last)
    kwargs: dict[str, Any] = {}
    if num_workers > 0:
        kwargs = {"persistent_workers": True, "prefetch_factor": prefetch_factor}
    if continuous is None:
        continuous = shuffle and num_workers > 0
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=_Cycle(sampler) if continuous else sampler,
        collate_fn=collate_cached,
        num_workers=num_workers,
        pin_memory=pin_memory and torch.cuda.is_available(),
        **kwargs,
    )
    if continuous:
        return ContinuousLoader(loader, len(sampler), batch_size)
    return loader
