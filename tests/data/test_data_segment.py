"""Segmentation of word timestamps and the train/eval split."""

from __future__ import annotations

from pathlib import Path

import pytest

from utils.data.csv_io import Row
from utils.data.segment import SegmentLimits, segment_words
from utils.data.split import split_rows
from utils.data.words import Word
from utils.errors import DataError


def _words(spec):
    """spec: list of (start, end, text)."""
    return [Word(s, e, " " + t) for s, e, t in spec]


def test_sentences_with_long_pauses_become_separate_clips():
    words = _words([(0.5, 1.0, "Hello"), (1.05, 1.6, "there."), (3.5, 4.0, "General"), (4.1, 4.8, "Kenobi.")])
    segs, skipped = segment_words(words, total_s=6.0)
    assert [s.text for s in segs] == ["Hello there.", "General Kenobi."]
    assert segs[0].start == pytest.approx(0.35) and segs[0].end == pytest.approx(1.75)  # 0.15 s padding
    assert skipped == []


def test_short_neighbours_merge_and_padding_stops_at_neighbour_midpoint():
    words = _words([(0.0, 0.6, "Yes."), (0.7, 1.2, "Of"), (1.25, 1.9, "course.")])
    segs, _ = segment_words(words, total_s=2.0)
    assert len(segs) == 1 and segs[0].text == "Yes. Of course."
    assert segs[0].start == 0.0 and segs[0].end == 2.0  # clamped to the audio
    words = _words([(0.0, 2.9, "one"), (2.95, 3.0, "two."), (3.1, 6.5, "three"), (6.55, 7.0, "four.")])
    segs, _ = segment_words(words, total_s=7.0, limits=SegmentLimits(short_s=1.0, pause_s=0.05))
    assert [s.text for s in segs] == ["one two.", "three four."]
    assert segs[0].end == pytest.approx(3.05) and segs[1].start == pytest.approx(3.05)  # midpoint of 3.0..3.1


def test_long_run_is_split_at_word_boundaries_within_limits():
    # 40 words, 0.5 s each, no punctuation and no pauses: 20 s of speech
    words = [Word(i * 0.5, i * 0.5 + 0.45, f" w{i}" + ("," if i == 13 else "")) for i in range(40)]
    segs, skipped = segment_words(words, total_s=21.0)
    assert skipped == []
    assert all(s.duration <= 11.6 for s in segs) and len(segs) >= 2
    assert " ".join(s.text for s in segs).split() == [w.text.strip() for w in words]  # nothing lost, in order
    assert segs[0].text.endswith("w13,")  # comma preferred as the cut


def test_token_limit_splits_text():
    words = [Word(i * 0.2, i * 0.2 + 0.15, " abcdefghij") for i in range(30)]  # 6 s, 330 chars
    segs, _ = segment_words(words, total_s=7.0, limits=SegmentLimits(max_tokens=120))
    assert len(segs) >= 3 and all(len(s.text) + 1 <= 120 for s in segs)


def test_unusable_segments_are_reported_not_dropped():
    words = _words([(0.0, 0.2, "Hm."), (5.0, 17.0, "Supercalifragilistic")])
    segs, skipped = segment_words(words, total_s=18.0)
    assert segs == []
    assert [s["reason"] for s in skipped] == ["too_short", "too_long"]


def _rows(spec, texts=None):
    return [
        Row(i, f"wavs/{i}.wav", Path(f"/x/{i}.wav"), texts[i] if texts else f"sentence {i}", spk, src)
        for i, (spk, src) in enumerate(spec)
    ]


