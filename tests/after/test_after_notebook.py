"""The notebook runs end to end on the demo defaults (prepare, train, export, synthesize, evaluate)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "finetune_xtts.ipynb"


def test_notebook_executes_on_the_demo_defaults(tmp_path, monkeypatch, capsys):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    monkeypatch.setenv("XTTS_TOOLKIT_ROOT", str(NOTEBOOK.parents[1]))
    nb = nbformat.read(str(NOTEBOOK), as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    errors = [
        o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"
    ]
    assert not errors
    (run_dir,) = [p for p in (tmp_path / "runs_notebook").iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert (run_dir / "export" / "model.pth").is_file()
    assert (tmp_path / "runs_notebook" / "sample.wav").stat().st_size > 1000
    report = json.loads((run_dir / "eval" / "eval_report.json").read_text())
    assert report["best"] is not None and report["checkpoints"][0]["summary"]["similarity_xtts"] is not None
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "| checkpoint |" in text
    # the notebook's resolved configuration is the command line's for the same inputs
    from utils.gpt_train import main

    notebook_config = json.loads((tmp_path / "runs_notebook" / "resolved_config.json").read_text())
    capsys.readouterr()
    assert (
        main(
            [
                "--demo",
                "--language",
                "en",
                "--output-path",
                str(tmp_path / "runs_notebook"),
                "--test-sentences",
                "0",
                "--dry-run",
            ]
        )
        == 0
    )
    cli_config = json.loads(capsys.readouterr().out)
    assert notebook_config == cli_config
    assert notebook_config["lr"] == 5e-5 and notebook_config["sources"]["lr"] == "recipe"
    assert notebook_config["planned_optimizer_steps"] > 0 and notebook_config["speed"]["bf16"] is True
