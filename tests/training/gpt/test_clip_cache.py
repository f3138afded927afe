"""The clip cache (utils/training/gpt/clip_cache.py): a second run on the same data decodes and encodes
nothing and a change is seen; Coqui's prompt slice; length-bucketed, sharded and continuous loading."""

from __future__ import annotations

import json
import os
import random
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from tests.conftest import read_demo_samples
from utils.gpt_train import build_config
from utils.hparams import resolve
from utils.training.gpt import clip_cache


@pytest.fixture(scope="module")
def model_and_rows(tiny_base: Path, demo_en: Path, tmp_path_factory: pytest.TempPathFactory):
    from utils.training.gpt.model import ToolkitGPTTrainer

    work = tmp_path_factory.mktemp("clipcache")
    base = work / "base"
    shutil.copytree(tiny_base, base)
    config = build_config(resolve(dataset_hours=0.01), base, output_path=work / "runs", language="en")
    model = ToolkitGPTTrainer(config)
    audio = work / "wavs"
    audio.mkdir()
    rows = []
    for r in read_demo_samples(demo_en / "metadata_train.csv")[:6]:
        dest = audio / Path(r["audio_file"]).name
        shutil.copy(r["audio_file"], dest)
        rows.append({**r, "audio_file": str(dest)})
    return model, rows, work


def _counting(monkeypatch):
    calls = {"decoded": 0, "encoded": 0}
    load, encode = clip_cache.load_audio_soundfile, clip_cache.compute_dvae_codes

    lock = threading.Lock()  # the decode pass runs on several threads

    def counted_load(path, sr):
        with lock:
            calls["decoded"] += 1
        return load(path, sr)

    def counted_encode(model, wavs, device):
        calls["encoded"] += len(wavs)
        return encode(model, wavs, device)

    monkeypatch.setattr(clip_cache, "compute_dvae_codes", counted_encode)
    return calls, counted_load


def test_second_preparation_reads_everything_from_disk(model_and_rows, monkeypatch, tmp_path):
    model, rows, _ = model_and_rows
    cache = tmp_path / "cache"
    calls, load = _counting(monkeypatch)
    first, _ = clip_cache.prepare_clip_cache(model, rows, cache, device="cpu", load_audio=load, progress=False)
    assert calls == {"decoded": 6, "encoded": 6}
    again, _ = clip_cache.prepare_clip_cache(model, rows, cache, device="cpu", load_audio=load, progress=False)
    assert calls == {"decoded": 6, "encoded": 6}  # nothing decoded or encoded the second time
    assert [torch.equal(a.codes, b.codes) for a, b in zip(first, again)] == [True] * 6
    assert [a.num_samples for a in first] == [b.num_samples for b in again]
    assert not list(cache.glob(".*.tmp"))  # every file was written whole


def test_a_second_preparation_takes_the_lengths_from_the_index_without_opening_a_waveform(
    model_and_rows, monkeypatch, tmp_path
):

    import numpy as np

    model, rows, _ = model_and_rows
    cache = tmp_path / "cache"
    first, _ = clip_cache.prepare_clip_cache(model, rows, cache, device="cpu", progress=False)
    index = json.loads((cache / clip_cache.LENGTHS_INDEX).read_text())
    assert sorted(index.values()) == sorted(it.num_samples for it in first)
    assert all(index[Path(it.audio_npy).name] == np.load(it.audio_npy).shape[-1] for it in first)
    opened = []
    load = np.load
    monkeypatch.setattr(np, "load", lambda f, *a, **k: opened.append(str(f)) or load(f, *a, **k))
    again, _ = clip_cache.prepare_clip_cache(model, rows, cache, device="cpu", progress=False)
    assert [a.num_samples for a in again] == [b.num_samples for b in first]
    assert not [f for f in opened if ".codes-" not in f]  # only the codes were read, no waveform
    # an unreadable index: each length read from its waveform again, and the index rewritten
    (cache / clip_cache.LENGTHS_INDEX).write_text("{not json")
    third, _ = clip_cache.prepare_clip_cache(model, rows, cache, device="cpu", progress=False)
    assert [a.num_samples for a in third] == [b.num_samples for b in first]
    assert len([f for f in opened if ".codes-" not in f]) == 6
    assert json.loads((cache / clip_cache.LENGTHS_INDEX).read_text()) == index


