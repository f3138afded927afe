"""The three stages through the command: DVAE -> GPT -> decoder, Ctrl-C inside the decoder stage, --continue.

One run (module fixture) on the tiny base and the demo speech, driven by ``gpt_train.main`` as a user
would: ``--stages dvae,gpt,decoder`` with small stage values (a recipe layer), the GPT stage cut by
its time limit after its first step, and a real SIGINT while the decoder stage trains (sent when its
second step is reported on the events file). ``--continue RUN`` then finishes the decoder stage
alone. The tests read what the two calls left: exit codes, events, stages.json, each stage's folder,
the export (loaded by stock coqui-tts and made to speak).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO_ROOT
from utils import cli
from utils.gpt_train import main
from utils.safe_load import load_torch_file

# The stages' values for a CPU run of a few steps each: 32-frame crops (0.37 s) and 4-frame decoder
# segments fit the 2-4 s demo clips; the LRs move a random tiny base within those steps; the decoder
# trains with the mel loss only (a discriminator step costs seconds on a CPU; the GAN is tested in
# tests/training/decoder/test_decoder_stage.py).
RECIPE = {
    "dvae_settings": {"crop_frames": 32, "crops_per_clip": 1, "heldout_clips": 2, "num_loader_workers": 0},
    "decoder_settings": {"segment_frames": 4, "segments_per_clip": 1, "eval_max_frames": 16},
}
STAGE_ARGS = [
    "--dvae-lr", "1e-4", "--dvae-epochs", "1", "--dvae-batch-size", "4",
    "--decoder-lr", "1e-3", "--decoder-epochs", "1", "--decoder-batch-size", "2", "--decoder-warmup-steps", "1000",
]  # fmt: skip


def _events(path: Path) -> list[dict]:
    from utils.events import read_events

    return [e.to_dict() for e in read_events(path)]


def _interrupt_when(path: Path, stop: threading.Event, test) -> None:
    """Send this process a real SIGINT once the events file shows the decoder's second step."""
    while not stop.is_set():
        if any(e["kind"] == "progress" and test(e) for e in _events(path)):
            os.kill(os.getpid(), signal.SIGINT)
            return
        time.sleep(0.2)


