"""The plotting helpers (pyplot, save_png) and the training plots drawn with them."""

from __future__ import annotations

import json

from utils.plots import plot_lr_find, plot_schedule, plot_training, pyplot, save_png
from utils.runs import read_jsonl

PNG = b"\x89PNG\r\n\x1a\n"


def test_training_curves_png(tmp_path) -> None:
    assert plot_training(tmp_path) is None  # nothing to plot yet
    recs = [
        {
            "optimizer_step": s,
            "train_loss": 7 - s / 10,
            "eval_loss": 7.1 - s / 12,
            "lr": 1e-5,
            "grad_norm": 2.0,
            "train_loss_mel_ce": 6.9,
            "eval_loss_mel_ce": 7.0,
            "train_loss_text_ce": 0.1,
            "eval_loss_text_ce": None,
        }
        for s in (5, 10, 15)
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (tmp_path / "events.jsonl").write_text(json.dumps({"event": "plateau", "optimizer_step": 10}) + "\n")
    path = plot_training(tmp_path)
    assert path == tmp_path / "training_curves.png"
    assert path.read_bytes()[:8] == PNG and path.stat().st_size > 20_000
    assert not list(tmp_path.glob(".*partial"))


def test_save_png_replaces_the_file_whole_and_leaves_no_partial(tmp_path) -> None:
    plt = pyplot()
    assert plt.get_backend().lower() == "agg"
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot([0, 1, 2], [3, 1, 2])
    target = tmp_path / "figure.png"
    target.write_bytes(b"old")
    assert save_png(fig, str(target)) == target  # a str path is accepted, a Path comes back
    plt.close(fig)
    assert target.read_bytes()[:8] == PNG and target.stat().st_size > 1_000
    assert [p.name for p in tmp_path.iterdir()] == ["figure.png"]


def test_schedule_and_lr_find_plots_and_jsonl_rows(tmp_path) -> None:
    sched = plot_schedule(range(10), [1e-5 * (i + 1) for i in range(10)], tmp_path / "lr.png", title="warm-up")
    found = plot_lr_find([1e-6, 1e-5, 1e-4], [3.0, 2.0, 5.0], [3.0, 2.5, 3.5], 1e-5, tmp_path / "find.png")
    for path in (sched, found):
        assert path.read_bytes()[:8] == PNG and path.stat().st_size > 5_000
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"step": 1}\n\n{"step": 2, "loss": 0.5}\n', encoding="utf-8")
    assert read_jsonl(rows) == [{"step": 1}, {"step": 2, "loss": 0.5}]
    assert read_jsonl(tmp_path / "missing.jsonl") == []
