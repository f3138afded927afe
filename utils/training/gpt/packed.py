"""The XTTS GPT's loss forward with packed sequences: causal attention with no mask, no per-row loops.

Coqui's ``GPT.forward`` lays each row out as ``[prompt | text + padding | audio codes + padding]``
and hides the text padding from the audio tokens with an explicit attention mask. With a mask,
PyTorch's SDPA cannot use the flash kernel (and cannot skip the upper triangle); the mask and the
loss targets are also built by Python loops over the batch (about five small GPU writes per row),
and transformers checks the mask's values on the host (a device sync) in every forward.

The GPT2 stack of XTTS has no position embeddings of its own (``build_hf_gpt_transformer``
replaces ``wpe`` with zeros; text and audio get their learned positions before the stack), so a
token's output depends only on which tokens it may attend to, not on where they sit. Here each
row is rearranged to ``[prompt | real text | real audio | all padding]``: every real token then
sees exactly the tokens it saw under Coqui's mask, and plain causal attention (``is_causal``,
the flash kernel) computes the same outputs for them. The outputs are put back in Coqui's layout
before the final norm and the heads, and the losses are computed as Coqui computes them
(cross-entropy, ignore index -1, label smoothing). Padding positions give other (ignored) values.

Everything is computed from the lengths with tensor operations; the only host reads are the two
maximum lengths (free when the lengths stay on the CPU, the ``host_lengths`` lever) and the last
row's conditioning span. Calls that ask for attentions or latents, or for a GPT without the
perceiver prompt, go to Coqui's own forward.

Coqui masks the loss of the conditioning segment for the batch's last row only (its loop variable
``idx`` is reused after the loop); that is kept, so the losses match Coqui's exactly
(``tests/training/gpt/test_packed_forward.py``).
"""

from __future__ import annotations

import types
from typing import Any

import torch
import torch.nn.functional as F

from utils.training import compat


