"""Training from the Train screen's handlers: a real child process on the tiny base.

Start, a second start refused, stop mid-run (a checkpoint is written), continue to the planned
end, then speak with the result and export it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import gradio as gr
import pytest
import soundfile as sf

from utils.webui.app import Screens, _rows
from utils.webui.engine import TINY_BASE, Engine
from utils.webui.jobs import ACTIVE_STATES

REPO_ROOT = Path(__file__).resolve().parents[2]


def _table(screens: Screens, edits: dict[str, str]) -> list[list[str]]:
    rows = _rows(screens.resolve("demo_en", TINY_BASE, ""))
    return [[n, edits.get(n, v), s] for n, v, s in rows]


@pytest.mark.slow  # three training processes on the tiny base: about 2-3 minutes on 2 busy cores
def test_start_refuse_stop_continue_speak_export(tmp_path: Path) -> None:
    engine = Engine(tmp_path / "data", tmp_path / "runs", cache_dir=REPO_ROOT / ".cache")
    screens = Screens(engine)
    screens.use_demo("en")
    message, _ = screens.start(
        "demo_en", TINY_BASE, "en", "", "ft", _table(screens, {"epochs": "2", "eval_every_steps": "1"})
    )
    assert "training started" in message and "epochs=2" in message
    job = engine.current_job()
    try:
        with pytest.raises(gr.Error, match="a training is already running"):
            screens.start("demo_en", TINY_BASE, "en", "", "ft2", None)
        _wait(lambda: job.run_dir is not None and (job.run_dir / "metrics.jsonl").is_file(), engine, 240)
        screens.stop()
        job = engine.jobs.wait(engine.current_job(), 120)
    finally:
        if engine.jobs.active() is not None:
            engine.stop_training()
            engine.jobs.wait(engine.current_job(), 120)
    assert job.state == "stopped", job.status
    run = job.run_dir
    steps = sorted(
        int(m.group(1)) for p in run.glob("checkpoint_*.pth") if (m := re.match(r"checkpoint_(\d+)\.pth", p.name))
    )
    assert steps and steps[-1] < 10, steps  # 2 epochs x 5 micro-batches; stopped before the end, with a checkpoint
    status = screens.refresh_train(run.name)[0]
    assert "training: stopped" in status
    message, _ = screens.continue_run(run.name, 0)
    job = engine.jobs.wait(engine.current_job(), 300)
    assert job.state == "finished", (job.status, job.log_tail())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["optimizer_step"] == 10 and (run / "checkpoint_10.pth").is_file()
    assert [r["step"] for r in rows] == sorted({r["step"] for r in rows})  # resumed records are not duplicated
    _speak_and_export(screens, run)
    _restore(screens, engine, run)


def _restore(screens: Screens, engine: Engine, run: Path) -> None:
    """A new run from checkpoint_10 with the table's edit (1 epoch): a fresh step count, the weights kept."""
    table = _table(screens, {"epochs": "1"})
    message, _ = screens.restore_run(str(run / "checkpoint_10.pth"), "", "again", "demo_en", TINY_BASE, table)
    assert "new run from checkpoint_10.pth" in message
    job = engine.jobs.wait(engine.current_job(), 300)
    assert job.state == "finished", (job.status, job.log_tail())
    new_run = job.run_dir
    assert new_run != run and new_run.name.startswith("again_")
    config = json.loads((new_run / "config.json").read_text())
    assert config["epochs"] == 1 and config["toolkit"]["restored_from"] == str(run / "checkpoint_10.pth")
    rows = [json.loads(line) for line in (new_run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["optimizer_step"] == 5  # counted afresh: 1 epoch of 5 micro-batches


def _speak_and_export(screens: Screens, run: Path) -> None:
    source, reference, language, tests, why = screens.pick_run(run.name)
    assert reference.value and Path(reference.value).parent.name == "wavs" and "automatic reference" in why
    assert language == "en" and "<audio" in tests
    wav = screens.speak(source.value, "Hello there.", "en", reference.value, 0.75, 0.85, 1.0, 0, None)
    info = sf.info(wav)
    assert info.samplerate == 24000 and info.frames > 0 and Path(wav).parent == run / "listen"
    text = screens.export(run.name, str(run / "checkpoint_10.pth"))
    folder = run / "export-10"
    assert (folder / "model.pth").is_file() and f"--model {folder}" in text
    size_mb = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e6
    assert f"({size_mb:.1f} MB)" in text


def _wait(cond, engine: Engine, timeout: float) -> None:
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        job = engine.current_job()
        if job is not None and job.state not in ACTIVE_STATES:
            raise AssertionError(f"training ended early: {job.status} {job.log_tail()}")
        time.sleep(0.5)
    raise AssertionError("timed out")
