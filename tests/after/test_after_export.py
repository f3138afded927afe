"""Export: compact folder, loads with Coqui's own Xtts API and TTS.api, English and Amharic."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from utils.errors import DataError


def _coqui_load(model_dir: Path):
    from TTS.tts.configs.xtts_config import XttsConfig
    from TTS.tts.models.xtts import Xtts

    config = XttsConfig()
    config.load_json(str(model_dir / "config.json"))
    model = Xtts.init_from_config(config)
    model.load_checkpoint(config, checkpoint_dir=str(model_dir), eval=True)  # strict=True
    return model


def test_export_folder_is_compact_and_complete(en_run, en_export):
    files = {p.name for p in en_export.iterdir()}
    assert {"model.pth", "config.json", "vocab.json", "README.txt", "export_info.json", "reference"} <= files
    data = torch.load(en_export / "model.pth", map_location="cpu", weights_only=True)
    assert set(data) == {"model"}  # no optimizer, scheduler, config
    keys = list(data["model"])
    for prefix in ("xtts.", "dvae.", "torch_mel_spectrogram", "gpt.gpt_inference.", "gpt.gpt.wte."):
        assert not any(k.startswith(prefix) for k in keys), prefix
    assert any(k.startswith("hifigan_decoder.speaker_encoder.") for k in keys)
    ckpt_size = (en_run / "best_model.pth").stat().st_size
    assert (en_export / "model.pth").stat().st_size < 0.4 * ckpt_size  # the DVAE and optimizer state are gone
    config = json.loads((en_export / "config.json").read_text())
    assert config["model"] == "xtts" and "en" in config["languages"]
    assert config["model_args"]["tokenizer_file"] == ""
    info = json.loads((en_export / "export_info.json").read_text())
    assert len(info["references"]) == 3 and all((en_export / r).is_file() for r in info["references"])
    assert "duration" in info["reference_choice"]["note"] or "criterion" in info["reference_choice"]["note"]
    readme = (en_export / "README.txt").read_text()
    assert "scripts/synthesize.py --model" in readme and "load_checkpoint" in readme


def test_export_loads_and_synthesizes_with_coqui_xtts_api(en_export):
    model = _coqui_load(en_export)
    ref = str(en_export / "reference" / "ref_01.wav")
    torch.manual_seed(0)
    out = model.synthesize("Hello there.", speaker_wav=ref, language="en", max_new_tokens=8)
    wav = np.asarray(out["wav"])
    # at most 8 audio codes of 1024 samples at 22.05 kHz each, decoded at 24 kHz
    assert wav.ndim == 1 and 0 < wav.size <= 8 * 1024 * 24000 / 22050 + 1
    assert np.isfinite(wav).all()


def test_export_loads_through_tts_api(en_export):
    from TTS.api import TTS

    tts = TTS(model_path=str(en_export), config_path=str(en_export / "config.json"))
    wav = tts.tts(
        "Hello there.", speaker_wav=str(en_export / "reference" / "ref_01.wav"), language="en", max_new_tokens=8
    )
    assert len(wav) > 1024 and np.isfinite(np.asarray(wav)).all()


def test_amharic_export_needs_only_the_registration_call(am_run, am_export):
    from TTS.api import TTS

    from utils.language import use_toolkit_tokenizer

    config = json.loads((am_export / "config.json").read_text())
    assert "am" in config["languages"]
    assert (am_export / "vocab.json").read_bytes() == (am_run / "vocab.json").read_bytes()  # the extended vocab
    readme = (am_export / "README.txt").read_text()
    assert "use_toolkit_tokenizer" in readme
    model = _coqui_load(am_export)
    ref = str(am_export / "reference" / "ref_01.wav")
    with pytest.raises(NotImplementedError):  # Coqui's own tokenizer does not know Amharic
        model.synthesize("ሰላም ለዓለም።", speaker_wav=ref, language="am", max_new_tokens=5)
    use_toolkit_tokenizer(model, am_export / "vocab.json")
    out = model.synthesize("ሰላም ለዓለም።", speaker_wav=ref, language="am", max_new_tokens=5)
    assert np.asarray(out["wav"]).size > 0
    tts = TTS(model_path=str(am_export), config_path=str(am_export / "config.json"))
    use_toolkit_tokenizer(tts.synthesizer.tts_model, am_export / "vocab.json")
    wav = tts.tts("ሰላም ለዓለም። ዛሬ የአየር ሁኔታው በጣም ጥሩ ነው።", speaker_wav=ref, language="am", max_new_tokens=5)
    assert len(wav) > 1024


def test_export_run_default_folder_is_replaced_on_a_second_call(en_run):
    from utils.after.export import export_run

    first = export_run(en_run)
    (first / "stale.txt").write_text("x")
    second = export_run(en_run)  # the run's own export (end of training, then again by hand)
    assert first == second == en_run / "export"
    assert not (second / "stale.txt").exists() and (second / "model.pth").is_file()
    assert not [p for p in en_run.iterdir() if p.name.startswith(".export.tmp")]


def test_run_folder_synthesizes_with_references_chosen_from_its_training_rows(en_run):
    from utils.after.synthesize import SynthesisOptions, load_model, synthesize

    loaded = load_model(en_run, device="cpu")
    wav = synthesize(loaded, "Hello.", options=SynthesisOptions(max_new_tokens=4, seed=0))
    assert wav.size > 0 and len(loaded.references) == 3
    assert all(p.parent.name == "wavs" for p in loaded.references)


def test_export_refuses_a_non_empty_folder_and_writes_nothing(en_run, tmp_path):
    from utils.after.export import export_model

    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty"):
        export_model(en_run / "best_model.pth", out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".taken")]


def test_export_cli_reports_size_and_prints_the_folder(en_run, tmp_path, capsys):
    from scripts.export_model import main

    ckpt = next(en_run.glob("checkpoint_*.pth"))
    assert main([str(ckpt), "--out", str(tmp_path / "m"), "--num-references", "1"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip().splitlines()[-1] == str(tmp_path / "m")
    assert " MB" in captured.err and len(list((tmp_path / "m" / "reference").iterdir())) == 1
