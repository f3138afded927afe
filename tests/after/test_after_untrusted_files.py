"""A model file that pickles code is refused everywhere a user can hand one to the toolkit.

Each test plants a real payload (a pickle whose ``__reduce__`` runs a shell command that would
create a marker file) where a checkpoint or model file is expected, runs the entry point, and
checks: exit code 2, one line naming the file and the refusal, and no marker on disk.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import pytest
import torch

from utils import cli

REPO_ROOT = Path(__file__).resolve().parents[2]


class _Payload:
    """Unpickling this runs ``touch MARKER`` (what an attacker's model file would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def plant(path: Path, marker: Path) -> Path:
    """Overwrite ``path`` with a checkpoint-looking dict that carries the payload."""
    torch.save({"model": {"w": torch.zeros(2)}, "config": _Payload(marker), "optimizer": [{}]}, path)
    return path


def _script_main(name: str):
    path = REPO_ROOT / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_untrusted_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def _refused(code: int, capsys: pytest.CaptureFixture[str], marker: Path, file: Path) -> None:
    err = capsys.readouterr().err
    # (a progress bar may share the line: the error is the text from "error:" on)
    lines = [ln[ln.index("error:") :] for ln in err.replace("\r", "\n").splitlines() if "error:" in ln]
    assert code == 2, err
    assert not marker.exists(), "the payload ran"
    # the line names the refused file (for a folder: whichever of its planted files came first)
    named = file.name in lines[0] if file.is_file() and file.suffix == ".pth" else False
    named = named or (str(file.parent) in lines[0] and ".pth" in lines[0])
    assert len(lines) == 1 and "refusing to load code" in lines[0] and named, err
    assert "Traceback" not in err


@pytest.fixture()
def bad_run(en_run: Path, tmp_path: Path) -> tuple[Path, Path, Path]:
    """A copy of a finished demo run whose every checkpoint is a payload; (run, file, marker)."""
    run = Path(shutil.copytree(en_run, tmp_path / "run", ignore=shutil.ignore_patterns("export")))
    marker = tmp_path / "PWNED"
    files = sorted(run.glob("*.pth"))
    assert files
    for f in files:
        plant(f, marker)
    return run, files[-1], marker


def test_plain_load_of_the_payload_would_run_it(tmp_path: Path) -> None:
    # The test's payload is real: an unsafe load creates the marker (so the checks below can fail).
    marker = tmp_path / "PWNED"
    f = plant(tmp_path / "x.pth", marker)
    torch.load(str(f), weights_only=False)
    assert marker.exists()


def test_safe_load_refuses_and_names_the_global(tmp_path: Path) -> None:
    from utils.safe_load import UnsafeModelFileError, load_torch_file

    marker = tmp_path / "PWNED"
    f = plant(tmp_path / "x.pth", marker)
    with pytest.raises(UnsafeModelFileError, match=r"x\.pth: not a plain tensor checkpoint .*system.*refusing"):
        load_torch_file(f)
    assert not marker.exists()
    good = tmp_path / "good.pth"
    torch.save({"model": {"w": torch.ones(3)}, "step": 4, "config": {"lr": 1e-5}}, good)
    assert load_torch_file(good)["model"]["w"].sum().item() == 3.0


def test_safe_load_accepts_coqui_config_objects(tmp_path: Path) -> None:
    # Official XTTS v2 checkpoints pickle their XttsConfig: that exact class stays loadable.
    from TTS.tts.configs.xtts_config import XttsConfig

    from utils.safe_load import load_torch_file

    f = tmp_path / "official_like.pth"
    torch.save({"model": {"w": torch.ones(1)}, "config": XttsConfig()}, f)
    assert isinstance(load_torch_file(f)["config"], XttsConfig)


def test_truncated_file_is_one_line_data_error(tmp_path: Path) -> None:
    from utils.errors import DataError
    from utils.safe_load import UnsafeModelFileError, load_torch_file

    good = tmp_path / "good.pth"
    torch.save({"model": {"w": torch.ones(1000)}}, good)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[:1500])
    with pytest.raises(DataError, match="cannot read .*cut.pth.*incomplete") as info:
        load_torch_file(cut)
    assert not isinstance(info.value, UnsafeModelFileError)


