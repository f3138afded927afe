"""The clip cache on disk: a second run on the same data decodes and encodes nothing; a change is seen."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import pytest
import soundfile as sf
import torch

from tests.conftest import read_demo_samples
from utils.gpt_train import build_config
from utils.hparams import resolve
from utils.training import fast_data


@pytest.fixture(scope="module")
def model_and_rows(tiny_base: Path, demo_en: Path, tmp_path_factory: pytest.TempPathFactory):
    from utils.training.model import ToolkitGPTTrainer

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
    load, encode = fast_data.load_audio_soundfile, fast_data.compute_dvae_codes

    lock = threading.Lock()  # the decode pass runs on several threads

    def counted_load(path, sr):
        with lock:
            calls["decoded"] += 1
        return load(path, sr)

    def counted_encode(model, wavs, device):
        calls["encoded"] += len(wavs)
        return encode(model, wavs, device)

    monkeypatch.setattr(fast_data, "compute_dvae_codes", counted_encode)
    return calls, counted_load


def test_second_preparation_reads_everything_from_disk(model_and_rows, monkeypatch, tmp_path):
    model, rows, _ = model_and_rows
    cache = tmp_path / "cache"
    calls, load = _counting(monkeypatch)
    first, _ = fast_data.prepare_clip_cache(model, rows, cache, device="cpu", load_audio=load, progress=False)
    assert calls == {"decoded": 6, "encoded": 6}
    again, _ = fast_data.prepare_clip_cache(model, rows, cache, device="cpu", load_audio=load, progress=False)
    assert calls == {"decoded": 6, "encoded": 6}  # nothing decoded or encoded the second time
    assert [torch.equal(a.codes, b.codes) for a, b in zip(first, again)] == [True] * 6
    assert [a.num_samples for a in first] == [b.num_samples for b in again]
    assert not list(cache.glob(".*.tmp"))  # every file was written whole


def test_a_second_preparation_takes_the_lengths_from_the_index_without_opening_a_waveform(
    model_and_rows, monkeypatch, tmp_path
):
    import json

    import numpy as np

    model, rows, _ = model_and_rows
    cache = tmp_path / "cache"
    first, _ = fast_data.prepare_clip_cache(model, rows, cache, device="cpu", progress=False)
    index = json.loads((cache / fast_data.LENGTHS_INDEX).read_text())
    assert sorted(index.values()) == sorted(it.num_samples for it in first)
    assert all(index[Path(it.audio_npy).name] == np.load(it.audio_npy).shape[-1] for it in first)
    opened = []
    load = np.load
    monkeypatch.setattr(np, "load", lambda f, *a, **k: opened.append(str(f)) or load(f, *a, **k))
    again, _ = fast_data.prepare_clip_cache(model, rows, cache, device="cpu", progress=False)
    assert [a.num_samples for a in again] == [b.num_samples for b in first]
    assert not [f for f in opened if ".codes-" not in f]  # only the codes were read, no waveform
    # an unreadable index: each length read from its waveform again, and the index rewritten
    (cache / fast_data.LENGTHS_INDEX).write_text("{not json")
    third, _ = fast_data.prepare_clip_cache(model, rows, cache, device="cpu", progress=False)
    assert [a.num_samples for a in third] == [b.num_samples for b in first]
    assert len([f for f in opened if ".codes-" not in f]) == 6
    assert json.loads((cache / fast_data.LENGTHS_INDEX).read_text()) == index


def test_unchanged_files_are_not_hashed_again(model_and_rows, monkeypatch, tmp_path):
    model, rows, _ = model_and_rows
    hashed = []
    digest = fast_data.file_digest
    monkeypatch.setattr(fast_data, "file_digest", lambda p: hashed.append(p) or digest(p))
    index = tmp_path / "file_digests.json"
    first = fast_data.file_digests([r["audio_file"] for r in rows], index=index)
    assert len(hashed) == 6 and index.is_file()
    assert fast_data.file_digests([r["audio_file"] for r in rows], index=index) == first
    assert len(hashed) == 6  # size and modification time unchanged: read from the index
    st = os.stat(rows[0]["audio_file"])
    os.utime(rows[0]["audio_file"], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    fast_data.file_digests([r["audio_file"] for r in rows], index=index)
    assert hashed[6:] == [rows[0]["audio_file"]]  # touched: hashed again, the others not


def test_a_changed_clip_and_a_changed_dvae_are_computed_again(model_and_rows, monkeypatch, tmp_path):
    model, rows, _ = model_and_rows
    cache = tmp_path / "cache"
    calls, load = _counting(monkeypatch)
    fast_data.prepare_clip_cache(model, rows, cache, device="cpu", load_audio=load, progress=False)
    # same path, new content: decoded and encoded again, the rest read from disk
    data, sr = sf.read(rows[2]["audio_file"])
    sf.write(rows[2]["audio_file"], data[: len(data) // 2], sr)
    items, _ = fast_data.prepare_clip_cache(model, rows, cache, device="cpu", load_audio=load, progress=False)
    assert calls == {"decoded": 7, "encoded": 7}
    assert items[2].num_samples == len(data) // 2
    # another DVAE file (a new base model): every clip's codes again, no audio decoded
    dvae = Path(model.config.model_args.dvae_checkpoint)
    st = dvae.stat()
    os.utime(dvae, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    fast_data.prepare_clip_cache(model, rows, cache, device="cpu", load_audio=load, progress=False)
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
            alone = fast_data.compute_dvae_codes(model, [clip], "cpu")[0]
            beside = fast_data.compute_dvae_codes(model, [clip, longer], "cpu")[0]
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
        return fast_data.load_audio_soundfile(path, sr)

    assert fast_data.decode_workers(1) == 1 and 1 <= fast_data.decode_workers(10_000) <= 8
    monkeypatch.setattr(fast_data, "decode_workers", lambda clips: 3)
    items, excluded = fast_data.prepare_clip_cache(
        model, rows, tmp_path / "cache", device="cpu", load_audio=slow_load, progress=False
    )
    assert len(threads) == 3
    assert [it.source for it in items] == [r["audio_file"] for i, r in enumerate(rows) if i != 2]
    assert [(e["audio_file"], e["reason"]) for e in excluded] == [(rows[2]["audio_file"], "empty_text")]