@pytest.fixture(scope="module")
def pipeline_run(tiny_base: Path, demo_en: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("stages") / "runs"
    first, second = out.parent / "events_1.jsonl", out.parent / "events_2.jsonl"
    base = out.parent / "base"  # the same files under another name (hard links: no 300 MB copy), moved later
    base.mkdir()
    for f in tiny_base.iterdir():
        os.link(f, base / f.name)
    common = ["--dataset", str(demo_en), "--base-model", str(base), "--output-path", str(out)]
    argv = [
        *common,
        "--stages",
        "dvae,gpt,decoder",
        *STAGE_ARGS,
        "--lr",
        "5e-5",
        "--batch-size",
        "2",
        "--grad-accum",
        "1",
    ]
    argv += [
        "--epochs",
        "2",
        "--max-minutes",
        "0.001",
        "--test-sentences",
        "0",
        "--no-quality-eval",
        "--logger",
        "none",
    ]
    stop = threading.Event()
    watcher = threading.Thread(
        target=_interrupt_when,
        args=(first, stop, lambda e: e.get("stage") == "decoder" and e["total_steps"] >= 2),
        daemon=True,
    )
    watcher.start()
    try:
        code_1 = cli.run(lambda a: main(a, recipe=RECIPE), [*argv, "--events-jsonl", str(first)])
    finally:
        stop.set()
        watcher.join()
    (run_dir,) = [p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")]
    after_ctrl_c = json.loads((run_dir / "stages.json").read_text())
    checkpoints = sorted(p.name for p in (run_dir / "decoder").glob("checkpoint_*.pth"))
    moved = out.parent / "models" / "xtts"  # the base model moved while the decoder stage was unfinished
    moved.parent.mkdir()
    base.rename(moved)
    with contextlib.redirect_stderr(io.StringIO()) as gone:
        code_gone = cli.run(main, ["--continue", str(run_dir)])
    after_gone = json.loads((run_dir / "stages.json").read_text())
    more = ["--base-model", str(moved), "--events-jsonl", str(second), "--logger", "tensorboard"]
    code_2 = cli.run(main, ["--continue", str(run_dir), *more])
    return {
        "run_dir": run_dir,
        "base": (base, moved),
        "gone": (code_gone, gone.getvalue(), after_gone),
        "codes": (code_1, code_2),
        "events": (_events(first), _events(second)),
        "after_ctrl_c": after_ctrl_c,
        "decoder_checkpoints": checkpoints,
    }


def _metrics(run_dir: Path, stage: str) -> list[dict]:
    from utils.runs import read_jsonl

    return read_jsonl(run_dir / ("" if stage == "gpt" else stage) / "metrics.jsonl")


def test_stages_run_in_order_and_the_decoder_goes_on_at_the_next_step_after_ctrl_c(pipeline_run) -> None:
    run_dir = pipeline_run["run_dir"]
    assert pipeline_run["codes"] == (130, 0)  # Ctrl-C, then the continued run finished
    first, second = pipeline_run["events"]
    stages_seen = [e["stage"] for e in first if e["kind"] == "progress"]
    assert stages_seen == sorted(stages_seen, key=["dvae", "gpt", "decoder"].index)  # one stage after the other
    assert stages_seen.count("dvae") == 3 and stages_seen.count("gpt") == 1  # 10 crops in 4s; the GPT's time limit
    by_name = {s["name"]: s for s in pipeline_run["after_ctrl_c"]["stages"]}
    assert [by_name[n]["state"] for n in ("dvae", "gpt", "decoder")] == ["done", "done", "running"]
    assert by_name["gpt"]["stop_reason"] == "time_limit" and by_name["decoder"]["stop_reason"] == "interrupted"
    # the Ctrl-C checkpoint holds the exact step; the continued run does only the steps after it
    (saved,) = pipeline_run["decoder_checkpoints"]
    done = int(saved.removeprefix("checkpoint_").removesuffix(".pth"))
    assert 2 <= done < 5  # 10 clips in 2s: 5 steps
    steps = [e["total_steps"] for e in second if e["kind"] == "progress"]
    assert {e["stage"] for e in second if e["kind"] == "progress"} == {"decoder"}  # finished stages are skipped
    assert steps == list(range(done + 1, 6))
    records = _metrics(run_dir, "decoder")
    assert [r["step"] for r in records] == [0, 5]  # the starting decoder, then the epoch's end: each once
    final = {s["name"]: s for s in json.loads((run_dir / "stages.json").read_text())["stages"]}
    assert all(final[n]["state"] == "done" for n in ("dvae", "gpt", "decoder"))
    assert final["decoder"]["stop_reason"] is None and final["decoder"]["best_checkpoint"] == "decoder/best_model.pth"


def test_every_stage_writes_to_the_run_s_logger_and_continue_may_switch_it(pipeline_run) -> None:
    run_dir = pipeline_run["run_dir"]
    assert not list(run_dir.glob("events.out.tfevents*"))  # --logger none: no dashboard for the GPT stage
    assert not list((run_dir / "dvae").glob("events.out.tfevents*"))  # nor for the DVAE stage
    assert list((run_dir / "decoder").glob("events.out.tfevents*"))  # --continue --logger tensorboard
    assert json.loads((run_dir / "decoder" / "config.json").read_text())["dashboard_logger"] == "tensorboard"


def test_each_new_stage_lowers_its_own_held_out_loss(pipeline_run) -> None:
    run_dir = pipeline_run["run_dir"]
    dvae = _metrics(run_dir, "dvae")
    assert [r["step"] for r in dvae] == [0, 3]  # the base DVAE, then three steps later
    assert dvae[-1]["eval_loss"] < 0.95 * dvae[0]["eval_loss"], dvae
    assert dvae[-1]["heldout_mel_mse"] < 0.95 * dvae[0]["heldout_mel_mse"]
    report = json.loads((run_dir / "dvae" / "dvae_report.json").read_text())
    assert report["weights_step"] == 3 and report["heldout"]["mel_mse_improved"] is True
    decoder = _metrics(run_dir, "decoder")
    assert decoder[-1]["eval_loss"] < 0.9 * decoder[0]["eval_loss"], decoder  # the held-out mel L1
    assert decoder[-1]["discriminator_on"] is False  # the mel-only warm start throughout
    gpt = _metrics(run_dir, "gpt")
    assert [r["step"] for r in gpt] == [1]  # stopped by its time limit after one step, evaluated there


def test_the_export_has_the_new_decoder_and_dvae_and_stock_coqui_loads_and_runs_it(pipeline_run, tiny_base) -> None:
    from TTS.api import TTS
    from TTS.tts.configs.xtts_config import XttsConfig
    from TTS.tts.models.xtts import Xtts

    export = pipeline_run["run_dir"] / "export"
    config = XttsConfig()
    config.load_json(str(export / "config.json"))
    model = Xtts(config)
    model.load_checkpoint(config, checkpoint_dir=str(export), eval=True, strict=True)
    base = load_torch_file(tiny_base / "model.pth")["model"]
    decoder = model.hifigan_decoder.state_dict()
    generator = [k for k in decoder if k.startswith("waveform_decoder.")]
    changed = [k for k in generator if not torch.equal(decoder[k], base[f"hifigan_decoder.{k}"])]
    assert len(changed) > 0.9 * len(generator)
    gpt = model.gpt.state_dict()
    assert any(not torch.equal(gpt[k], base[f"gpt.{k}"]) for k in gpt if f"gpt.{k}" in base)  # the GPT trained
    new_dvae, base_dvae = load_torch_file(export / "dvae.pth"), load_torch_file(tiny_base / "dvae.pth")
    assert sorted(new_dvae) == sorted(base_dvae)
    assert sum(not torch.equal(new_dvae[k], base_dvae[k]) for k in base_dvae) > 0.9 * len(base_dvae)
    assert torch.equal(load_torch_file(export / "mel_stats.pth"), load_torch_file(tiny_base / "mel_stats.pth"))
    info = json.loads((export / "decoder_info.json").read_text())
    assert info["held_out_mel_l1_exported"] < info["held_out_mel_l1_before"]
    reference = sorted((export / "reference").glob("*.wav"))[0]
    cond, speaker = model.get_conditioning_latents(audio_path=[str(reference)])
    wav = torch.as_tensor(model.inference("Hello there.", "en", cond, speaker, max_new_tokens=20)["wav"])
    assert wav.numel() > 1024 and torch.isfinite(wav).all() and wav.abs().max() > 0
    tts = TTS(model_path=str(export), config_path=str(export / "config.json"))
    assert type(tts.synthesizer.tts_model).__name__ == "Xtts"


def test_run_folder_stage_folders_curves_and_readers(pipeline_run) -> None:
    from utils.runs import read_stages, run_folder_of
    from utils.webui.run_view import list_runs, read_run

    run_dir = pipeline_run["run_dir"]
    assert re.fullmatch(r"xtts_ft_\d{8}-\d{6}_[0-9a-f]{6}", run_dir.name), run_dir.name  # one time stamp, one id
    for folder in (run_dir, run_dir / "dvae", run_dir / "decoder"):
        assert (folder / "events.jsonl").is_file()  # each stage's health events file, from its start
    for name, png in (("dvae", "dvae_curves.png"), ("decoder", "decoder_curves.png")):
        folder = run_dir / name
        assert folder.is_dir() and not folder.is_symlink() and run_folder_of(folder) == run_dir
        assert (folder / "config.json").is_file() and json.loads((folder / "config.json").read_text())["toolkit"]
        assert (folder / "best_model.pth").is_file() and list(folder.glob("checkpoint_*.pth"))
        assert (folder / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (folder / png).stat().st_size > 20_000
    assert (run_dir / "training_curves.png").is_file() and (run_dir / "checkpoint_1.pth").is_file()  # the GPT's
    stages = read_stages(run_dir)
    assert [(s.name, s.folder, s.metrics) for s in stages] == [
        ("dvae", "dvae", "dvae/metrics.jsonl"),
        ("gpt", "", "metrics.jsonl"),
        ("decoder", "decoder", "decoder/metrics.jsonl"),
    ]
    assert stages[0].summary["dvae"] == "dvae/dvae.pth" and stages[0].best_checkpoint == "dvae/best_model.pth"
    view = read_run(run_dir)
    assert list_runs(run_dir.parent) == [run_dir]
    lines = view.stage_lines()
    assert lines[0].startswith("dvae: done, optimizer step 3, eval loss ") and lines[1] == "gpt: done (time_limit)"
    assert lines[2].startswith("decoder: done, optimizer step 5")


def test_a_moved_base_model_is_one_line_then_found_for_the_unfinished_decoder_stage(pipeline_run) -> None:
    run_dir, (base, moved) = pipeline_run["run_dir"], pipeline_run["base"]
    code, stderr, after_gone = pipeline_run["gone"]
    assert code == 2 and stderr.splitlines() == [
        f"error: --continue {run_dir}: the base model this run trained from is gone ({base}); if it moved, say "
        f"where: --continue {run_dir} --base-model DIR (the same files, checked by size and digest)"
    ]
    assert after_gone == pipeline_run["after_ctrl_c"]  # refused before any stage started
    # the decoder stage went on (the same base files in another folder give the same latents), recorded there
    assert pipeline_run["codes"][1] == 0
    config = json.loads((run_dir / "config.json").read_text())
    assert config["toolkit"]["base_model"] == str(moved)
    assert config["model_args"]["mel_norm_file"] == str(moved / "mel_stats.pth")


def test_continue_after_every_stage_is_done_is_one_line(pipeline_run, capsys) -> None:
    code = cli.run(main, ["--continue", str(pipeline_run["run_dir"] / "decoder")])  # a stage folder names its run
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"error: every stage of {pipeline_run['run_dir']} is done (dvae, gpt, decoder)")


def test_dry_run_shows_each_stage_with_sources_and_imports_no_torch() -> None:
    code = (
        "import sys; from utils.gpt_train import main; "
        "main(['--dataset-hours','3','--dry-run','--stages','dvae,gpt,decoder','--dvae-lr','1e-5',"
        "'--decoder-max-minutes','30']); print('torch' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    *out, torch_loaded = proc.stdout.strip().splitlines()
    assert torch_loaded == "False"
    resolved = json.loads("\n".join(out))
    stages = resolved["stages"]
    assert stages["order"] == ["dvae", "gpt", "decoder"]
    assert stages["dvae"]["lr"] == {"value": 1e-5, "source": "cli (--dvae-lr)"}
    assert stages["dvae"]["epochs"]["value"] == 5 and "train_dvae_xtts.py" in stages["dvae"]["epochs"]["source"]
    assert stages["dvae"]["max_minutes"] == {"value": None, "source": "default: no limit"}
    assert stages["gpt"]["lr"] == {"value": resolved["lr"], "source": resolved["sources"]["lr"]}  # the hours table
    assert stages["decoder"]["lr_gen"]["value"] == 2e-5 and stages["decoder"]["lr_gen"]["source"].startswith("default:")
    assert stages["decoder"]["warm_start_steps"]["value"] == 500
    assert stages["decoder"]["max_minutes"] == {"value": 30.0, "source": "cli (--decoder-max-minutes)"}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("gpt,dvae", "error: --stages gpt,dvae: stages train in the order dvae, gpt, decoder, each once; use dvae,gpt"),
        ("dvae,vocoder", "error: --stages dvae,vocoder: unknown stage(s) vocoder; choose from dvae, gpt, decoder"),
    ],
)
def test_a_bad_stages_value_is_one_line_and_exit_2(value: str, message: str, capsys) -> None:
    code = cli.run(main, ["--dataset-hours", "3", "--dry-run", "--stages", value])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith(message), err
