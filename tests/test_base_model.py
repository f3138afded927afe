"""Base-model files: checks, the tiny base, and the download (network mocked)."""

from __future__ import annotations

import io
import json
import shutil
import urllib.error
from pathlib import Path

import pytest

from utils.base_model import REQUIRED_FILES, XTTS_V2_FILES, check_base_model, download_xtts_v2
from utils.errors import BaseModelError


def test_tiny_base_has_the_real_layout(tiny_base: Path) -> None:
    files = check_base_model(tiny_base)
    vocab = json.loads(files.vocab.read_text())
    added = {t["content"]: t["id"] for t in vocab["added_tokens"]}
    assert [added[t] for t in ("[STOP]", "[UNK]", "[SPACE]", "[START]", "[en]")] == [0, 1, 2, 3, 4]
    assert "[am]" not in added
    cfg = json.loads(files.config.read_text())
    assert cfg["model_args"]["gpt_layers"] == 2 and cfg["model_args"]["gpt_n_model_channels"] == 128


def test_tiny_base_loads_with_coqui_xtts_api(tiny_base: Path) -> None:
    from TTS.tts.configs.xtts_config import XttsConfig
    from TTS.tts.models.xtts import Xtts

    config = XttsConfig()
    config.load_json(str(tiny_base / "config.json"))
    model = Xtts(config)
    model.load_checkpoint(config, checkpoint_dir=str(tiny_base), eval=True, strict=True)
    assert model.gpt.text_embedding.num_embeddings == model.tokenizer.get_number_tokens()


def test_missing_files_named(tmp_path: Path, tiny_base: Path) -> None:
    shutil.copytree(tiny_base, tmp_path / "b")
    (tmp_path / "b" / "dvae.pth").unlink()
    with pytest.raises(BaseModelError, match=r"lacks dvae\.pth.*download_xtts_v2\.py"):
        check_base_model(tmp_path / "b")
    with pytest.raises(BaseModelError, match="does not exist"):
        check_base_model(tmp_path / "nope")


class _Response(io.BytesIO):
    def __init__(self, data: bytes, length: int | None = None):
        super().__init__(data)
        self.headers = {"Content-Length": str(len(data) if length is None else length)}


def _payload(name: str) -> bytes:
    """A file's bytes: JSON, or a real (tiny) torch file, which the safe model-file check accepts."""
    if name.endswith(".json"):
        return b'{"ok": true}'
    import torch

    buf = io.BytesIO()
    torch.save({"name": name.rsplit("/", 1)[-1], "weights": torch.arange(2560, dtype=torch.float32)}, buf)
    return buf.getvalue()


def test_download_fetches_verifies_and_skips(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def fake_urlopen(url: str, timeout: float):
        name = url.rsplit("/", 1)[1]
        calls.append(name)
        return _Response(_payload(name))

    monkeypatch.setattr("urllib.request.urlopen", fake_urlopen)
    dest = download_xtts_v2(tmp_path / "xtts", base_url="https://example.invalid/xtts")
    assert sorted(calls) == sorted(XTTS_V2_FILES)
    for name in XTTS_V2_FILES:
        assert (dest / name).read_bytes() == _payload(name)
    assert not list(dest.glob("*.part"))
    check_base_model(dest)
    calls.clear()
    download_xtts_v2(dest, base_url="https://example.invalid/xtts")  # second run: all complete
    assert calls == []


def test_download_offline_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(url: str, timeout: float):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr("urllib.request.urlopen", offline)
    with pytest.raises(BaseModelError, match="offline"):
        download_xtts_v2(tmp_path / "xtts")


def test_truncated_download_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("urllib.request.urlopen", lambda url, timeout: _Response(_payload(url), length=10_000_000))
    with pytest.raises(BaseModelError, match="got .* of 10000000 bytes"):
        download_xtts_v2(tmp_path / "xtts")
    assert not any((tmp_path / "xtts" / n).exists() for n in REQUIRED_FILES)
    assert not list((tmp_path / "xtts").glob("*.part"))
