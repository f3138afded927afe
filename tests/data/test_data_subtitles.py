"""Subtitle import: cleaning, merging, ordering, overlaps, encodings, malformed files, compressed media."""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path

import pytest

from utils.data.csv_io import read_coqui_csv
from utils.data.subtitles import clean_cue_text, import_subtitles, read_subtitles
from utils.errors import DataError


def ts(t: float, sep: str = ",") -> str:
    ms = int(round(t * 1000))
    return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d}{sep}{ms % 1000:03d}"


def write_srt(path: Path, cues, encoding="utf-8") -> Path:
    blocks = [f"{i}\n{ts(s)} --> {ts(e)}\n{t}\n" for i, (s, e, t) in enumerate(cues, start=1)]
    path.write_bytes("\n".join(blocks).encode(encoding))
    return path


@pytest.fixture(scope="module")
def media(long_recording, tmp_path_factory):
    """The known recording as an MP3 (goes through FFmpeg)."""
    wav, layout, _ = long_recording
    mp3 = tmp_path_factory.mktemp("media") / "episode.mp3"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(wav), "-ar", "44100", "-ac", "2", str(mp3)], check=True)
    return mp3, layout


def _clips(out: Path):
    report = json.loads((out / "dataset_report.json").read_text())
    rows = {
        r.audio_file: r for r in read_coqui_csv(out / "metadata_train.csv") + read_coqui_csv(out / "metadata_eval.csv")
    }
    clips = sorted(report["clips"].items(), key=lambda kv: kv[1]["start"])
    return report, [(meta, rows[name].text) for name, meta in clips]


def test_clean_cue_text():
    assert clean_cue_text("<i>Hello</i> {\\an8}world") == "Hello world"
    assert clean_cue_text("JOHN: [music] Yes, (laughs) sir.") == "Yes, sir."
    assert clean_cue_text("- Mary: Hi!\n- Where are you?") == "Hi! Where are you?"
    assert clean_cue_text("\u266a la la \u266a") == "la la"
    assert clean_cue_text("[APPLAUSE]") == "" and clean_cue_text("(sighs) ...") == ""
    assert clean_cue_text(">> Tom &amp; Jerry") == "Tom & Jerry"


def test_one_clip_per_cue_cut_at_cue_times_from_mp3(media, tmp_path):
    mp3, layout = media
    cues = [(s, e, f"<i>NARRATOR:</i> {t}") for s, e, t in layout]
    cues.insert(2, (layout[1][1] + 0.3, layout[1][1] + 1.0, "[MUSIC]"))
    srt = write_srt(tmp_path / "ep.srt", cues)
    from scripts.import_srt import main

    assert main([str(mp3), str(srt), "--out", str(tmp_path / "ds"), "--no-progress"]) == 0
    report, clips = _clips(tmp_path / "ds")
    assert [t for _, t in clips] == [t for _, _, t in layout]
    for (meta, _), (s, e, _) in zip(clips, layout):
        assert meta["start"] == pytest.approx(s - 0.1, abs=0.002) and meta["end"] == pytest.approx(e + 0.1, abs=0.002)
    src = next(iter(report["sources"].values()))
    assert [x["reason"] for x in src["skipped"]] == ["no_speech_text"]
    assert src["cues"] == 6


