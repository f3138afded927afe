"""The run folder's record of its inputs (utils/runs.py): found again from any folder, moved files named.

A run records its base model and its CSVs as absolute paths, with their sizes and digests; runs of
earlier versions recorded some of them relative to the folder they were started in. Every reader
(continue, restore, export, evaluation, synthesis) locates them through utils.runs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from utils.errors import DataError
from utils.runs import RunInputs, absolute, fingerprint, locate_recorded, started_in

REPO = Path(__file__).resolve().parents[1]
OLD_NAME = "xtts_ft_20261207-141335_c078cd-December-07-2026_02+13PM-9e7592a"  # Coqui's suffix of earlier versions


def test_the_start_folder_of_a_relative_output_path() -> None:
    run = Path("/home/me/voice/runs/xtts_ft_20261207-141335_c078cd")
    assert started_in(run, "runs") == Path("/home/me/voice")
    assert started_in(run, "voice/runs") == Path("/home/me")
    assert started_in(run, ".") == started_in(run, None) == Path("/home/me/voice/runs")
    assert started_in(run, "other") is None and started_in(run, "/abs/runs") is None and started_in(run, "../x") is None
    # absolute as recorded; relative from the start folder; inside a folder that moved, with it
    assert locate_recorded(run, "/data/a.csv", {}) == Path("/data/a.csv")
    assert locate_recorded(run, "data/a.csv", {"output_path": "runs"}) == Path("/home/me/voice/data/a.csv")
    moved = {"/home/me/base": "/mnt/models/base"}
    assert locate_recorded(run, "/home/me/base/model.pth", {}, moved) == Path("/mnt/models/base/model.pth")


def _legacy_run(root: Path) -> Path:
    """A run folder as earlier versions wrote it when started in ``root`` with relative paths."""
    shutil.copytree(REPO / "demo" / "en", root / "data")
    (root / "base").mkdir()
    (root / "base" / "config.json").write_text(json.dumps({"temperature": 0.42}), encoding="utf-8")
    run = root / "runs" / OLD_NAME
    run.mkdir(parents=True)
    toolkit = {"base_model": "base", "train_csv": "data/metadata_train.csv", "eval_csv": "data/metadata_eval.csv"}
    config = {
        "output_path": "runs",
        "model_args": {"tokenizer_file": f"runs/{OLD_NAME}/vocab.json"},
        "toolkit": toolkit,
    }
    (run / "config.json").write_text(json.dumps(config), encoding="utf-8")
    report = {split: {"csv": f"data/metadata_{split}.csv", "excluded": []} for split in ("train", "eval")}
    (run / "preflight_report.json").write_text(json.dumps(report), encoding="utf-8")
    return run


def test_readers_find_a_relative_record_from_another_folder(tmp_path: Path, monkeypatch) -> None:
    from utils.after.export import base_config_path, run_vocab
    from utils.after.reference import run_rows
    from utils.runs import read_run_config

    run = _legacy_run(tmp_path / "voice")
    (tmp_path / "voice" / "runs" / OLD_NAME / "vocab.json").write_text("{}", encoding="utf-8")
    monkeypatch.chdir(tmp_path)  # not the folder the run was started in
    config = read_run_config(run)
    assert len(run_rows(run, "train")) == 10 and len(run_rows(run, "eval")) == 2  # evaluation, export references
    assert base_config_path(config, run) == tmp_path / "voice" / "base" / "config.json"  # sampling settings
    assert run_vocab(run, config) == run / "vocab.json"
    inputs = RunInputs.read(run, f"--continue {run}")
    assert inputs.base_model() == tmp_path / "voice" / "base"
    assert inputs.data() == (tmp_path / "voice/data/metadata_train.csv", tmp_path / "voice/data/metadata_eval.csv")


def test_a_moved_input_of_an_older_run_is_named_as_recorded(tmp_path: Path, monkeypatch) -> None:
    run = _legacy_run(tmp_path / "voice")
    (tmp_path / "voice" / "base").rename(tmp_path / "models")
    monkeypatch.chdir(tmp_path)
    inputs = RunInputs.read(run, f"--continue {run}")
    with pytest.raises(DataError) as err:
        inputs.base_model()
    assert str(err.value) == (
        f"--continue {run}: the base model this run trained from is gone (base, relative to the folder the run "
        f"started in); if it moved, say where: --continue {run} --base-model DIR"
    )
    # no sizes or digests recorded: the folder given is taken as it is (with a warning)
    assert inputs.base_model("models") == tmp_path / "models"


def _recorded_run(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A run folder whose config.json records its inputs as this version does (steps.recorded_inputs)."""
    from utils.base_model import REQUIRED_FILES
    from utils.finetune import RunConfig
    from utils.finetune.steps import DataSplit, recorded_inputs

    base, data = tmp_path / "base", tmp_path / "data"
    base.mkdir()
    for i, name in enumerate(REQUIRED_FILES):
        (base / name).write_bytes(bytes([i]) * (1000 + i))
    shutil.copytree(REPO / "demo" / "en", data)
    split = DataSplit(data / "metadata_train.csv", data / "metadata_eval.csv")
    record = recorded_inputs(RunConfig.build(dataset="data", base_model="base"), SimpleNamespace(root=base), split)
    run = tmp_path / "runs" / "xtts_ft_20261207-141335_c078cd"
    run.mkdir(parents=True)
    toolkit = {"base_model": str(base), **record}
    (run / "config.json").write_text(json.dumps({"output_path": str(run.parent), "toolkit": toolkit}), encoding="utf-8")
    return run, base, data


