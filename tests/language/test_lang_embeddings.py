"""Embedding resize on Coqui's GPT: old rows bit-identical, new rows at the pretrained scale; warm-up."""

from __future__ import annotations

import pytest
import torch
from TTS.tts.layers.xtts.gpt import GPT

from utils.errors import LanguageError
from utils.language.embeddings import NewTokenWarmup, resize_text_embeddings

OLD, NEW, DIM = 400, 750, 64


def _pretrained_like_gpt() -> GPT:
    torch.manual_seed(0)
    gpt = GPT(
        layers=1,
        model_dim=DIM,
        heads=4,
        number_text_tokens=OLD,
        start_text_token=3,
        stop_text_token=0,
        max_text_tokens=60,
        max_mel_tokens=60,
        max_prompt_tokens=20,
        num_audio_tokens=1026,
        start_audio_token=1024,
        stop_audio_token=1025,
        use_perceiver_resampler=True,
    )
    with torch.no_grad():  # pretrained XTTS rows are small and offset, unlike N(0, 1)
        gpt.text_embedding.weight.normal_(0.0, 0.02).add_(torch.linspace(-0.05, 0.05, DIM))
        gpt.text_head.weight.normal_(0.01, 0.03)
        gpt.text_head.bias.normal_(-0.5, 0.1)
    return gpt


def test_old_rows_bit_identical_and_new_rows_at_pretrained_scale():
    gpt = _pretrained_like_gpt()
    emb0, head0, bias0 = (
        t.detach().clone() for t in (gpt.text_embedding.weight, gpt.text_head.weight, gpt.text_head.bias)
    )
    info = resize_text_embeddings(gpt, NEW, seed=0)
    assert (info.old_num_tokens, info.new_num_tokens, info.num_added) == (OLD, NEW, NEW - OLD)
    assert gpt.number_text_tokens == NEW
    assert gpt.text_embedding.weight.shape == (NEW, DIM) and gpt.text_head.weight.shape == (NEW, DIM)
    assert gpt.text_head.bias.shape == (NEW,)
    assert torch.equal(gpt.text_embedding.weight[:OLD], emb0)
    assert torch.equal(gpt.text_head.weight[:OLD], head0)
    assert torch.equal(gpt.text_head.bias[:OLD], bias0)
    new_emb = gpt.text_embedding.weight[OLD:].detach()
    # per-column mean and std follow the pretrained rows (the linspace offset survives)
    assert torch.allclose(new_emb.mean(0), emb0.mean(0), atol=0.005)
    assert torch.allclose(new_emb.std(0), emb0.std(0), rtol=0.25)
    assert abs(new_emb.std().item() - emb0.std().item()) < 0.005
    assert new_emb.std().item() < 0.1  # not N(0, 1)
    new_head = gpt.text_head.weight[OLD:].detach()
    assert abs(new_head.mean().item() - 0.01) < 0.005 and abs(new_head.std().item() - 0.03) < 0.005
    assert torch.allclose(gpt.text_head.bias[OLD:], bias0.mean().expand(NEW - OLD))
    # new rows differ from each other (distinct tokens are distinguishable from step 0)
    assert torch.cdist(new_emb[:10], new_emb[:10]).fill_diagonal_(1).min() > 0.05


def test_resize_is_seeded_and_refuses_to_shrink():
    a, b = _pretrained_like_gpt(), _pretrained_like_gpt()
    resize_text_embeddings(a, NEW, seed=3)
    resize_text_embeddings(b, NEW, seed=3)
    assert torch.equal(a.text_embedding.weight, b.text_embedding.weight)
    with pytest.raises(LanguageError, match="cannot shrink"):
        resize_text_embeddings(a, OLD)
    assert resize_text_embeddings(a, NEW).num_added == 0


def test_resized_gpt_runs_with_new_ids():
    gpt = _pretrained_like_gpt()
    resize_text_embeddings(gpt, NEW)
    text = torch.tensor([[4, 5, NEW - 1, OLD, 2]])
    emb = gpt.text_embedding(text) + gpt.text_pos_embedding(text)
    logits = gpt.text_head(gpt.final_norm(emb))
    assert logits.shape == (1, 5, NEW) and torch.isfinite(logits).all()


def test_warmup_trains_only_new_rows_then_everything():
    gpt = _pretrained_like_gpt()
    resize_text_embeddings(gpt, NEW)
    other = gpt.final_norm.weight
    snapshot = {n: p.detach().clone() for n, p in gpt.named_parameters()}
    warmup = NewTokenWarmup(gpt, first_new_id=OLD, steps=3)
    warmup.start()
    opt = torch.optim.AdamW([p for p in gpt.parameters()], lr=1e-2, weight_decay=0.1)
    ids = torch.tensor([[5, 17, OLD + 1, NEW - 2, 2, 3]])

    def step():
        opt.zero_grad()
        emb = gpt.text_embedding(ids)
        loss = torch.nn.functional.cross_entropy(gpt.text_head(gpt.final_norm(emb))[0], ids[0].flip(0))
        loss.backward()
        opt.step()

    for done in range(1, 4):
        step()
        warmup.after_step(done)
        if done < 3:
            assert warmup.active
    assert not warmup.active
    params = dict(gpt.named_parameters())
    for name in ("text_embedding.weight", "text_head.weight", "text_head.bias"):
        assert torch.equal(params[name][:OLD], snapshot[name][:OLD]), name  # despite weight decay
        assert not torch.equal(params[name][OLD:], snapshot[name][OLD:]), name
    assert torch.equal(other, snapshot["final_norm.weight"])
    assert all(p.requires_grad for p in gpt.parameters())
    step()  # after the warm-up everything trains
    assert not torch.equal(gpt.final_norm.weight, snapshot["final_norm.weight"])
    assert not torch.equal(gpt.text_embedding.weight[5], snapshot["text_embedding.weight"][5])
