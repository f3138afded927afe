"""The speaking model's scorer tells speech from noise and one voice from the other, with numbers.

The GPU run of ``scripts/train_speaking_model.py`` brings its held-out wavs back and
``scripts/score_speaking_model.py`` scores them here; this checks the scorer on sets whose answer
is known: espeak-ng's own reading of the held-out sentences (intelligible, each voice its own),
the same wavs with the voices swapped (each nearer the other voice's reference) and noise.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from bench.speaking import speak_reference
from bench.speaking_data import build_speaking_dataset
from bench.speaking_score import score_folder


@pytest.fixture(scope="module")
def scored(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("speaking")
    info = build_speaking_dataset(out / "data", hours=0.01, heldout=3, n_eval=2, seed=3)
    (out / "summary.json").write_text(json.dumps({"data": info}), encoding="utf-8")
    speak_reference(info, out / "wavs" / "espeak", None)
    rows = json.loads((out / "wavs" / "espeak" / "spoken.json").read_text(encoding="utf-8"))
    a, b = info["speakers"]
    swapped, noise = [], []
    rng = np.random.default_rng(0)
    for row in rows:
        other = b if row["speaker"] == a else a
        dst = out / "wavs" / "swapped" / other / Path(row["wav"]).name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(row["wav"], dst)  # voice A's reading filed as voice B's output
        swapped.append({**row, "speaker": other, "wav": str(dst)})
        wav = out / "wavs" / "noise" / row["speaker"] / Path(row["wav"]).name
        wav.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(wav), 0.1 * rng.standard_normal(24000 * 3).astype(np.float32), 24000)
        noise.append({**row, "wav": str(wav)})
    refs = out / "wavs" / "references"
    refs.mkdir(parents=True)
    shutil.copy(rows[1]["wav"], refs / f"{a}.wav")  # voice A's own held-out reading: the right voice
    shutil.copy(rows[1]["wav"], refs / f"{b}.wav")  # the same clip for voice B: the wrong voice
    for tag, set_rows in (("swapped", swapped), ("noise", noise)):
        (out / "wavs" / tag / "spoken.json").write_text(json.dumps(set_rows), encoding="utf-8")
    return score_folder(out)


def test_espeak_itself_is_intelligible_and_each_voice_nearest_its_own_reference(scored: dict) -> None:
    s = scored["sets"]["espeak"]
    assert s["n"] == 6
    assert s["cer"] < 0.35
    voices = [v for k, v in s.items() if k.startswith("voice_")]
    assert len(voices) == 2 and all(v["nearer_own"] is True for v in voices)


def test_swapped_voices_are_nearer_the_other_reference(scored: dict) -> None:
    voices = [v for k, v in scored["sets"]["swapped"].items() if k.startswith("voice_")]
    assert len(voices) == 2 and all(v["nearer_own"] is False for v in voices)
    assert all(v["ge2e_other"] > v["ge2e_own"] + 0.05 for v in voices)


def test_noise_scores_as_unintelligible(scored: dict) -> None:
    s = scored["sets"]["noise"]
    assert s["cer"] > 0.8
    assert s["dnsmos_ovrl"] is None or s["dnsmos_ovrl"] < scored["sets"]["espeak"]["dnsmos_ovrl"]
    assert json.dumps(scored, allow_nan=False)  # the report is plain JSON (no NaN for silent output)


def test_the_reference_check_tells_the_right_voice_from_the_wrong_one(scored: dict) -> None:
    checks = scored["reference_choice"]
    (a, right), (b, wrong) = checks.items()
    assert right["right_voice"] is True and right["ge2e_own"] > right["ge2e_other"]
    assert wrong["right_voice"] is False