def test_export_model_refuses_file_and_run(bad_run, capsys) -> None:
    run, file, marker = bad_run
    main = _script_main("export_model")
    _refused(cli.run(main, [str(file), "--out", str(run.parent / "e1")]), capsys, marker, file)
    _refused(cli.run(main, [str(run), "--out", str(run.parent / "e2")]), capsys, marker, file)
    assert not (run.parent / "e1").exists() and not (run.parent / "e2").exists()


def test_synthesize_refuses_file_run_and_export(bad_run, en_export: Path, tmp_path: Path, capsys) -> None:
    run, file, marker = bad_run
    main = _script_main("synthesize")
    out = tmp_path / "o.wav"
    for model in (file, run):
        _refused(
            cli.run(main, ["--model", str(model), "--text", "Hello.", "--language", "en", "--out", str(out)]),
            capsys,
            marker,
            file,
        )
    export = Path(shutil.copytree(en_export, tmp_path / "export"))
    plant(export / "model.pth", marker)
    code = cli.run(main, ["--model", str(export), "--text", "Hello.", "--language", "en", "--out", str(out)])
    _refused(code, capsys, marker, export / "model.pth")
    assert not out.exists()


def test_evaluate_refuses_run_and_checkpoint(bad_run, capsys) -> None:
    run, file, marker = bad_run
    main = _script_main("evaluate")
    _refused(cli.run(main, [str(run), "--no-asr"]), capsys, marker, file)
    _refused(cli.run(main, [str(run), "--checkpoints", str(file), "--no-asr"]), capsys, marker, file)


def test_gpt_train_refuses_restore_and_continue(bad_run, tiny_base: Path, demo_copy: Path, capsys) -> None:
    from utils.gpt_train import main

    run, file, marker = bad_run
    common = [
        "--base-model",
        str(tiny_base),
        "--dataset",
        str(demo_copy),
        "--language",
        "en",
        "--epochs",
        "1",
        "--output-path",
        str(run.parent / "runs"),
    ]
    _refused(cli.run(main, [*common, "--restore", str(file)]), capsys, marker, file)
    _refused(cli.run(main, ["--continue", str(run)]), capsys, marker, file)


def test_base_model_files_are_loaded_safely(tiny_base: Path, demo_copy: Path, tmp_path: Path, capsys) -> None:
    # A downloaded base folder is a user-given file too: Coqui loads dvae.pth with torch.load, whose
    # default in torch >= 2.6 is weights_only=True. The payload must not run.
    from utils.gpt_train import main

    base = Path(shutil.copytree(tiny_base, tmp_path / "base"))
    marker = tmp_path / "PWNED"
    plant(base / "dvae.pth", marker)
    code = cli.run(
        main,
        [
            "--base-model",
            str(base),
            "--dataset",
            str(demo_copy),
            "--language",
            "en",
            "--epochs",
            "1",
            "--output-path",
            str(tmp_path / "runs"),
        ],
    )
    err = capsys.readouterr().err
    assert not marker.exists(), "the payload ran"
    assert code == 2 and "dvae.pth" in err and "Traceback" not in err, err


def test_gpus_launch_passes_a_command_line_not_pickles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # --gpus N hands torch.distributed.run a command line (a recipe's values as JSON); no file the
    # workers load can run code.
    import json

    import torch.distributed.run as torch_run

    from utils.gpt_train import main

    seen: dict = {}
    monkeypatch.setattr(torch_run, "run", lambda args: seen.update(vars(args)))
    assert main(["--demo", "--gpus", "2", "--output-path", str(tmp_path)], recipe={"grad_accum": 4}) == 0
    assert seen["nproc_per_node"] == "2" and seen["standalone"]
    assert Path(seen["training_script"]).name == "gpt_train.py"
    args = seen["training_script_args"]
    assert args[:5] == ["--demo", "--gpus", "2", "--output-path", str(tmp_path)]
    assert json.loads(args[args.index("--recipe-json") + 1]) == {"grad_accum": 4}
    assert all(isinstance(a, str) for a in args) and not list(tmp_path.rglob("*.pkl"))
