"""A generated two-voice interview through the real pipeline (faster-whisper tiny.en, GE2E):
clip edges between words, one voice per clip, speech kept, copies of the recording caught."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from bench.interview import edges_inside_speech, speakers_in, speech_covered
from utils.data.csv_io import read_coqui_csv
from utils.data.prepare import SpeakerPlan, prepare_dataset
from utils.data.review import read_review


def _rows(out: Path):
    return read_coqui_csv(out / "metadata_train.csv") + read_coqui_csv(out / "metadata_eval.csv")


@pytest.fixture(scope="module")
def interview_folder(interview, tmp_path_factory):
    """The interview as WAV, plus the same recording as AAC in .m4a and as .mp4 with a video track."""
    d = tmp_path_factory.mktemp("media")
    shutil.copy(interview.path, d / "a_interview.wav")
    subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-i",
            str(interview.path),
            "-ar",
            "44100",
            "-ac",
            "2",
            "-c:a",
            "aac",
            str(d / "b_copy.m4a"),
        ],
        check=True,
    )
    subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "color=c=black:s=64x64:r=5",
            "-i",
            str(interview.path),
            "-shortest",
            "-c:v",
            "libx264",
            "-c:a",
            "aac",
            "-ar",
            "48000",
            "-ac",
            "2",
            str(d / "c_copy.mp4"),
        ],
        check=True,
    )
    return d


@pytest.fixture(scope="module")
def kept_all(interview_folder, tiny_whisper, speaker_encoder, tmp_path_factory):
    out = tmp_path_factory.mktemp("ds") / "all"
    rep = prepare_dataset(
        [interview_folder],
        out,
        transcriber=tiny_whisper,
        speaker_encoder=speaker_encoder,
        speaker=SpeakerPlan(name="guest", others="keep"),
        progress=False,
    )
    return out, rep


def test_clip_edges_fall_between_words_and_each_clip_has_one_voice(kept_all, interview):
    out, rep = kept_all
    clips = sorted(rep["clips"].values(), key=lambda m: m["start"])
    edges = [e for m in clips for e in (m["start"], m["end"])]
    assert len(clips) >= 8
    assert edges_inside_speech(edges, interview.voiced) == []
    voices = [speakers_in(m["start"], m["end"], interview.voiced) for m in clips]
    assert sum(len(v) > 1 for v in voices) == 0, voices
    kept = speech_covered([(m["start"], m["end"]) for m in clips], interview.voiced)
    assert kept / interview.speech_seconds() >= 0.7
    assert all(0.5 <= m["duration"] <= 11.6 for m in clips)
    # the 19 s run-on is split in its pauses: more than one clip lies inside it
    runon = [v for v in interview.voiced if v.speaker == "guest" and " " not in v.text]
    lo, hi = runon[0].start, runon[-1].end
    assert sum(lo - 0.2 <= m["start"] and m["end"] <= hi + 0.2 for m in clips) >= 2
    # every edge's distance to the nearest voiced frame is in the report
    assert all(m["margin_start_s"] > 0 and m["margin_end_s"] > 0 for m in clips[1:-1])


def test_speakers_are_consistent_and_named(kept_all, interview):
    out, rep = kept_all
    by_name: dict[str, set[str]] = {}
    for r in _rows(out):
        m = rep["clips"][r.audio_file]
        assert m["speaker"] == r.speaker_name
        by_name.setdefault(r.speaker_name, set()).update(speakers_in(m["start"], m["end"], interview.voiced))
    # the guest speaks most, so the target name goes to the guest; the host is the other voice
    assert by_name.pop("guest") == {"guest"}
    ((other, truth),) = by_name.items()
    assert truth == {"host"} and other.startswith("guest-other1-")
    # one recording: speakers and sentences are kept apart (and the note says the recording is not)
    assert rep["split"]["by"] == "speaker+text" and "source appears in train and eval" in rep["split"]["note"]


def test_copies_in_other_containers_are_reported_and_skipped(kept_all, tiny_whisper):
    out, rep = kept_all
    dups = {Path(d["file"]).name: (Path(d["duplicate_of"]).name, d["kind"], d["similarity"]) for d in rep["duplicates"]}
    assert set(dups) == {"b_copy.m4a", "c_copy.mp4"}
    assert all(first == "a_interview.wav" and kind == "near" and sim >= 0.9 for first, kind, sim in dups.values())
    assert len(rep["sources"]) == 1 and rep["last_run"]["skipped_duplicates"] == 2
    assert tiny_whisper.runs >= 1


def test_target_only_drops_the_other_voice_with_reasons(
    interview_folder, kept_all, interview, tiny_whisper, speaker_encoder, tmp_path
):
    _, rep_all = kept_all
    out = tmp_path / "guest_only"
    rep = prepare_dataset(
        [interview_folder / "a_interview.wav"],
        out,
        transcriber=tiny_whisper,
        speaker_encoder=speaker_encoder,
        speaker="guest",
        progress=False,
    )
    rows = _rows(out)
    assert {r.speaker_name for r in rows} == {"guest"}
    assert all(
        speakers_in(rep["clips"][r.audio_file]["start"], rep["clips"][r.audio_file]["end"], interview.voiced)
        == {"guest"}
        for r in rows
    )
    dropped = [s for s in next(iter(rep["sources"].values()))["skipped"] if s["reason"] == "other_speaker"]
    n_host_all = sum(1 for r in _rows(kept_all[0]) if r.speaker_name.startswith("guest-other"))
    assert len(dropped) == n_host_all >= 3
    assert all(speakers_in(s["start"], s["end"], interview.voiced) == {"host"} for s in dropped)
    assert rep["split"]["by"] == "text"  # one recording, one speaker: only sentences can be kept apart


def test_review_file_lists_checks(kept_all):
    out, rep = kept_all
    flagged = read_review(out / "review.csv")
    assert rep["review"]["clips_checked"] == len(rep["clips"])
    assert rep["review"]["clips_flagged"] == len({f["audio_file"] for f in flagged})
    assert all(set(f) == {"audio_file", "text", "speaker", "reason", "detail"} for f in flagged)
    assert all("chars_per_s" in m["checks"] for m in rep["clips"].values())
    json.dumps(rep)  # the report stays plain JSON
