"""Automatic reference choice on espeak-ng clips with known defects."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.after.after_helpers import espeak, read, write
from utils.after.reference import analyse_clip, choose_references

T1 = (
    "A journey of a thousand miles begins with a single step, and every careful recording we make brings the "
    "voice a little closer to the one we hear."
)
T2 = (
    "She sells sea shells by the sea shore, while the quiet river flows past the old mill and the children laugh "
    "in the warm afternoon sun."
)


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    d = tmp_path_factory.mktemp("refs")
    clean1 = espeak(d / "clean1.wav", T1)  # ~8.3 s
    clean2 = espeak(d / "clean2.wav", T2)  # ~8.0 s
    a, sr = read(clean1)
    b, _ = read(clean2)
    rng = np.random.default_rng(0)
    half = a.size // 2
    out = {
        "clean1": (clean1, T1),
        "clean2": (clean2, T2),
        "short": (espeak(d / "short.wav", "Hello there, my friend."), "Hello there, my friend."),
        "long": (espeak(d / "long.wav", f"{T1} {T2}"), f"{T1} {T2}"),  # ~16 s
        "fast": (espeak(d / "fast.wav", f"{T1} {T2}", speed=330), f"{T1} {T2}"),  # ~8 s at twice the rate
        "clipped": (write(d / "clipped.wav", np.clip(a * 8.0, -1.0, 1.0), sr), T1),
        "noisy": (write(d / "noisy.wav", np.clip(b + rng.normal(0, 0.05, b.size), -1, 1).astype(np.float32), sr), T2),
        "paused": (
            write(d / "paused.wav", np.concatenate([a[:half], np.zeros(int(2.5 * sr), np.float32), a[half:]]), sr),
            T1,
        ),
    }
    return out


def test_clean_clips_in_range_are_chosen_and_each_defect_is_named(clips):
    choice = choose_references(clips.values(), count=2, language="en")
    by_name = {c.path.stem: c for c in choice.candidates}
    assert {c.path.stem for c in choice.chosen} == {"clean1", "clean2"}
    assert all(not c.problems for c in choice.chosen)
    assert 6.0 <= by_name["clean1"].duration <= 12.0
    expected = {
        "short": "duration",
        "long": "duration",
        "fast": "speaking rate",
        "clipped": "clipping",
        "noisy": "SNR",
        "paused": "pause",
    }
    for name, word in expected.items():
        problems = " | ".join(by_name[name].problems)
        assert word in problems, (name, problems)
    assert by_name["clipped"].clipped_fraction > 0.01 and by_name["clean1"].clipped_fraction == 0.0
    assert by_name["noisy"].snr_db < 25 < by_name["clean2"].snr_db
    assert by_name["paused"].longest_pause == pytest.approx(2.5, abs=0.3)
    assert by_name["fast"].chars_per_s > 1.5 * by_name["clean1"].chars_per_s
    assert "2 clip(s) meet every criterion" in choice.note


def test_degrades_to_the_best_available_and_says_why(clips):
    pool = [clips[k] for k in ("short", "clipped", "noisy")]
    choice = choose_references(pool, count=1, language="en")
    # The clipped and noisy clips are in range but defective; the short one is only too short:
    # all miss one criterion, so the one closest to 6-12 s with the better quality wins.
    assert len(choice.chosen) == 1
    assert "only 0 of 3" in choice.note and "chosen clips miss" in choice.note
    shorts = choose_references([clips["short"]], count=3, language="en")
    assert [c.path.stem for c in shorts.chosen] == ["short"]
    assert "no training clip is 6 s or longer" in shorts.note


def test_speech_measures_of_a_clean_clip(clips):
    facts = analyse_clip(*clips["clean1"], language="en")
    assert facts.speech_fraction > 0.8
    assert facts.longest_pause < 0.5
    assert facts.leading_silence < 0.3 and facts.trailing_silence < 0.6
    assert 8 < facts.chars_per_s < 20  # espeak at 160 wpm: ~14 letters/s


def test_run_rows_choose_from_the_demo_run(en_run):
    from utils.after.reference import choose_references_for_run, run_rows

    rows = run_rows(en_run, "train")
    assert len(rows) == 10
    choice = choose_references_for_run(en_run, count=3)
    assert len(choice.chosen) == 3
    # The demo clips are 2-5 s: the three longest are chosen and the note says so.
    longest = sorted(rows, key=lambda r: -__import__("soundfile").info(str(r.path)).duration)[:3]
    assert {c.path for c in choice.chosen} == {r.path for r in longest}
    assert "no training clip is 6 s or longer" in choice.note
