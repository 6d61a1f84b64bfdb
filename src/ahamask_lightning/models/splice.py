"""Building blocks for LALMs that splice audio embeddings into a text prompt (SALMONN, TinyLALM).

The prompt template holds one ``<SpeechHere>`` placeholder; the text on either side is
tokenised in the collate step (CPU, dataloader workers) and the audio embeddings are put
in between in the forward pass. Training sequences are right-padded with labels -100
everywhere but the target; generation prompts are left-padded so that every sample's
prompt ends at the last position.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

AUDIO_PLACEHOLDER = "<SpeechHere>"


def pad_ids(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``[B, max(1, longest)]`` ids and the lengths. By hand rather than torch's
    ``pad_sequence``: a batch of empty prompts keeps one pad column here (pad_sequence gives width 0)."""
    lens = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    out = torch.full((len(seqs), max(1, int(lens.max()) if len(seqs) else 1)), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(list(s), dtype=torch.long)
    return out, lens


def render_prompt(template: str, instruction: str | None) -> tuple[str, str]:
    """Split the filled template into the text before and after the audio.

    Without an instruction the placeholder ``{}`` becomes the empty string, which keeps
    the template's own spacing (SALMONN: ``... </Speech> \\nASSISTANT:``).
    """
    text = template.replace("{}", instruction or "")
    if AUDIO_PLACEHOLDER not in text:
        raise ValueError(f"prompt template {template!r} has no {AUDIO_PLACEHOLDER} placeholder")
    left, right = text.split(AUDIO_PLACEHOLDER, 1)
    return left, right


def tokenize_prompts(
    tokenizer: PreTrainedTokenizerBase,
    template: str,
    instructions: Sequence[str | None],
    targets: Sequence[str] | None,
    bos_id: int | None,
    eos_id: int,
    pad_id: int,
) -> dict[str, torch.Tensor]:
    """Token ids of prompt-before-audio, prompt-after-audio and target (+ EOS), padded."""
    lefts, rights = zip(*(render_prompt(template, ins) for ins in instructions)) if instructions else ((), ())
    enc = lambda texts: [tokenizer.encode(t, add_special_tokens=False) for t in texts]  # noqa: E731
    left_ids = [([bos_id] if bos_id is not None else []) + ids for ids in enc(lefts)]
    batch = {}
    batch["prefix_ids"], batch["prefix_lens"] = pad_ids(left_ids, pad_id)
    batch["suffix_ids"], batch["suffix_lens"] = pad_ids(enc(rights), pad_id)
    if targets is not None:
        target_ids = [ids + [eos_id] for ids in enc(targets)]
        batch["target_ids"], batch["target_lens"] = pad_ids(target_ids, pad_id)
    return batch


def splice_embeddings(
    embed: nn.Module,
    batch: dict[str, torch.Tensor],
    audio_embeds: torch.Tensor,
    audio_lens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``[prefix, audio, suffix, target]`` per sample -> (inputs_embeds, attention_mask, labels).

    With targets: right padding and labels; without: left padding for generation.
    """
    has_target = "target_ids" in batch
    b = audio_embeds.shape[0]
    if audio_lens is None:
        audio_lens = torch.full((b,), audio_embeds.shape[1], dtype=torch.long)
    dtype = audio_embeds.dtype
    seqs, labels = [], []
    for i in range(b):
        lp, ls, la = int(batch["prefix_lens"][i]), int(batch["suffix_lens"][i]), int(audio_lens[i])
        parts = [embed(batch["prefix_ids"][i, :lp]).to(dtype), audio_embeds[i, :la],
                 embed(batch["suffix_ids"][i, :ls]).to(dtype)]
        lab = [torch.full((lp + la + ls,), -100, dtype=torch.long, device=audio_embeds.device)]
        if has_target:
            lt = int(batch["target_lens"][i])
            tgt = batch["target_ids"][i, :lt]
            parts.append(embed(tgt).to(dtype))
            lab.append(tgt)
        seqs.append(torch.cat(parts))
        labels.append(torch.cat(lab))
    length = max(s.shape[0] for s in seqs)
    d = audio_embeds.shape[-1]
    inputs = audio_embeds.new_zeros(b, length, d)
    mask = torch.zeros(b, length, dtype=torch.long, device=audio_embeds.device)
    out_labels = torch.full((b, length), -100, dtype=torch.long, device=audio_embeds.device)
    for i, (s, lab) in enumerate(zip(seqs, labels)):
        n = s.shape[0]
        sl = slice(0, n) if has_target else slice(length - n, length)
        inputs[i, sl] = s
        mask[i, sl] = 1
        out_labels[i, sl] = lab
    return inputs, mask, (out_labels if has_target else None)
