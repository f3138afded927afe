"""Two male voices that differ only in accent, taking turns of 14-20 s with short pauses or none at
the changes, through the real pipeline (faster-whisper tiny.en, GE2E): no clip may hold both
voices, no clip edge may fall inside a word, and nearly all the speech must be kept."""

from __future__ import annotations

import numpy as np
import pytest

from bench.interview import (
    SIMILAR_CHANGE_PAUSES,
    SIMILAR_TURNS,
    edges_inside_speech,
    make_interview,
    speakers_in,
    speech_covered,
    turns_script,
)
from utils.data.prepare import SpeakerPlan, prepare_dataset

# espeak-ng's male voice speaking American English, and its m3 variant (another male timbre):
# GE2E puts their turns closer together than the clustering threshold, so they form one cluster
SIMILAR_MALE = {"host": "en-us", "guest": "en-us+m3"}


@pytest.fixture(scope="module")
def similar_interview(tmp_path_factory):
    script = turns_script(SIMILAR_TURNS, SIMILAR_CHANGE_PAUSES, runon=True)
    return make_interview(tmp_path_factory.mktemp("similar") / "interview.wav", script, voices=SIMILAR_MALE)


def test_the_similar_interview_has_long_turns_and_changes_without_pauses(similar_interview):
    voiced = similar_interview.voiced
    changes = [k for k in range(1, len(voiced)) if voiced[k].speaker != voiced[k - 1].speaker]
    assert len(changes) == 7
    turns = np.diff([0, *[voiced[k].start for k in changes], voiced[-1].end])
    assert turns.min() >= 10.0 and turns.max() <= 24.0  # 14-20 s of speech each, plus the pauses
    pauses = [voiced[k].start - voiced[k - 1].end for k in changes]
    assert sum(p < 0.1 for p in pauses) >= 3


def test_similar_voices_are_never_mixed_in_a_clip(similar_interview, tiny_whisper, speaker_encoder, tmp_path):
    rep = prepare_dataset(
        [similar_interview.path],
        tmp_path / "ds",
        transcriber=tiny_whisper,
        speaker_encoder=speaker_encoder,
        speaker=SpeakerPlan(name="guest", others="keep"),
        progress=False,
    )
    clips = sorted(rep["clips"].values(), key=lambda m: m["start"])
    voices = [speakers_in(m["start"], m["end"], similar_interview.voiced) for m in clips]
    mixed = [(round(m["start"], 1), sorted(v)) for m, v in zip(clips, voices) if len(v) > 1]
    assert mixed == []  # one cluster and one-window changes mixed five of 17 clips
    edges = [e for m in clips for e in (m["start"], m["end"])]
    assert edges_inside_speech(edges, similar_interview.voiced) == []
    kept = speech_covered([(m["start"], m["end"]) for m in clips], similar_interview.voiced)
    assert kept / similar_interview.speech_seconds() >= 0.9
    # both voices were found, each in clips of its own
    assert {frozenset(v) for v in voices} == {frozenset({"host"}), frozenset({"guest"})}
    assert len({m["speaker"] for m in clips}) == 2