def test_split_by_source_keeps_recordings_whole_and_is_deterministic():
    rows = _rows([("a", f"rec{i % 7}") for i in range(70)])
    s1 = split_rows(rows, eval_fraction=0.1, seed=3)
    s2 = split_rows(list(reversed(rows)), eval_fraction=0.1, seed=3)
    assert s1.info["by"] == "source+text"  # one speaker: speaker dropped from the keys, and said so
    assert "speaker appears in train and eval" in s1.info["note"]
    assert {r.audio_file for r in s1.eval} == {r.audio_file for r in s2.eval}
    train_src, eval_src = {r.source for r in s1.train}, {r.source for r in s1.eval}
    assert train_src.isdisjoint(eval_src) and len(s1.eval) == 10
    assert len(s1.train) + len(s1.eval) == 70
    # a new recording later does not move the existing ones
    more = rows + _rows([("a", "rec_new")] * 10, texts=[f"new line {i}" for i in range(10)])
    s3 = split_rows(more, eval_fraction=0.1, seed=3)
    assert {r.source for r in s3.eval} <= eval_src | {"rec_new"}
    other = [split_rows(rows, eval_fraction=0.1, seed=k).info["eval_groups"] for k in range(6)]
    assert len({tuple(g) for g in other}) > 1  # the seed matters


def test_split_by_speaker_then_by_sentence_then_by_clip_with_note():
    rows = _rows([("a", "")] * 10 + [("b", "")] * 10)
    s = split_rows(rows, eval_fraction=0.2)
    assert s.info["by"] == "source+speaker+text" and len({r.speaker_name for r in s.eval}) == 1
    one = _rows([("a", "rec")] * 20)
    s = split_rows(one, eval_fraction=0.1)
    assert s.info["by"] == "text" and len(s.eval) == 2 and "source and speaker appears" in s.info["note"]
    same = _rows([("a", "rec")] * 4, texts=["Hello there."] * 4)
    s = split_rows(same, eval_fraction=0.3)
    assert s.info["by"] == "clip" and "split by clip" in s.info["note"] and len(s.eval) == 1
    tiny = _rows([("a", "rec")] * 2)
    s = split_rows(tiny, eval_fraction=0.1)
    assert len(s.eval) == 1 and len(s.train) == 1
    with pytest.raises(DataError, match="at least 2"):
        split_rows(tiny[:1])


def test_split_keeps_speakers_and_sentences_on_one_side():
    # speaker x in recordings r1 and r2; the sentence "Good morning!" said by x (r1) and by y (r3)
    spec = [("x", "r1")] * 6 + [("x", "r2")] * 6 + [("y", "r3")] * 6 + [("z", "r4")] * 6 + [("w", "r5")] * 6
    texts = [f"line {i}" for i in range(30)]
    texts[0], texts[12] = "Good morning!", "good  morning"
    rows = _rows(spec, texts)
    for seed in range(8):
        s = split_rows(rows, eval_fraction=0.2, seed=seed)
        assert s.info["by"] == "source+speaker+text"
        for key in (lambda r: r.speaker_name, lambda r: r.source, lambda r: r.text.lower().strip("!").split()):
            tr, ev = {str(key(r)) for r in s.train}, {str(key(r)) for r in s.eval}
            assert tr.isdisjoint(ev), (seed, tr & ev)
        assert 1 <= len(s.eval) < 30


def test_split_uneven_sources_eval_never_empty():
    rows = _rows([("a", "big")] * 30 + [("a", "small")] * 8)
    s = split_rows(rows, eval_fraction=0.05)
    assert len(s.eval) == 8 and {r.source for r in s.eval} == {"small"} and s.info["note"]


def test_snap_words_pulls_stretched_ends_out_of_silence():
    import numpy as np

    from utils.data.boundaries import frame_levels, snap_words

    sr = 16000
    rng = np.random.default_rng(0)
    audio = (1e-4 * rng.standard_normal(4 * sr)).astype(np.float32)
    audio[sr : 2 * sr] += 0.3 * rng.standard_normal(sr).astype(np.float32)  # "speech" 1.0-2.0 s
    words = [Word(0.9, 1.5, " a"), Word(1.5, 3.2, " b."), Word(3.3, 3.5, " c")]  # b stretched into silence
    out = snap_words(words, frame_levels(audio, sr))
    assert out[0].start == pytest.approx(0.97, abs=0.021) and out[0].end == 1.5
    assert out[1].end == pytest.approx(2.03, abs=0.021)
    assert out[2] == words[2]  # no voiced frame: unchanged


