"""Registration on a real Coqui ``Xtts``: grow, install, save, reload, synthesise Amharic."""

from __future__ import annotations

import pytest
import torch

from utils.errors import LanguageError
from utils.language.embeddings import grow_xtts_text_vocab
from utils.language.tokenizer import load_tokenizer, split_sentences, use_toolkit_tokenizer

TINY = dict(
    gpt_layers=1,
    gpt_n_model_channels=64,
    gpt_n_heads=4,
    decoder_input_dim=64,
    gpt_num_audio_tokens=1026,
    gpt_start_audio_token=1024,
    gpt_stop_audio_token=1025,
    gpt_max_audio_tokens=605,
    gpt_max_text_tokens=402,
    gpt_max_prompt_tokens=70,
    gpt_use_masking_gt_prompt_approach=True,
    gpt_use_perceiver_resampler=True,
)


def _xtts(vocab):
    from TTS.tts.configs.xtts_config import XttsConfig
    from TTS.tts.layers.xtts.tokenizer import VoiceBpeTokenizer
    from TTS.tts.models.xtts import Xtts, XttsArgs

    torch.manual_seed(0)
    config = XttsConfig(model_args=XttsArgs(**TINY))
    model = Xtts(config)
    model.tokenizer = VoiceBpeTokenizer(str(vocab))
    model.init_models()
    return model


def test_grow_install_save_reload_and_synthesise_amharic(base_vocab, am_extension, tmp_path):
    from TTS.tts.models.xtts import Xtts

    model = _xtts(base_vocab)
    old = model.gpt.text_embedding.weight.detach().clone()
    with pytest.raises(LanguageError, match="rows"):
        use_toolkit_tokenizer(model, am_extension.path)  # vocab bigger than the embedding
    grow_xtts_text_vocab(model, am_extension.new_size)
    assert torch.equal(model.gpt.text_embedding.weight[: old.shape[0]], old)
    tok = use_toolkit_tokenizer(model, am_extension.path)
    assert model.tokenizer is tok and "am" in model.config.languages
    assert model.args.gpt_number_text_tokens == am_extension.new_size
    torch.save({"model": model.state_dict()}, tmp_path / "model.pth")

    # export/inference path: Coqui's loader, then our tokenizer (load_checkpoint installs a plain one)
    reloaded = Xtts(model.config)
    reloaded.load_checkpoint(
        model.config, checkpoint_path=str(tmp_path / "model.pth"), vocab_path=str(am_extension.path)
    )
    assert torch.equal(reloaded.gpt.text_embedding.weight, model.gpt.text_embedding.weight)
    use_toolkit_tokenizer(reloaded, am_extension.path)
    latent, speaker = torch.randn(1, 32, 64), torch.randn(1, 512, 1)
    text = "ዶ/ር አበበ ነገ በ3 ሰዓት ይመጣሉ። ሰላም፣ እንዴት ናችሁ፧"
    wavs = [
        reloaded.inference(chunk, "am", latent, speaker, max_new_tokens=8, do_sample=False)["wav"]
        for chunk in split_sentences(text, reloaded.tokenizer.char_limits["am"])
    ]
    assert len(wavs) == 1 and wavs[0].size > 1000 and torch.isfinite(torch.as_tensor(wavs[0])).all()


def test_plain_xtts_tokenizer_untouched(base_vocab, am_extension):
    model = _xtts(base_vocab)
    assert not hasattr(model.tokenizer, "extra_languages")
    with pytest.raises(NotImplementedError):
        model.tokenizer.encode("ሰላም", "am")
    assert "am" not in model.config.languages
    assert load_tokenizer(am_extension.path).encode("ሰላም", "am")