def install_packed_forward(gpt: Any, *, multiple: int = 1) -> bool:
    """Route ``gpt``'s loss forwards (training and evaluation) through :func:`packed_forward`.

    ``multiple`` > 1 pads each packed row at its end to a multiple of that many positions (see
    :func:`packed_logits`). Returns False (nothing changed) for a GPT this does not cover (no
    perceiver resampler).
    """
    gpt._toolkit_pack_multiple = max(1, int(multiple))
    if getattr(gpt, "_toolkit_packed", False):
        return True
    if not getattr(gpt, "use_perceiver_resampler", False):
        return False
    stock = gpt.forward

    def forward(self: Any, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("return_attentions") or kwargs.get("return_latent") or len(args) > 8:
            return stock(*args, **kwargs)
        return packed_forward(self, *args, **kwargs)

    # Coqui builds the GPT inside GPTTrainer (not ours to subclass): this instance gets the routing forward
    compat.replace_forward(gpt, types.MethodType(forward, gpt))
    gpt._toolkit_packed = True
    return True


def _to(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small host tensor on ``device`` without waiting for the GPU (pinned, asynchronous copy)."""
    if t.device == device:
        return t
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def packed_forward(
    gpt: Any,
    text_inputs: torch.Tensor,
    text_lengths: torch.Tensor,
    audio_codes: torch.Tensor,
    wav_lengths: torch.Tensor,
    cond_mels: torch.Tensor | None = None,
    cond_idxs: torch.Tensor | None = None,
    cond_lens: torch.Tensor | None = None,
    cond_latents: torch.Tensor | None = None,
    return_attentions: bool = False,
    return_latent: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss_text, loss_mel, mel_logits)`` as Coqui's ``GPT.forward`` returns them (see module doc)."""
    del cond_lens, return_attentions, return_latent  # the prompt mask is all ones in get_logits; routed before
    device = text_inputs.device
    code_lengths = torch.ceil(wav_lengths / gpt.code_stride_len).long() + 3
    max_text_len, max_mel_len = int(text_lengths.max()), int(code_lengths.max())
    if max_mel_len > audio_codes.shape[-1]:
        audio_codes = F.pad(audio_codes, (0, max_mel_len - audio_codes.shape[-1]))
    text = F.pad(text_inputs[:, :max_text_len], (0, 1), value=gpt.stop_text_token)
    codes = F.pad(audio_codes[:, :max_mel_len], (0, 1), value=gpt.stop_audio_token)
    text_len, code_len = _to(text_lengths, device).long(), _to(code_lengths, device)
    # set_mel_padding: the zero codes after each clip become the stop token
    codes = torch.where(
        torch.arange(codes.shape[1], device=device) >= (code_len - 3)[:, None], gpt.stop_audio_token, codes
    )
    text_in, text_targets = gpt.set_inputs_and_targets(text, gpt.start_text_token, gpt.stop_text_token)
    mel_in, mel_targets = gpt.set_inputs_and_targets(codes, gpt.start_audio_token, gpt.stop_audio_token)
    text_real = torch.arange(text_in.shape[1], device=device) <= text_len[:, None]  # Coqui's mask: ones up to l
    mel_real = torch.arange(mel_in.shape[1], device=device) <= code_len[:, None]

    text_emb = gpt.text_embedding(text_in) + gpt.text_pos_embedding(text_in)
    mel_emb = gpt.mel_embedding(mel_in) + gpt.mel_pos_embedding(mel_in)
    if cond_latents is None:
        cond_latents = gpt.get_style_emb(cond_mels).transpose(1, 2)
    text_logits, mel_logits = packed_logits(gpt, cond_latents, text_emb, mel_emb, text_real, mel_real)

    text_targets = text_targets.masked_fill(~text_real, -1)
    mel_targets = mel_targets.masked_fill(~mel_real, -1)
    if cond_idxs is not None:  # Coqui's loop variable: the last row only (see module doc)
        last = int(cond_idxs.shape[0]) - 1
        start, end = (int(v) // gpt.perceiver_cond_length_compression for v in cond_idxs[last].tolist())
        mel_targets[last, start:end] = -1
    loss_text = _token_cross_entropy(text_logits, text_targets, gpt.label_smoothing)
    loss_mel = _token_cross_entropy(mel_logits, mel_targets, gpt.label_smoothing)
    return loss_text, loss_mel, mel_logits


def _token_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """Coqui's ``cross_entropy(logits (B, V, T), targets, ignore_index=-1)``, one row per position.

    The same mean over the targets that are not ignored, label smoothing included. The logits
    (a permuted view of the heads' ``(B, T, V)`` output) are read back in that layout, so the
    softmax runs along contiguous rows. Given the ``(B, V, T)`` view itself, PyTorch first copies
    it into a contiguous ``(B, V, T)`` tensor, forward and backward; at 126 clips per micro-batch
    the text logits are about 90 million values.
    """
    rows = logits.transpose(1, 2).reshape(-1, logits.shape[1])
    return F.cross_entropy(rows, targets.reshape(-1).long(), ignore_index=-1, label_smoothing=label_smoothing)


def packing_order(prompt_len: int, text_real: torch.Tensor, mel_real: torch.Tensor) -> torch.Tensor:
    """``(B, P + Tt + Tm)`` destination of each position of ``[prompt | text | mel]`` in the packed row.

    Prompt positions stay; real text follows the prompt, real audio follows the real text, then the
    text padding and the audio padding. Each row is a permutation of ``0 .. P + Tt + Tm - 1``.
    """
    b, tt = text_real.shape
    tm = mel_real.shape[1]
    device = text_real.device
    lt = text_real.sum(1, keepdim=True)
    lm = mel_real.sum(1, keepdim=True)
    j = torch.arange(tt, device=device)[None]
    k = torch.arange(tm, device=device)[None]
    text_dst = torch.where(j < lt, prompt_len + j, prompt_len + lm + j)
    mel_dst = torch.where(k < lm, prompt_len + lt + k, prompt_len + tt + k)
    prompt_dst = torch.arange(prompt_len, device=device)[None].expand(b, -1)
    return torch.cat([prompt_dst, text_dst, mel_dst], dim=1)


def packed_logits(
    gpt: Any,
    prompt: torch.Tensor,
    text_emb: torch.Tensor,
    mel_emb: torch.Tensor,
    text_real: torch.Tensor,
    mel_real: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Coqui's ``GPT.get_logits`` (text head, then audio head) over packed rows, causal attention, no mask.

    With ``gpt._toolkit_pack_multiple`` = m > 1 the rows get zero positions at their end up to a
    multiple of m. Causal attention keeps them out of every real token's output, and they are
    dropped before the heads; the point is fewer distinct shapes: cuDNN attention plans each new
    (batch, length) once, about 2 ms of host time per call, which at small micro-batches cost more
    than the step's GPU work (BENCHMARKS.md).
    """
    p, tt = prompt.shape[1], text_emb.shape[1]
    dst = packing_order(p, text_real, mel_real)
    emb = torch.cat([prompt, text_emb, mel_emb], dim=1)
    d = emb.shape[-1]
    src = torch.empty_like(dst).scatter_(1, dst, torch.arange(dst.shape[1], device=dst.device).expand_as(dst))
    packed = emb.gather(1, src[..., None].expand(-1, -1, d))
    m = getattr(gpt, "_toolkit_pack_multiple", 1)
    if m > 1 and packed.shape[1] % m:
        packed = F.pad(packed, (0, 0, 0, m - packed.shape[1] % m))
    with compat.causal_attention(gpt.gpt):  # no mask to build: and no host check of the position ids
        hidden = gpt.gpt(inputs_embeds=packed, return_dict=True).last_hidden_state
    hidden = hidden.gather(1, dst[..., None].expand(-1, -1, hidden.shape[-1]))  # back to Coqui's layout
    enc = gpt.final_norm(hidden[:, p:])
    text_logits = gpt.text_head(enc[:, :tt]).permute(0, 2, 1)
    mel_logits = gpt.mel_head(enc[:, tt:]).permute(0, 2, 1)
    return text_logits, mel_logits
