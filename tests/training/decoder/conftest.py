"""Shared fixtures of the decoder stage's tests: demo rows and one latent cache for the session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import read_demo_samples


@pytest.fixture(scope="session")
def decoder_rows(demo_en: Path) -> tuple[list[dict], list[dict]]:
    """Three training clips and one held-out clip of the English demo (short runs on a CPU)."""
    return read_demo_samples(demo_en / "metadata_train.csv")[:3], read_demo_samples(demo_en / "metadata_eval.csv")[:1]


@pytest.fixture(scope="session")
def latent_model(tiny_base: Path):
    """The tiny base's files and the model that computes the decoder's inputs."""
    from utils.training.decoder.latents import GPTModelFiles, build_latent_model

    files = GPTModelFiles.locate(tiny_base)
    return files, build_latent_model(files)


@pytest.fixture(scope="session")
def decoder_cache(tmp_path_factory: pytest.TempPathFactory, latent_model, decoder_rows):
    """A clip cache holding the decoder inputs of ``decoder_rows``, and the first pass's reports."""
    from utils.training.decoder.latents import prepare_latent_cache

    files, model = latent_model
    cache = tmp_path_factory.mktemp("decoder") / ".clip_cache"
    train = prepare_latent_cache(model, decoder_rows[0], cache, files)
    held_out = prepare_latent_cache(model, decoder_rows[1], cache, files)
    return cache, train, held_out