def test_unchanged_files_are_not_hashed_again(model_and_rows, monkeypatch, tmp_path):
    model, rows, _ = model_and_rows
    hashed = []
    digest = clip_cache.file_digest
    monkeypatch.setattr(clip_cache, "file_digest", lambda p: hashed.append(p) or digest(p))
    index = tmp_path / "file_digests.json"
    first = clip_cache.file_digests([r["audio_file"] for r in rows], index=index)
    assert len(hashed) == 6 and index.is_file()
    assert clip_cache.file_digests([r["audio_file"] for r in rows], index=index) == first
    assert len(hashed) == 6  # size and modification time unchanged: read from the index
    st = os.stat(rows[0]["audio_file"])
    os.utime(rows[0]["audio_file"], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    clip_cache.file_digests([r["audio_file"] for r in rows], index=index)
    assert hashed[6:] == [rows[0]["audio_file"]]  # touched: hashed again, the others not


def test_a_changed_clip_and_a_changed_dvae_are_computed_again(model_and_rows, monkeypatch, tmp_path):
    model, rows, _ = model_and_rows
    cache = tmp_path / "cache"
    calls, load = _counting(monkeypatch)
    clip_cache.prepare_clip_cache(model, rows, cache, device="cpu", load_audio=load, progress=False)
    # same path, new content: decoded and encoded again, the rest read from disk
    data, sr = sf.read(rows[2]["audio_file"])
    sf.write(rows[2]["audio_file"], data[: len(data) // 2], sr)
    items, _ = clip_cache.prepare_clip_cache(model, rows, cache, device="cpu", load_audio=load, progress=False)
    assert calls == {"decoded": 7, "encoded": 7}
    assert items[2].num_samples == len(data) // 2
    # the same DVAE file in another place (a moved base model): the codes are kept
    dvae = Path(model.config.model_args.dvae_checkpoint)
    moved = tmp_path / "moved" / "dvae.pth"
    moved.parent.mkdir()
    shutil.copy(dvae, moved)
    monkeypatch.setattr(model.config.model_args, "dvae_checkpoint", str(moved))
    clip_cache.prepare_clip_cache(model, rows, cache, device="cpu", load_audio=load, progress=False)
    assert calls == {"decoded": 7, "encoded": 7}
    # another DVAE file (other content: a new base model): every clip's codes again, no audio decoded
    other = tmp_path / "other" / "dvae.pth"
    other.parent.mkdir()
    other.write_bytes(dvae.read_bytes() + b"\0")
    monkeypatch.setattr(model.config.model_args, "dvae_checkpoint", str(other))
    clip_cache.prepare_clip_cache(model, rows, cache, device="cpu", load_audio=load, progress=False)
    assert calls == {"decoded": 7, "encoded": 13}


def test_a_clips_codes_do_not_depend_on_the_batch_it_was_encoded_in(model_and_rows):
    """The zeros after every clip (PAD_AFTER) keep the end of a batch out of its last codes: each
    clip alone gets the codes it gets beside a longer one. Lengths just past a code boundary (1 to
    1,024 samples into the last code) are the hardest case."""
    model = model_and_rows[0]
    g = torch.Generator().manual_seed(0)
    longer = torch.randn(1, 100_000, generator=g) * 0.1
    depends = []
    for k in range(20, 80, 4):
        for extra in (1, 100, 512, 1023, 1024):
            clip = torch.randn(1, k * 1024 + extra, generator=g) * 0.1
            alone = clip_cache.compute_dvae_codes(model, [clip], "cpu")[0]
            beside = clip_cache.compute_dvae_codes(model, [clip, longer], "cpu")[0]
            assert alone.shape[0] == k + 1
            if not torch.equal(alone, beside):
                depends.append(k * 1024 + extra)
    assert depends == []  # with PAD_AFTER = 2048: 1 to 3 of these 75 clips


def test_clips_decoded_on_several_threads_come_back_in_the_rows_order(model_and_rows, monkeypatch, tmp_path):
    """The earlier rows finish last here; the kept clips still follow the rows, the excluded one reported."""
    model, rows, _ = model_and_rows
    rows = [*rows[:2], {**rows[2], "text": "   "}, *rows[3:]]
    order = {r["audio_file"]: i for i, r in enumerate(rows)}
    threads = set()

    def slow_load(path, sr):
        threads.add(threading.get_ident())
        time.sleep(0.05 * (len(rows) - order[path]))  # the first row sleeps longest
        return clip_cache.load_audio_soundfile(path, sr)

    assert clip_cache.decode_workers(1) == 1 and 1 <= clip_cache.decode_workers(10_000) <= 8
    monkeypatch.setattr(clip_cache, "decode_workers", lambda clips: 3)
    items, excluded = clip_cache.prepare_clip_cache(
        model, rows, tmp_path / "cache", device="cpu", load_audio=slow_load, progress=False
    )
    assert len(threads) == 3
    assert [it.source for it in items] == [r["audio_file"] for i, r in enumerate(rows) if i != 2]
    assert [(e["audio_file"], e["reason"]) for e in excluded] == [(rows[2]["audio_file"], "empty_text")]


def test_bucket_sampler_covers_each_clip_once_and_cuts_padding() -> None:
    rng = random.Random(0)
    lengths = [rng.randint(44100, 242550) for _ in range(1000)]
    sampler = clip_cache.LengthBucketBatchSampler(lengths, 16, seed=3)
    batches = list(sampler)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(1000))
    assert len(batches) == len(sampler)

    def padding(bs: list[list[int]]) -> float:
        real = sum(lengths[i] for b in bs for i in b)
        padded = sum(len(b) * max(lengths[i] for i in b) for b in bs)
        return 1 - real / padded

    plain = [flat_i for flat_i in [list(range(k, min(k + 16, 1000))) for k in range(0, 1000, 16)]]
    assert padding(batches) < 0.05 < 0.25 < padding(plain)
    assert [i for b in sampler for i in b] != flat  # a new order each epoch


def test_bucket_sampler_shards_by_rank_disjoint_equal_and_reshuffled() -> None:
    rng = random.Random(1)
    lengths = [rng.randint(44100, 242550) for _ in range(1001)]  # 63 batches of 16 (one short)
    full = clip_cache.LengthBucketBatchSampler(lengths, 16, seed=5)
    for replicas in (2, 3, 4):
        shards = [
            clip_cache.LengthBucketBatchSampler(lengths, 16, seed=5, num_replicas=replicas, rank=r)
            for r in range(replicas)
        ]
        for epoch in (0, 7):
            full.set_epoch(epoch)
            everything = full._all_batches()  # the unsharded epoch
            for shard in shards:
                shard.set_epoch(epoch)
            drawn = [list(shard) for shard in shards]
            per_rank = -(-63 // replicas)
            assert len(everything) == 63
            assert [len(d) for d in drawn] == [len(shard) for shard in shards] == [per_rank] * replicas
            padding = everything[: per_rank * replicas - 63]  # the first batches again, on the last ranks
            assert sorted(tuple(x) for d in drawn for x in d) == sorted(tuple(x) for x in everything + padding)
            clips = [i for d in drawn for x in d for i in x]
            assert set(clips) == set(range(1001))  # together the shards cover the epoch ...
            assert len(clips) == 1001 + sum(len(x) for x in padding)  # ... and overlap only in the padding
    a, b = (clip_cache.LengthBucketBatchSampler(lengths, 16, seed=5, num_replicas=2, rank=0) for _ in range(2))
    b.set_epoch(1)
    assert list(a) != list(b)  # set_epoch: a new shuffle of the shards
    with pytest.raises(ValueError, match="rank 2 of 2"):
        clip_cache.LengthBucketBatchSampler(lengths, 16, num_replicas=2, rank=2)


def test_prompt_slice_matches_coqui(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import TTS.tts.layers.xtts.trainer.dataset as xds

    clip = np.random.default_rng(0).uniform(-0.5, 0.5, 90000).astype(np.float32)
    monkeypatch.setattr(xds, "load_audio", lambda path, sr: torch.from_numpy(clip).unsqueeze(0))
    for is_eval in (False, True):
        for seed in range(5):
            random.seed(seed)
            ref, _, ref_idx = xds.get_prompt_slice("x.wav", 132300, 66150, 22050, is_eval)
            random.seed(seed)
            out, idx = clip_cache.prompt_slice(clip, 132300, 66150, is_eval)
            assert idx == ref_idx
            torch.testing.assert_close(out, ref)


def test_continuous_loader_keeps_epochs_exact() -> None:
    class Items(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 10

        def __getitem__(self, i: int) -> int:
            return i

    sampler = clip_cache.LengthBucketBatchSampler(list(range(10)), 3, seed=1)
    loader = torch.utils.data.DataLoader(
        Items(),
        batch_sampler=clip_cache._Cycle(sampler),
        collate_fn=list,
        num_workers=2,
        persistent_workers=True,
        prefetch_factor=2,
    )
    cont = clip_cache.ContinuousLoader(loader, len(sampler), 3)
    assert len(cont) == 4
    for _ in range(3):  # each epoch: every item exactly once
        assert sorted(i for b in cont for i in b) == list(range(10))