def _bursts(spec, sr=16000, total=None, seed=0):
    """Noise bursts as 'words' at known times over a -60 dB noise floor: (audio, words)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    total = total or spec[-1][1] + 1.0
    audio = (1e-3 * rng.standard_normal(int(total * sr))).astype(np.float32)
    for s, e, _ in spec:
        audio[int(s * sr) : int(e * sr)] += (0.2 * rng.standard_normal(int(e * sr) - int(s * sr))).astype(np.float32)
    return audio, total


def test_edges_go_in_measured_pauses_even_when_word_times_are_off():
    from utils.data.boundaries import frame_levels

    truth = [(0.5, 1.0, "one"), (1.04, 1.6, "two."), (2.2, 2.7, "three"), (2.74, 3.3, "four.")]
    audio, total = _bursts(truth)
    # the ASR's times are late by 0.12 s and stretch the sentence ends into the pause
    words = [Word(s + 0.12, e + 0.12 + (0.3 if t.endswith(".") else 0.0), " " + t) for s, e, t in truth]
    levels = frame_levels(audio, 16000)
    segs, skipped = segment_words(words, total_s=total, levels=levels, limits=SegmentLimits(short_s=0.5))
    assert skipped == [] and [s.text for s in segs] == ["one two.", "three four."]
    for s in segs:
        for edge in (s.start, s.end):
            assert not any(a - 0.005 < edge < b + 0.005 for a, b, _ in truth), edge
    assert segs[0].end == pytest.approx(1.6 + 0.15, abs=0.03) and segs[1].start == pytest.approx(2.2 - 0.15, abs=0.03)
    assert segs[0].margin_end == pytest.approx(0.15, abs=0.03)


def test_run_on_splits_at_the_widest_pause_and_no_pause_means_no_clip():
    from utils.data.boundaries import frame_levels

    # 24 words of 0.45 s with 40 ms gaps, one 200 ms pause after word 11: 12 s of speech
    truth, t = [], 0.3
    for i in range(24):
        truth.append((t, t + 0.45, f"w{i}"))
        t += 0.45 + (0.2 if i == 11 else 0.04)
    audio, total = _bursts(truth)
    words = [Word(s, e, " " + w) for s, e, w in truth]
    segs, skipped = segment_words(words, total_s=total, levels=frame_levels(audio, 16000))
    assert skipped == [] and [s.text.split()[-1] for s in segs] == ["w11", "w23"]
    assert truth[11][1] < segs[0].end <= truth[12][0] and segs[0].end == segs[1].start
    # without any pause (a speaker change inside continuous sound) nothing can be cut cleanly
    solid = [(0.3, 12.5, "x")]
    audio, total = _bursts(solid, total=13.0)
    words = [Word(0.3 + i * 0.5, 0.3 + i * 0.5 + 0.5, f" v{i}") for i in range(24)]
    segs, skipped = segment_words(words, total_s=total, levels=frame_levels(audio, 16000), speakers=[0] * 12 + [1] * 12)
    assert segs == [] and {s["reason"] for s in skipped} == {"no_clean_cut"}
    assert "no pause between 'v11' and 'v12'" in skipped[0]["detail"]
    segs, skipped = segment_words(words, total_s=total, levels=frame_levels(audio, 16000))
    assert segs == [] and [s["reason"] for s in skipped] == ["too_long"]


def test_two_speakers_are_never_merged():
    words = _words([(0.0, 0.5, "Yes."), (0.9, 1.4, "No."), (1.8, 2.3, "Maybe.")])
    segs, _ = segment_words(words, total_s=3.0, speakers=[0, 1, 1])
    assert [(s.text, s.speaker) for s in segs] == [("Yes.", 0), ("No. Maybe.", 1)]
    assert segs[0].end <= segs[1].start
