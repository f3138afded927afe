"""The packed loss forward against Coqui's own GPT.forward: same losses, same gradients, no mask."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from utils.training.gpt import packed


def _gpt(dropout: float = 0.0):
    from TTS.tts.layers.xtts.gpt import GPT

    torch.manual_seed(0)
    gpt = GPT(
        layers=2,
        model_dim=64,
        heads=4,
        max_text_tokens=60,
        max_mel_tokens=120,
        max_prompt_tokens=70,
        number_text_tokens=300,
        num_audio_tokens=1026,
        start_audio_token=1024,
        stop_audio_token=1025,
        use_perceiver_resampler=True,
        label_smoothing=0.0,
    )
    for m in gpt.gpt.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = dropout
    gpt.gpt.config.attn_pdrop = dropout
    for block in gpt.gpt.h:
        block.attn.attn_dropout.p = dropout
    return gpt


def _batch(b: int = 5, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    text_lengths = torch.randint(3, 40, (b,), generator=g)
    text_lengths[0] = 40  # one row fills the text width, the others are padded in the middle
    wav_lengths = torch.randint(20 * 1024, 90 * 1024, (b,), generator=g)
    codes = torch.randint(0, 1024, (b, int(torch.ceil(wav_lengths.max() / 1024))), generator=g)
    text = torch.randint(1, 300, (b, int(text_lengths.max())), generator=g)
    for i, n in enumerate(text_lengths.tolist()):
        text[i, n:] = 0  # Coqui's collate pads text with zeros
    cond_idxs = torch.stack([torch.zeros(b, dtype=torch.long), torch.randint(5000, 60000, (b,), generator=g)], 1)
    return {
        "text_inputs": text,
        "text_lengths": text_lengths,
        "audio_codes": codes,
        "wav_lengths": wav_lengths,
        "cond_mels": torch.randn(b, 1, 80, 200, generator=g),
        "cond_idxs": cond_idxs,
        "cond_lens": None,
    }


def _losses_and_grads(gpt, batch: dict, forward):
    gpt.zero_grad(set_to_none=True)
    args = copy.deepcopy(batch)  # Coqui's forward divides cond_idxs in place
    loss_text, loss_mel, _ = forward(
        args.pop("text_inputs"), args.pop("text_lengths"), args.pop("audio_codes"), args.pop("wav_lengths"), **args
    )
    (loss_text + loss_mel).backward()
    grads = torch.cat([p.grad.flatten() for p in gpt.parameters() if p.grad is not None])
    return float(loss_text.detach()), float(loss_mel.detach()), grads


@pytest.mark.parametrize("with_cond_idxs", [True, False])
def test_packed_forward_gives_coquis_losses_and_gradients(with_cond_idxs):
    gpt = _gpt().train()
    batch = _batch()
    if not with_cond_idxs:
        batch["cond_idxs"] = None  # evaluation: Coqui's eval_step drops the masking
    stock = _losses_and_grads(gpt, batch, gpt.forward)
    ours = _losses_and_grads(gpt, batch, lambda *a, **k: packed.packed_forward(gpt, *a, **k))
    assert ours[0] == pytest.approx(stock[0], rel=1e-5)
    assert ours[1] == pytest.approx(stock[1], rel=1e-5)
    cosine = float(F.cosine_similarity(ours[2], stock[2], dim=0))
    assert cosine > 0.99999
    assert float((ours[2] - stock[2]).abs().max()) < 1e-5 * float(stock[2].abs().max()) + 1e-7


def test_rounded_rows_keep_coquis_losses_and_gradients():
    """Rows padded to a multiple of 16: the stack sees a rounded length, the losses and grads stay Coqui's."""
    gpt = _gpt().train()
    batch = _batch(seed=3)
    stock = _losses_and_grads(gpt, batch, gpt.forward)
    lengths = []
    hook = gpt.gpt.register_forward_pre_hook(
        lambda m, a, k: lengths.append(k["inputs_embeds"].shape[1]), with_kwargs=True
    )
    gpt._toolkit_pack_multiple = 1
    exact = _losses_and_grads(gpt, batch, lambda *a, **k: packed.packed_forward(gpt, *a, **k))
    gpt._toolkit_pack_multiple = 16
    rounded = _losses_and_grads(gpt, batch, lambda *a, **k: packed.packed_forward(gpt, *a, **k))
    hook.remove()
    # this batch packs to 158 positions, rounded to 160
    assert lengths == [158, 160]
    for ours in (exact, rounded):
        assert ours[0] == pytest.approx(stock[0], rel=1e-5) and ours[1] == pytest.approx(stock[1], rel=1e-5)
        assert float((ours[2] - stock[2]).abs().max()) < 1e-5 * float(stock[2].abs().max()) + 1e-7


def test_padding_changes_nothing_for_real_tokens():
    """A row's losses do not depend on how much padding its batch gives it."""
    gpt = _gpt().eval()
    batch = _batch(b=4)
    alone = {k: (v[1:2] if torch.is_tensor(v) else v) for k, v in batch.items()}
    alone["text_inputs"] = alone["text_inputs"][:, : int(alone["text_lengths"].max())]
    with torch.no_grad():
        lt_alone, lm_alone, _ = packed.packed_forward(gpt, **{**alone, "cond_idxs": None})
        lt_stock, lm_stock, _ = gpt.forward(**{**copy.deepcopy(alone), "cond_idxs": None})
    assert float(lt_alone) == pytest.approx(float(lt_stock), rel=1e-5)
    assert float(lm_alone) == pytest.approx(float(lm_stock), rel=1e-5)


def test_packing_order_is_a_permutation_with_real_tokens_first():
    text_real = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)
    mel_real = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    dst = packed.packing_order(2, text_real, mel_real)
    assert dst.tolist() == [[0, 1, 2, 3, 4, 7, 5, 6, 8], [0, 1, 2, 3, 7, 8, 4, 5, 6]]
    for row in dst:
        assert sorted(row.tolist()) == list(range(9))


def test_attention_runs_causal_without_a_mask(monkeypatch):
    from utils.training.gpt.kernels import train_without_kv_cache

    gpt = _gpt().train()
    train_without_kv_cache(gpt.gpt)  # as in training: no cache, so transformers would check the position ids
    seen = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(*args, **kwargs):
        seen.append((kwargs.get("attn_mask") is None, bool(kwargs.get("is_causal"))))
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    from transformers import masking_utils

    checks = []
    find = masking_utils.find_packed_sequence_indices
    monkeypatch.setattr(
        masking_utils, "find_packed_sequence_indices", lambda *a, **k: checks.append(1) or find(*a, **k)
    )
    batch = _batch()
    packed.packed_forward(gpt, **batch)
    gpt_blocks = len(gpt.gpt.h)
    assert seen.count((True, True)) == gpt_blocks  # every GPT2 block: no mask, causal (the flash path)
    assert checks == []  # no host read of the position ids (a device sync on the GPU)
    assert gpt.gpt.config._attn_implementation == "sdpa"  # restored for evaluation and synthesis
    seen.clear()
    gpt.forward(**copy.deepcopy(batch))
    assert seen.count((True, True)) == 0  # Coqui's forward passes its padding mask


def test_installed_forward_routes_latents_to_coqui():
    gpt = _gpt().eval()
    assert packed.install_packed_forward(gpt)
    batch = _batch(b=2)
    with torch.no_grad():
        latents = gpt(**{**batch, "cond_idxs": None}, return_latent=True)
        losses = gpt(**{**batch, "cond_idxs": None})
    assert latents.ndim == 3 and len(losses) == 3
