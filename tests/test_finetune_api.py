"""The fine-tune API (utils.finetune): run configuration, the recipe object, events, front ends."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from utils import cli
from utils.errors import ConfigError
from utils.events import EventBus, EventKind, JsonlWriter, read_events
from utils.finetune import RUN_HPARAMS, FineTune, RunConfig
from utils.gpt_train import main
from utils.hparams import HYPERPARAMETERS

RECIPE = {"language": "am", "dataset_hours": 37.7, "batch_size": 3, "grad_accum": 84, "epochs": 10}


@pytest.fixture(scope="module", autouse=True)
def _import_coqui_outside_capsys() -> None:
    """transformers and Coqui's Trainer bind sys.stderr/stdout when first imported: not inside a
    capsys test, whose stream is closed afterwards (the later in-process training would write to it)."""
    import trainer  # noqa: F401
    import TTS.tts.models.xtts  # noqa: F401


def _cli_dry_run(argv: list[str], capsys: pytest.CaptureFixture[str], recipe: dict | None = None) -> dict:
    capsys.readouterr()
    assert main([*argv, "--dry-run"], recipe=recipe) == 0
    return json.loads(capsys.readouterr().out)


def test_run_config_layers_defaults_recipe_and_caller_with_sources() -> None:
    cfg = RunConfig.build(recipe=RECIPE, epochs=2, output_path="out")
    assert cfg.language == "am" and cfg.source("language") == "recipe"
    assert cfg.output_path == Path("out") and cfg.source("output_path") == "cli"
    assert cfg.source("run_name") == "default" and cfg.run_name == "xtts_ft"
    assert dict(cfg.recipe_hparams) == {"batch_size": 3, "grad_accum": 84, "epochs": 10}
    assert dict(cfg.hparams) == {"epochs": 2}
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.language = "en"  # type: ignore[misc]
    with pytest.raises(TypeError):
        cfg.hparams["lr"] = 1.0  # type: ignore[index]
    assert RunConfig.from_dict(json.loads(cfg.to_json())) == cfg
    assert cfg.replace(lr=1e-6).hparams == {"epochs": 2, "lr": 1e-6}


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        ({"learning_rate": 1e-5}, "unknown run option"),
        ({"speed": "turbo"}, "speed 'turbo'"),
        ({"speed_switches": {"warp": False}}, "unknown speed switch"),
        ({"gpus": 0}, "--gpus"),
        ({"preset": "best"}, "preset 'best'"),
    ],
)
def test_run_config_refuses_bad_values_in_one_line(values: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(needle)):
        RunConfig.build(**values)


def test_an_unknown_hyperparameter_name_is_refused_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    # every name a run takes is one the resolution knows: the two tables cannot drift apart
    assert set(RUN_HPARAMS) <= set(HYPERPARAMETERS)
    for layer in ("hparams", "recipe_hparams"):
        with pytest.raises(ConfigError, match=r"^unknown hyperparameter\(s\) lrr; known: epochs, ") as err:
            RunConfig(**{layer: {"lr": 1e-5, "lrr": 1e-5}})
        assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="unknown hyperparameter\\(s\\) lrr"):
        RunConfig.from_dict({**RunConfig.build(lr=1e-5).to_dict(), "hparams": {"lrr": 1e-5}})
    # a recipe handed to the command: one line on stderr, exit code 2, nothing else printed
    assert cli.run(lambda argv: main(argv, recipe={"lrr": 1e-5}), ["--dataset-hours", "3", "--dry-run"]) == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err.splitlines() == [out.err.strip()] and "unknown run option 'lrr'" in out.err


@pytest.mark.parametrize(
    ("argv", "values", "recipe"),
    [
        (["--dataset-hours", "37.7"], {"dataset_hours": "37.7"}, None),
        (
            ["--dataset-hours", "3", "--preset", "fast", "--speed", "low-vram", "--compile", "--no-auto-batch"],
            {
                "dataset_hours": "3",
                "preset": "fast",
                "speed": "low-vram",
                "speed_switches": {"compile": True, "auto_batch": False},
            },
            None,
        ),
        (["--epochs", "4"], {"epochs": 4}, RECIPE),
        (
            ["--demo", "--language", "am", "--lr", "1e-5", "--gpus", "2"],
            {"demo": True, "language": "am", "lr": 1e-5, "gpus": 2},
            None,
        ),
    ],
)
def test_describe_equals_the_command_lines_dry_run(argv, values, recipe, capsys) -> None:
    api = FineTune(RunConfig.build(recipe=recipe, **values)).describe()
    cli = _cli_dry_run(argv, capsys, recipe)
    assert api == cli
    if recipe:  # the recipe's values with source "recipe", the command line's over them
        assert cli["batch_size"] == 3 and cli["sources"]["batch_size"] == "recipe"
        assert cli["epochs"] == 4 and cli["sources"]["epochs"] == "cli"
        assert cli["sources"]["lr"].startswith("table row 10-40 h (37.7 h, recipe)")


def test_help_has_no_double_negatives_and_argparse_stays_in_the_command() -> None:
    out = subprocess.run(
        [sys.executable, "utils/gpt_train.py", "--help"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    ).stdout
    assert "--no-cudnn-attention" in out and "--kv-cache" in out and "--no-no-" not in out
    users = sorted(
        str(p.relative_to(REPO_ROOT)) for p in (REPO_ROOT / "utils").rglob("*.py") if "argparse" in p.read_text()
    )
    assert users == ["utils/gpt_train.py"]
    importers = [
        p for p in (REPO_ROOT / "utils").rglob("*.py") if re.search(r"^\s*(from|import) bench\b", p.read_text(), re.M)
    ]
    assert importers == []


def test_event_bus_delivers_in_order_and_survives_a_failing_subscriber(tmp_path: Path) -> None:
    seen: list[str] = []

    def broken(_event) -> None:
        raise RuntimeError("subscriber bug")

    bus = EventBus([broken, lambda e: seen.append(e.data["name"])])
    writer = JsonlWriter(tmp_path / "events.jsonl")
    unsubscribe = bus.subscribe(writer)
    bus.emit(EventKind.STAGE, name="locate_base", status="started")
    unsubscribe()
    bus.emit("stage", name="load_data", status="started")
    assert seen == ["locate_base", "load_data"]
    (event,) = read_events(tmp_path / "events.jsonl")
    assert event.kind is EventKind.STAGE and event.data == {"name": "locate_base", "status": "started"}


def test_finetune_run_reports_every_step_through_events(tiny_base: Path, tmp_path: Path) -> None:
    events = []
    cfg = RunConfig.build(
        base_model=tiny_base,
        dataset=REPO_ROOT / "demo" / "en",
        output_path=tmp_path,
        epochs=1,
        batch_size=2,
        grad_accum=1,
        lr=5e-5,
        num_loader_workers=0,
        test_sentences=0,
        export=False,
        progress=False,
        plots=False,
    )
    ft = FineTune(cfg, subscribers=[events.append, JsonlWriter(tmp_path / "events.jsonl")])
    result = ft.run()
    started = [e.data["name"] for e in events if e.kind is EventKind.STAGE and e.data["status"] == "started"]
    assert started[:1] == ["locate_base"] and started[-1] == "export"
    order = [
        "locate_base",
        "load_data",
        "prepare_language",
        "preflight",
        "resolve_hparams",
        "plan_schedule",
        "build_trainer",
        "train",
    ]
    assert [s for s in started if s in order] == order
    (run_dir,) = [e.data["path"] for e in events if e.kind is EventKind.RUN_DIR]
    assert Path(run_dir) == result.run_dir
    progress = [e.data for e in events if e.kind is EventKind.PROGRESS]
    assert len(progress) == result.total_steps == ft.schedule.total_steps == 5  # 10 demo clips, batch 2
    assert [p["step"] for p in progress] == list(range(5)) and progress[-1]["epochs"] == 1
    evaluations = [e.data for e in events if e.kind is EventKind.EVALUATION]
    assert [r["eval_loss"] for r in evaluations] == [r["eval_loss"] for r in result.records]
    assert events[-1].kind is EventKind.FINISHED and events[-1].data["optimizer_steps"] == 5
    assert len(read_events(tmp_path / "events.jsonl")) == len(events)
    record = json.loads((result.run_dir / "config.json").read_text())["toolkit"]["run_config"]
    assert RunConfig.from_dict(record) == cfg


def test_a_job_in_a_child_process_reports_its_error_through_the_event_file(tmp_path: Path) -> None:
    # the one child-process launcher: the web UI's job manager and worker (utils/webui/jobs.py, worker.py)
    from utils.webui.jobs import JobManager

    cfg = RunConfig.build(dataset=REPO_ROOT / "demo" / "en", output_path=tmp_path / "runs", progress=False)
    jobs = JobManager(tmp_path / "runs")
    job = jobs.start({"mode": "new", "config": cfg.to_dict(), "run_name": cfg.run_name})  # no base model
    job = jobs.wait(job, timeout=120)  # refused before any training
    assert job.state == "failed" and job.status["error"].startswith("no base model"), job.log_tail()
    deadline = time.monotonic() + 60
    while jobs.alive(job) and time.monotonic() < deadline:  # status.json is written just before it exits
        time.sleep(0.1)
    assert not jobs.alive(job)
    events = read_events(job.events_path)
    assert [e.kind for e in events][-1] is EventKind.ERROR
    assert events[-1].data == {"message": job.status["error"], "type": "ConfigError"}
    assert events[0].kind is EventKind.STAGE and events[0].data == {"name": "locate_base", "status": "started"}
    assert not [p for p in (tmp_path / "runs").iterdir() if not p.name.startswith(".")]  # no run folder


def test_the_amharic_recipe_is_values_for_the_same_object(capsys) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("recipe_amharic_37h", REPO_ROOT / "recipes" / "amharic_37h.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    capsys.readouterr()
    assert module.main(["--dry-run"]) == 0
    cli = json.loads(capsys.readouterr().out)
    assert cli == FineTune(RunConfig.build(recipe=module.RECIPE)).describe()
    # the header's arithmetic: the 10-40 h row, 3 x 84 = 252 samples per optimizer step
    assert cli["lr"] == 1e-5 and cli["sources"]["lr"] == "table row 10-40 h (37.7 h, recipe)"
    assert (cli["batch_size"], cli["grad_accum"], cli["epochs"]) == (3, 84, 10)
    assert cli["batch_plan"]["effective_batch"] == 252 and cli["language"] == "am"


def test_a_data_parallel_config_outside_torchrun_is_refused(tmp_path: Path) -> None:
    ft = FineTune(RunConfig.build(demo=True, gpus=2, output_path=tmp_path, progress=False))
    with pytest.raises(ConfigError, match="torchrun --nproc_per_node N"):
        ft.prepare()
    assert not any(tmp_path.iterdir())  # refused before anything was written