def test_adjacent_cues_merge_and_order_does_not_matter(media, tmp_path):
    mp3, layout = media
    halves = []
    for s, e, t in layout:  # each sentence as two cues that touch
        w = t.split()
        m = (s + e) / 2
        halves += [(s, m, " ".join(w[: len(w) // 2])), (m, e, " ".join(w[len(w) // 2 :]))]
    shuffled = halves[:]
    random.Random(1).shuffle(shuffled)
    srt = write_srt(tmp_path / "ep.srt", shuffled)
    report = import_subtitles(mp3, srt, tmp_path / "ds", progress=False)
    _, clips = _clips(tmp_path / "ds")
    assert [t for _, t in clips] == [t for _, _, t in layout]  # merged back into sentences
    assert next(iter(report["sources"].values()))["cues_out_of_order"] > 0


def test_overlapping_cues(media, tmp_path):
    mp3, layout = media
    (s0, e0, t0), (s1, e1, t1) = layout[0], layout[1]
    cues = [(s0, e0, t0), (e0 - 0.5, e0 + 0.2, "overlap small"), (s1, e1, t1), (s1 + 0.2, s1 + 12.0, "overlap huge")]
    srt = write_srt(tmp_path / "ep.srt", cues)
    report = import_subtitles(mp3, srt, tmp_path / "ds", progress=False)
    _, clips = _clips(tmp_path / "ds")
    assert [t for _, t in clips] == [f"{t0} overlap small", t1]
    skipped = next(iter(report["sources"].values()))["skipped"]
    assert [(x["reason"], x["cue"]) for x in skipped] == [("overlapping_cue", 4)]


def test_vtt_with_voices_notes_and_bad_cues(media, tmp_path):
    mp3, layout = media
    lines = ["WEBVTT", "", "NOTE made by a test", ""]
    for s, e, t in layout[:3]:
        lines += [f"{ts(s, '.')} --> {ts(e, '.')} align:start", f"<v Bob>{t}</v>", ""]
    lines += [f"{ts(5.0, '.')} --> {ts(4.0, '.')}", "backwards", ""]
    lines += [f"{ts(300.0, '.')} --> {ts(301.0, '.')}", "after the end", ""]
    vtt = tmp_path / "ep.vtt"
    vtt.write_text("\n".join(lines), encoding="utf-8")
    report = import_subtitles(mp3, vtt, tmp_path / "ds", progress=False)
    _, clips = _clips(tmp_path / "ds")
    assert [t for _, t in clips] == [t for _, _, t in layout[:3]]
    reasons = sorted(x["reason"] for x in next(iter(report["sources"].values()))["skipped"])
    assert reasons == ["invalid_timing", "outside_media"]


def test_non_utf8_subtitles(media, tmp_path):
    mp3, layout = media
    cues = [(s, e, t.replace("The", "Th\u00e9")) for s, e, t in layout]
    srt = write_srt(tmp_path / "ep.srt", cues, encoding="cp1252")
    with pytest.raises(DataError, match="not UTF-8.*--encoding cp1252"):
        import_subtitles(mp3, srt, tmp_path / "ds", progress=False)
    assert not (tmp_path / "ds").exists()
    import_subtitles(mp3, srt, tmp_path / "ds", encoding="cp1252", progress=False)
    _, clips = _clips(tmp_path / "ds")
    assert clips[0][1].startswith("Th\u00e9 quick")
    utf16 = tmp_path / "u16.srt"
    utf16.write_bytes(srt.read_bytes().decode("cp1252").encode("utf-16"))
    assert len(read_subtitles(utf16)[0]) == 5


@pytest.mark.parametrize(
    "content,match",
    [
        ("", "is empty"),
        ("\n\n  \n", "is empty"),
        ("1\n00:00:01,000 -> 00:00:02,000\nHello\n", "not a valid SRT.*line 1"),
        ("1\n00:00:01,000 --> 00:00:02,000\nHello\n\n2\nno timing here\n", "not a valid SRT.*line 5"),
        ("1\n00:00:01,000 --> 00:00:xx,000\nHello\n", "not a valid SRT.*00:00:01,000 --> 00:00:02,500"),
    ],
)
def test_empty_and_malformed_srt(content, match, media, tmp_path):
    mp3, _ = media
    srt = tmp_path / "bad.srt"
    srt.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=match):
        import_subtitles(mp3, srt, tmp_path / "ds", progress=False)
    assert not (tmp_path / "ds").exists()


def test_unreadable_media_and_cli_exit_code(media, tmp_path):
    from scripts.import_srt import main
    from utils import cli

    _, layout = media
    srt = write_srt(tmp_path / "ep.srt", layout)
    with pytest.raises(DataError, match="media file not found"):
        import_subtitles(tmp_path / "missing.mp4", srt, tmp_path / "ds", progress=False)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match="0 bytes"):
        import_subtitles(empty, srt, tmp_path / "ds", progress=False)
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(DataError, match="ffmpeg"):
        import_subtitles(junk, srt, tmp_path / "ds", progress=False)
    assert cli.run(main, [str(junk), str(srt), "--out", str(tmp_path / "ds")]) == 2
    assert not (tmp_path / "ds").exists()


def test_empty_cues_reported_with_the_file_cue_numbers(media, tmp_path):
    mp3, layout = media
    (s0, e0, t0), (s1, e1, t1), (s2, e2, t2) = layout[:3]
    srt = tmp_path / "ep.srt"
    srt.write_text(
        f"1\n{ts(s0)} --> {ts(e0)}\n{t0}\n\n2\n{ts(e0 + 0.2)} --> {ts(e0 + 0.6)}\n\n"
        f"3\n{ts(s1)} --> {ts(e1)}\n{t1}\n\n4\n{ts(e1 + 0.2)} --> {ts(e1 + 0.5)}\n   \n\n"
        f"5\n{ts(s2)} --> {ts(e2)}\n{t2} \U0001f600\n",
        encoding="utf-8",
    )
    report = import_subtitles(mp3, srt, tmp_path / "ds", progress=False)
    src = next(iter(report["sources"].values()))
    assert [(x["cue"], x["reason"]) for x in src["skipped"]] == [(2, "empty_cue"), (4, "empty_cue")]
    assert src["cues"] == 5
    _, clips = _clips(tmp_path / "ds")
    assert [t for _, t in clips] == [t0, t1, t2]  # the emoji is gone from the transcript ...
    assert [m["cues"] for m, _ in clips] == [[1], [3], [5]]
    assert report["emoji_stripped"] == [
        {"clip": next(n for n, m in report["clips"].items() if m["cues"] == [5]), "removed": "\U0001f600"}
    ]  # ... and reported
    vtt = tmp_path / "ep.vtt"
    vtt.write_text(
        f"WEBVTT\n\n{ts(s0, '.')} --> {ts(e0, '.')}\n{t0}\n\nintro\n{ts(e0 + 0.2, '.')} --> "
        f"{ts(e0 + 0.6, '.')}\n\n{ts(s1, '.')} --> {ts(e1, '.')}\n{t1}\n",
        encoding="utf-8",
    )
    cues, skipped, _ = read_subtitles(vtt)
    assert [c.index for c in cues] == [1, 3] and [(x["cue"], x["reason"]) for x in skipped] == [(2, "empty_cue")]


def test_vtt_voice_tags_become_speakers_and_overlaps_of_two_voices_are_not_merged(media, tmp_path):
    mp3, layout = media
    (s0, e0, t0), (s1, e1, t1), (s2, e2, t2), (s3, e3, t3), (s4, e4, t4) = layout
    v = lambda s, e, body: [f"{ts(s, '.')} --> {ts(e, '.')}", body, ""]  # noqa: E731
    lines = ["WEBVTT", ""]
    lines += v(s0, e0, f"<v Anna>{t0}</v>")
    lines += v(s1, (s1 + e1) / 2, f"<v.loud Ben Ray>{' '.join(t1.split()[:3])}</v>")
    lines += v((s1 + e1) / 2, e1, f"<v Anna>{' '.join(t1.split()[3:])}</v>")  # touches Ben's cue: not merged
    lines += v(s2, e2, f"<v Ben Ray>{t2}")
    lines += v(e2 - 0.8, e2 + 0.6, f"<v Anna>{'Sorry, go on.'}")  # overlaps Ben: both skipped
    lines += v(s3, e3, "<v Anna>First</v>\n<v Ben Ray>second</v>")  # two voices in one cue
    lines += v(s4, e4, t4)  # untagged: the --speaker name
    vtt = tmp_path / "talk.vtt"
    vtt.write_text("\n".join(lines), encoding="utf-8")
    report = import_subtitles(mp3, vtt, tmp_path / "ds", speaker="narrator", progress=False)
    rows = read_coqui_csv(tmp_path / "ds" / "metadata_train.csv") + read_coqui_csv(
        tmp_path / "ds" / "metadata_eval.csv"
    )
    got = sorted((report["clips"][r.audio_file]["cues"], r.speaker_name) for r in rows)
    assert got == [([1], "Anna"), ([2], "Ben Ray"), ([3], "Anna"), ([7], "narrator")]
    skipped = sorted((x["cue"], x["reason"]) for x in next(iter(report["sources"].values()))["skipped"])
    assert skipped == [(4, "overlapping_voices"), (5, "overlapping_voices"), (6, "several_voices")]
    assert report["split"]["eval_clips"] >= 1
