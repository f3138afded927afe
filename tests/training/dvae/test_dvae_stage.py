"""The DVAE stage end to end under ToolkitTrainer: it learns, it measures itself, its dvae.pth fits the GPT stage.

One stage run (tiny base, demo speech, 2 epochs of 2 steps) is shared by the tests of this module.
Its metrics.jsonl is the toolkit trainer's: the base DVAE evaluated at step 0, then one record per
epoch, each with the held-out columns (``heldout_*``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch


@pytest.fixture(scope="module")
def stage_run(tiny_base: Path, demo_rows, tiny_stage, tmp_path_factory: pytest.TempPathFactory):
    from utils.training.dvae.stage import StageHooks, train_dvae

    train, evals = demo_rows
    run_dir = tmp_path_factory.mktemp("dvae_run")
    progress: list[dict] = []
    result = train_dvae(
        tiny_stage(epochs=2),
        train[:4],
        evals,
        run_dir,
        base_model=tiny_base,
        hooks=StageHooks(on_progress=[progress.append]),
    )
    return result, progress


def test_stage_lowers_its_heldout_loss_in_four_steps(stage_run):
    result, progress = stage_run
    assert [p["total_steps"] for p in progress] == [1, 2, 3, 4]  # 4 clips, batch 2, 2 epochs
    rows = result.rows  # the trainer's metrics.jsonl: the base DVAE at step 0, then one record per epoch
    assert [r["step"] for r in rows] == [0, 2, 4]
    base, last = rows[0], rows[-1]
    assert base["train_loss"] is None and base["heldout_changed_share"] == 0.0
    # the trainer's own held-out loss (reconstruction + commitment on the held-out windows)
    assert last["eval_loss"] < 0.9 * base["eval_loss"], (base["eval_loss"], last["eval_loss"])
    assert last["eval_recon_loss"] < base["eval_recon_loss"]
    # and the reconstruction of the whole held-out clip
    assert last["heldout_mel_mse"] < 0.95 * base["heldout_mel_mse"]
    best = min(rows, key=lambda r: r["eval_loss"])
    assert result.report["weights"] == "best" and result.report["weights_step"] == best["step"] == 4
    after = result.report["heldout"]["after"]
    assert after["eval_loss"] == pytest.approx(best["eval_loss"]) and after["mel_mse"] == pytest.approx(
        best["heldout_mel_mse"], rel=1e-4
    )  # dvae.pth holds the best evaluation's weights: measured again, the same numbers
    assert result.report["heldout"]["mel_mse_improved"] is True
    for r in rows[1:]:
        for key in ("train_loss", "train_recon_loss", "train_commitment_loss", "eval_recon_loss", "lr"):
            assert r[key] is not None and r[key] >= 0, (key, r)
        assert r["eval_loss"] == pytest.approx(r["eval_recon_loss"] + r["eval_commitment_loss"], rel=1e-4)
        assert r["train_loss"] == pytest.approx(r["train_recon_loss"] + r["train_commitment_loss"], rel=1e-4)


def test_dvae_pth_loads_strict_in_gpttrainers_layout_and_differs_from_base(stage_run, tiny_base: Path):
    from utils.safe_load import load_torch_file
    from utils.training.dvae.model import build_dvae

    result, _ = stage_run
    assert result.dvae_path == result.stage_dir / "dvae.pth" and result.stage_dir.name == "dvae"
    new = load_torch_file(result.dvae_path)
    base = load_torch_file(tiny_base / "dvae.pth")
    assert sorted(new) == sorted(base)  # the same keys as the base dvae.pth, no "dvae." prefix
    assert all(new[k].shape == base[k].shape and new[k].dtype == base[k].dtype for k in base)
    dvae = build_dvae(1024)  # GPTTrainer's arguments
    dvae.load_state_dict(new, strict=True)
    changed = [k for k in base if not torch.equal(new[k], base[k])]
    assert "encoder.0.0.weight" in changed and "decoder.6.weight" in changed  # both halves trained
    assert "codebook.embed" in changed  # the codebook followed the data (EMA on by default)
    assert not list(result.stage_dir.glob(".*partial"))


def test_metrics_file_report_and_curves(stage_run, demo_rows):
    result, _ = stage_run
    # Coqui's Trainer wrote into the stage folder itself: no dated sub-folder
    assert (result.stage_dir / "config.json").is_file() and not list(result.stage_dir.glob("*-*-*/"))
    assert sorted(p.name for p in result.stage_dir.glob("checkpoint_*.pth")) == ["checkpoint_4.pth"]
    lines = (result.stage_dir / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert rows == result.rows
    for r in rows:
        assert 1.0 <= r["heldout_perplexity"] <= 1024.0
        assert 0 <= r["heldout_unused_codes"] <= 1024
        assert r["heldout_used_codes"] + r["heldout_unused_codes"] == 1024
        # one code per 4 mel frames: 3.12 s = 68,906 samples -> 270 frames, cut to 268 -> 67 codes
        assert (r["heldout_mel_frames"], r["heldout_codes_counted"]) == (268, 67)
        assert 0.0 <= r["heldout_changed_share"] <= 1.0
    report = json.loads((result.stage_dir / "dvae_report.json").read_text())
    held = report["heldout"]
    assert held["before"]["clips"] == held["after"]["clips"] == 1
    assert held["before"]["mel_mse"] == pytest.approx(rows[0]["heldout_mel_mse"])
    share = held["changed_share"]
    assert 0.0 <= share["min"] <= share["mean"] <= share["max"] <= 1.0
    assert list(share["per_clip"]) == [demo_rows[1][0]["audio_file"]]
    assert report["settings"]["lr"] == {"value": 1e-4, "source": "set by the caller"}
    assert "train_dvae_xtts.py" in report["settings"]["grad_clip"]["source"]
    png = result.stage_dir / "dvae_curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000


def test_new_dvae_gives_the_gpt_stage_a_new_clip_cache_key(stage_run, tiny_base: Path):
    from utils.training.gpt.clip_cache import dvae_key

    result, _ = stage_run

    def gpt_config(dvae_path: Path) -> SimpleNamespace:
        args = SimpleNamespace(dvae_checkpoint=str(dvae_path), mel_norm_file=str(tiny_base / "mel_stats.pth"))
        return SimpleNamespace(model_args=args, audio=SimpleNamespace(sample_rate=22050, dvae_sample_rate=22050))

    base_key = dvae_key(gpt_config(tiny_base / "dvae.pth"))
    new_key = dvae_key(gpt_config(result.dvae_path))
    assert base_key != new_key
    assert dvae_key(gpt_config(result.dvae_path)) == new_key  # stable while the file is unchanged


def test_gpt_stage_loads_the_new_dvae_whole_and_encodes_with_it(stage_run, tiny_base: Path, demo_rows, tmp_path):
    from utils.base_model import check_base_model
    from utils.hparams import resolve
    from utils.safe_load import load_torch_file
    from utils.training.dvae.data import load_clip
    from utils.training.dvae.handoff import use_stage_dvae
    from utils.training.gpt.clip_cache import compute_dvae_codes, dvae_key
    from utils.training.gpt.config import build_config
    from utils.training.gpt.model import ToolkitGPTTrainer

    result, _ = stage_run
    hp = resolve(dataset_hours=0.01, cli={"batch_size": 2, "grad_accum": 1, "num_loader_workers": 0})
    config = build_config(hp, check_base_model(tiny_base), output_path=tmp_path, language="en")
    base_key = dvae_key(config)
    assert use_stage_dvae(config, tmp_path) is None  # no DVAE stage in this folder: the config stays
    assert use_stage_dvae(config, result.stage_dir.parent) == result.dvae_path
    assert config.model_args.dvae_checkpoint == str(result.dvae_path)
    assert config.toolkit["dvae"]["replaced"] == str(tiny_base / "dvae.pth")
    assert dvae_key(config) != base_key
    gpt = ToolkitGPTTrainer(config)  # GPTTrainer loads dvae.pth with strict=False: check every weight arrived
    new = load_torch_file(result.dvae_path)
    own = gpt.dvae.state_dict()
    assert set(own) == set(new) and all(torch.equal(own[k], new[k]) for k in new)
    wav = load_clip(demo_rows[1][0]["audio_file"])
    codes_new = compute_dvae_codes(gpt, [wav], "cpu")[0]
    gpt.dvae.load_state_dict(load_torch_file(tiny_base / "dvae.pth"), strict=True)
    codes_base = compute_dvae_codes(gpt, [wav], "cpu")[0]
    changed = float((codes_new != codes_base).double().mean())
    assert codes_new.shape == codes_base.shape and 0.0 < changed <= 1.0
    # the stage's own measure of the same clip (whole mel, no padding after it) agrees closely
    assert abs(changed - result.report["heldout"]["changed_share"]["mean"]) < 0.1


class _Payload:
    """Unpickling this runs ``touch MARKER``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_stage_refuses_an_untrusted_base_dvae_before_writing_anything(tiny_base, demo_rows, tiny_stage, tmp_path):
    from utils.safe_load import UnsafeModelFileError
    from utils.training.dvae.stage import train_dvae

    base = tmp_path / "base"
    base.mkdir()
    for name in ("model.pth", "config.json", "vocab.json", "mel_stats.pth"):
        (base / name).symlink_to(tiny_base / name)
    marker = tmp_path / "PWNED"
    torch.save({"encoder.0.0.weight": _Payload(marker)}, base / "dvae.pth")
    train, evals = demo_rows
    with pytest.raises(UnsafeModelFileError, match=r"dvae\.pth: not a plain tensor checkpoint .*refusing to load code"):
        train_dvae(tiny_stage(), train[:2], evals, tmp_path / "run", base_model=base)
    assert not marker.exists(), "the payload ran"
    assert not (tmp_path / "run").exists()
