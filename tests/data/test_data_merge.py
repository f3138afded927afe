"""merge_datasets: namespacing, duplicate removal by audio and text, sources, re-validation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from utils.data.csv_io import read_coqui_csv
from utils.data.merge import merge_datasets, normalise_for_dedupe
from utils.errors import DataError


def make_ds(root: Path, items, speaker="spk", subdir="wavs"):
    """items: list of (file name, audio path or array, text)."""
    (root / subdir).mkdir(parents=True)
    lines = ["audio_file|text|speaker_name"]
    for name, audio, text in items:
        if isinstance(audio, Path):
            shutil.copy(audio, root / subdir / name)
        else:
            sf.write(str(root / subdir / name), audio, 22050)
        lines.append(f"{subdir}/{name}|{text}|{speaker}")
    (root / "metadata_train.csv").write_text("\n".join(lines[:-1]) + "\n")
    (root / "metadata_eval.csv").write_text(lines[0] + "\n" + lines[-1] + "\n")
    return root


def test_merge_namespaces_dedupes_and_revalidates(tmp_path, speech_bank):
    texts = list(speech_bank)
    a = make_ds(tmp_path / "a", [(f"{i}.wav", speech_bank[t], t) for i, t in enumerate(texts[:4])])
    louder = sf.read(str(speech_bank[texts[4]]), dtype="float32")[0] * 0.5
    b_items = [
        ("0.wav", speech_bank[texts[0]], "other text, same audio"),  # duplicate_audio
        ("1.wav", louder, texts[1].upper().replace(".", "!")),  # duplicate_text (same speaker)
        ("2.wav", speech_bank[texts[5]], texts[5]),  # kept, same name as a/2.wav
        ("3.wav", np.zeros(22050, dtype=np.float32) + 1e-6, "quiet"),
    ]  # kept, fails validation: silent
    b = make_ds(tmp_path / "b", b_items)
    (b / "wavs" / "gone.wav").write_bytes(b"")
    with (b / "metadata_train.csv").open("a") as f:
        f.write("wavs/gone.wav|empty file|spk\n")  # unreadable_audio
    out = tmp_path / "all"
    from scripts.merge_datasets import main

    assert main([str(a), str(b), "--out", str(out), "--no-progress"]) == 0
    rep = json.loads((out / "dataset_report.json").read_text())
    removed = sorted((x["input"].split("/")[-1], x["audio_file"], x["reason"]) for x in rep["merge"]["removed"])
    assert removed == [
        ("b", "wavs/0.wav", "duplicate_audio"),
        ("b", "wavs/1.wav", "duplicate_text"),
        ("b", "wavs/gone.wav", "unreadable_audio"),
    ]
    rows = read_coqui_csv(out / "metadata_train.csv") + read_coqui_csv(out / "metadata_eval.csv")
    names = sorted(r.audio_file for r in rows)
    assert names == [
        "wavs/a__wavs__0.wav",
        "wavs/a__wavs__1.wav",
        "wavs/a__wavs__2.wav",
        "wavs/a__wavs__3.wav",
        "wavs/b__wavs__2.wav",
        "wavs/b__wavs__3.wav",
    ]
    assert all(sf.info(str(out / n)).samplerate == 22050 for n in names)
    # every row keeps where it came from; unknown recordings are their own group
    assert rep["clips"]["wavs/b__wavs__2.wav"]["source"] == "b/wavs/2.wav"
    assert rep["clips"]["wavs/b__wavs__2.wav"]["origin"].endswith("b/wavs/2.wav")
    v = rep["validation"]
    assert sum(x["excluded_count"] for x in v.values()) == 1
    assert [e["reason"] for x in v.values() for e in x["excluded"]] == ["silent"]


def test_merge_keeps_sources_of_prepared_datasets_and_splits_by_them(
    tmp_path, speech_bank, long_recording, layout_words
):
    from utils.data.prepare import prepare_dataset

    wav, layout, _ = long_recording
    fake = lambda audio, progress=None: (layout_words(layout), "en")  # noqa: E731
    prepare_dataset([wav], tmp_path / "p1", transcriber=fake, progress=False)
    shifted = tmp_path / "other.wav"
    a, sr = sf.read(str(wav), dtype="float32")
    sf.write(str(shifted), a * 0.8, sr)
    prepare_dataset([shifted], tmp_path / "p2", transcriber=fake, progress=False)
    rep = merge_datasets([tmp_path / "p1", tmp_path / "p2"], tmp_path / "all", dedupe_text=False, progress=False)
    assert len(rep["clips"]) == 10 and rep["merge"]["removed"] == []
    # the same five sentences by the same speaker in both: only keeping sentences apart is possible
    assert rep["split"]["by"] == "text" and "speaker appears in train and eval" in rep["split"]["note"]
    ev = read_coqui_csv(tmp_path / "all" / "metadata_eval.csv")
    tr = read_coqui_csv(tmp_path / "all" / "metadata_train.csv")
    norm = lambda rows: {normalise_for_dedupe(r.text) for r in rows}  # noqa: E731
    assert norm(ev).isdisjoint(norm(tr)) and len(ev) >= 1
    # with text de-duplication the second (same sentences, same speaker) collapses
    rep2 = merge_datasets([tmp_path / "p1", tmp_path / "p2"], tmp_path / "all2", progress=False)
    assert len(rep2["clips"]) == 5
    assert {x["reason"] for x in rep2["merge"]["removed"]} == {"duplicate_text"}


def test_merge_refuses_bad_inputs_and_writes_nothing(tmp_path, speech_bank):
    t = list(speech_bank)
    a = make_ds(tmp_path / "a", [(f"{i}.wav", speech_bank[s], s) for i, s in enumerate(t[:2])])
    with pytest.raises(DataError, match="at least two"):
        merge_datasets([a], tmp_path / "o")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="neither"):
        merge_datasets([a, tmp_path / "empty"], tmp_path / "o")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "metadata_train.csv").write_text("file;words\nx.wav;hi\n")
    with pytest.raises(DataError, match="delimiter"):
        merge_datasets([a, bad], tmp_path / "o")
    assert not (tmp_path / "o").exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    with pytest.raises(DataError, match="not empty"):
        merge_datasets([a, a], tmp_path / "full")
    assert (tmp_path / "full" / "x").read_text() == "keep me"


def test_normalise_for_dedupe():
    assert normalise_for_dedupe("Hello,  World!") == normalise_for_dedupe("hello world")
    assert normalise_for_dedupe("Hello there") != normalise_for_dedupe("Hello where")


def test_merge_keeps_speakers_and_sentences_on_one_side_and_cites_csv_rows(tmp_path, speech_bank, espeak_clip):
    texts = list(speech_bank)
    extra = [
        "Bright stars shine over the quiet harbour.",
        "Seven ducks crossed the muddy road.",
        "Nobody expected the rain to stop so soon.",
        "The library opens early on Mondays.",
    ]
    clips = {
        t: espeak_clip(t, tmp_path / "bank" / f"x{i}.wav", voice="en-us", speed=150 + 5 * i)
        for i, t in enumerate(extra)
    }
    # no dataset_report.json anywhere: sources unknown, so only speakers and sentences can group
    a = make_ds(tmp_path / "a", [(f"{i}.wav", speech_bank[t], t) for i, t in enumerate(texts[:3])], speaker="anna")
    b = make_ds(tmp_path / "b", [(f"{i}.wav", speech_bank[t], t) for i, t in enumerate(texts[3:6])], speaker="anna")
    c = make_ds(
        tmp_path / "c",
        [("0.wav", clips[extra[0]], texts[0])]  # anna's first sentence, by ben
        + [(f"{i}.wav", clips[t], t) for i, t in enumerate(extra[1:3], start=1)],
        speaker="ben",
    )
    d = make_ds(
        tmp_path / "d",
        [(f"{i}.wav", clips[t], t) for i, t in enumerate(extra[3:])] + [("dup.wav", speech_bank[texts[4]], "copied")],
        speaker="cleo",
    )
    for seed in range(4):
        out = tmp_path / f"all{seed}"
        rep = merge_datasets([a, b, c, d], out, dedupe_text=False, seed=seed, eval_fraction=0.3, progress=False)
        assert rep["split"]["by"] == "source+speaker+text"
        tr = read_coqui_csv(out / "metadata_train.csv")
        ev = read_coqui_csv(out / "metadata_eval.csv")
        assert ev and tr
        assert {r.speaker_name for r in tr}.isdisjoint({r.speaker_name for r in ev})
        assert {normalise_for_dedupe(r.text) for r in tr}.isdisjoint({normalise_for_dedupe(r.text) for r in ev})
    # the copied clip is cited by CSV file and line, not by a folder name that two inputs could share
    (removed,) = rep["merge"]["removed"]
    assert removed["reason"] == "duplicate_audio" and removed["csv"] == str(d / "metadata_eval.csv")
    assert removed["duplicate_of"] == f"{b / 'metadata_train.csv'}:3" and removed["row"] == 2