def test_a_moved_base_model_is_checked_to_be_the_same_files(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    run, base, data = _recorded_run(tmp_path)
    toolkit = json.loads((run / "config.json").read_text())["toolkit"]
    assert toolkit["run_config"]["base_model"] == str(base) and toolkit["run_config"]["dataset"] == str(data)
    assert toolkit["base_model_files"]["model.pth"] == {
        "size": 1000,
        "sha256": fingerprint(base / "model.pth")["sha256"],
    }
    inputs = RunInputs.read(run, f"--continue {run}")
    assert inputs.base_model() == base
    base.rename(tmp_path / "moved")
    with pytest.raises(DataError) as err:
        inputs.base_model()
    message = str(err.value)
    assert "\n" not in message and f"is gone ({base})" in message
    assert message.endswith(f"--continue {run} --base-model DIR (the same files, checked by size and digest)")
    assert inputs.base_model(tmp_path / "moved") == tmp_path / "moved"
    (tmp_path / "moved" / "vocab.json").write_bytes(b"another vocabulary")
    with pytest.raises(DataError, match=r"moved: vocab\.json missing or not the file this run trained from"):
        inputs.base_model(tmp_path / "moved")


def test_moved_data_is_named_and_checked(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    run, _, data = _recorded_run(tmp_path)
    inputs = RunInputs.read(run, f"--continue {run}")
    data.rename(tmp_path / "data2")
    with pytest.raises(DataError, match=r"the data this run trained on is gone \(.*/data/metadata_train\.csv\)"):
        inputs.data()
    moved = (tmp_path / "data2" / "metadata_train.csv", tmp_path / "data2" / "metadata_eval.csv")
    assert inputs.data(moved) == moved
    with open(moved[1], "a", encoding="utf-8") as fh:
        fh.write("wavs/en_001.wav|One more row.|demo\n")
    with pytest.raises(DataError, match=r"metadata_eval\.csv missing or not the file this run trained from"):
        inputs.data(moved)
    assert absolute("x/../y") == Path.cwd() / "y"


def test_restore_takes_the_recorded_inputs_and_names_a_moved_one(tmp_path: Path, monkeypatch) -> None:
    from utils.finetune import RunConfig
    from utils.finetune.restart import RestoreSource, apply_restore_defaults

    monkeypatch.chdir(tmp_path)
    run, base, data = _recorded_run(tmp_path)
    toolkit = json.loads((run / "config.json").read_text())["toolkit"]
    src = RestoreSource(checkpoint=run / "best_model.pth", run_dir=run, toolkit=toolkit, lr=None)
    config = apply_restore_defaults(RunConfig(), src)
    assert (config.base_model, config.train_csv, config.eval_csv) == (
        base,
        data / "metadata_train.csv",
        data / "metadata_eval.csv",
    )
    base.rename(tmp_path / "moved")
    with pytest.raises(DataError) as err:
        apply_restore_defaults(RunConfig(), src)
    assert str(err.value).endswith(f"if it moved, say where: --restore {run / 'best_model.pth'} --base-model DIR")
    # a new run may take any base model: a folder given is not compared with the run's
    assert apply_restore_defaults(RunConfig(base_model="moved"), src).base_model == Path("moved")
