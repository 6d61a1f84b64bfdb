"""Beam search as the released SALMONN evaluation ran it: transformers 4.28's, on ``inputs_embeds``.

The official code calls ``llama_model.generate(inputs_embeds=..., num_beams=4, length_penalty=1.0, ...)``
under transformers 4.28. For an ``inputs_embeds``-only call 4.28 starts the token sequence with a
placeholder column holding the BOS id (the prompt itself, BOS included, is in the embeddings), and its
beam scorer divides every score by the length of that sequence. Transformers 5 starts from an empty
sequence. For a beam that ends in EOS both count the same number (4.28: placeholder + tokens before EOS;
5: tokens including EOS), but they part ways on

* a beam cut at ``max_new_tokens``: 4.28 divides by ``1 + n``, 5 by ``n``;
* when to stop searching (``early_stopping=False``): 4.28 stops once the best of this step's candidates,
  EOS ones included, divided by ``placeholder + generated + 1``, cannot beat the worst kept hypothesis;
  5 takes the best still-running beam divided by ``generated + 1``.

So when EOS competes with length the two pick different beams. No argument of transformers 5's
``generate`` restores 4.28's rule (a one-column placeholder ``input_ids`` is taken as the prompt and
subtracted again from every length), so :func:`official_beam_search` is 4.28's
``GenerationMixin.beam_search`` + ``BeamSearchScorer`` + ``BeamHypotheses``, written over the model's
forward with a KV cache. ``SalmonnAdapter(beam_search="official")`` decodes with it.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

# generate() keys this decoding understands; the rest are rejected (a silent no-op would mislead).
SUPPORTED = {"num_beams", "max_new_tokens", "length_penalty", "early_stopping", "min_length", "repetition_penalty",
             "num_return_sequences", "do_sample", "synced_gpus"}
# 4.28's beam_search applies no logits warper: sampling settings have no effect there, nor here.
IGNORED = {"temperature", "top_p", "top_k", "typical_p"}


class BeamHypotheses:
    """transformers 4.28's ``BeamHypotheses``: the ``num_beams`` best finished hypotheses of one sample."""

    def __init__(self, num_beams: int, length_penalty: float, early_stopping: bool | str, max_length: int) -> None:
        self.num_beams, self.length_penalty, self.early_stopping = num_beams, length_penalty, early_stopping
        self.max_length = max_length
        self.beams: list[tuple[float, torch.Tensor]] = []
        self.worst_score = 1e9

    def __len__(self) -> int:
        return len(self.beams)

    def add(self, hyp: torch.Tensor, sum_logprobs: float) -> None:
        """``hyp`` is the whole sequence, placeholder column included: its length is the divisor."""
        score = sum_logprobs / (hyp.shape[-1] ** self.length_penalty)
        if len(self) < self.num_beams or score > self.worst_score:
            self.beams.append((score, hyp))
            if len(self) > self.num_beams:
                ranked = sorted((s, i) for i, (s, _) in enumerate(self.beams))
                del self.beams[ranked[0][1]]
                self.worst_score = ranked[1][0]
            else:
                self.worst_score = min(score, self.worst_score)

    def is_done(self, best_sum_logprobs: float, cur_len: int) -> bool:
        if len(self) < self.num_beams:
            return False
        if self.early_stopping is True:
            return True
        if self.early_stopping is False or self.length_penalty <= 0.0:
            return self.worst_score >= best_sum_logprobs / cur_len ** self.length_penalty
        return self.worst_score >= best_sum_logprobs / self.max_length ** self.length_penalty  # "never"

    def best(self, n: int) -> list[tuple[float, torch.Tensor]]:
        """The ``n`` best, best first (4.28: ``sorted(...)`` then ``pop()``: a tie goes to the later one)."""
        ranked = sorted(self.beams, key=lambda x: x[0])
        return [ranked.pop() for _ in range(n)]


def _synced_default(model: nn.Module) -> bool:
    """What transformers' generate decides: every rank must run the same number of forwards when the
    weights are sharded (FSDP, DeepSpeed ZeRO-3) across more than one process."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return False
    if torch.distributed.get_world_size() < 2:
        return False
    try:
        from transformers.distributed.fsdp import is_fsdp_managed_module
        from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled
    except ImportError:  # another transformers layout: assume sharded, the safe choice
        return True
    return bool(is_deepspeed_zero3_enabled() or is_fsdp_managed_module(model))


@torch.no_grad()
def official_beam_search(model: nn.Module, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, *,
                         eos_token_id: int, pad_token_id: int, bos_token_id: int, num_beams: int = 4,
                         max_new_tokens: int = 200, length_penalty: float = 1.0,
                         early_stopping: bool | str = False, min_length: int = 0, repetition_penalty: float = 1.0,
                         num_return_sequences: int = 1, do_sample: bool = False,
                         synced_gpus: bool | None = None, **ignored: Any) -> torch.Tensor:
    """transformers 4.28's ``generate(inputs_embeds=..., num_beams>1, do_sample=False)`` for a causal LM.

    Args:
        model: a causal LM (``LlamaForCausalLM``) taking ``inputs_embeds`` / ``input_ids``,
            ``attention_mask``, ``position_ids``, ``past_key_values``.
        inputs_embeds, attention_mask: the prompts, ``[B, L, D]`` and ``[B, L]`` (left padding).
        min_length, repetition_penalty: as 4.28 applies them, on the sequence with the placeholder column
            (so ``min_length=1``, SALMONN's setting, never blocks EOS).
        synced_gpus: keep running forwards until every rank has finished (default: as transformers
            decides, i.e. when the weights are sharded over several processes).

    Returns:
        ``[B * num_return_sequences, T]`` new token ids, as transformers 5 returns them for embeddings
        (no placeholder column): each hypothesis, then EOS where it fits, then ``pad_token_id``.
    """
    unknown = set(ignored) - IGNORED
    if unknown:
        raise ValueError(f"beam_search='official': unsupported generation settings {sorted(unknown)}; "
                         f"supported: {sorted(SUPPORTED | IGNORED)}")
    if do_sample:
        raise ValueError("beam_search='official' is 4.28's deterministic beam search: do_sample must be false")
    if num_beams < 2:
        raise ValueError(f"beam_search='official' needs num_beams >= 2, got {num_beams}")
    if not 1 <= num_return_sequences <= num_beams:
        raise ValueError(f"num_return_sequences must be in [1, num_beams], got {num_return_sequences}")
    synced = _synced_default(model) if synced_gpus is None else synced_gpus
    device = inputs_embeds.device
    batch, k = inputs_embeds.shape[0], num_beams
    max_length = max_new_tokens + 1  # 4.28: max_new_tokens + the placeholder column
    hyps = [BeamHypotheses(k, length_penalty, early_stopping, max_length) for _ in range(batch)]
    done = [False] * batch

    mask = attention_mask.long().repeat_interleave(k, dim=0)
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    seqs = torch.full((batch * k, 1), bos_token_id, dtype=torch.long, device=device)
    beam_scores = torch.zeros(batch, k, dtype=torch.float, device=device)
    beam_scores[:, 1:] = -1e9  # only the first beam's tokens at the first step
    beam_scores = beam_scores.view(-1)
    out = model(inputs_embeds=inputs_embeds.repeat_interleave(k, dim=0), attention_mask=mask,
                position_ids=positions, use_cache=True, logits_to_keep=1)
    finished = False
    while True:
        if not finished:
            scores = nn.functional.log_softmax(out.logits[:, -1, :].float(), dim=-1)
            if repetition_penalty != 1.0:
                seen = scores.gather(1, seqs)
                scores = scores.scatter(1, seqs, torch.where(seen < 0, seen * repetition_penalty,
                                                             seen / repetition_penalty))
            if seqs.shape[1] < min_length:
                scores[:, eos_token_id] = -float("inf")
            vocab = scores.shape[-1]
            scores = (scores + beam_scores[:, None]).view(batch, k * vocab)
            top_scores, top_ids = torch.topk(scores, 2 * k, dim=1, largest=True, sorted=True)
            top_beams, top_tokens = top_ids // vocab, top_ids % vocab

            next_scores = torch.zeros(batch, k, dtype=top_scores.dtype, device=device)
            next_tokens = torch.full((batch, k), pad_token_id, dtype=torch.long, device=device)
            next_beams = torch.arange(batch * k, device=device).view(batch, k)  # a finished sample keeps its rows
            cur_len = seqs.shape[1]
            for b in range(batch):
                if done[b]:
                    continue
                slot = 0
                for rank, (token, score, beam) in enumerate(zip(top_tokens[b].tolist(), top_scores[b].tolist(),
                                                                top_beams[b].tolist())):
                    row = b * k + beam
                    if token == eos_token_id:
                        if rank < k:  # an EOS outside the top num_beams candidates is not kept
                            hyps[b].add(seqs[row].clone(), score)
                    else:
                        next_scores[b, slot], next_tokens[b, slot], next_beams[b, slot] = score, token, row
                        slot += 1
                    if slot == k:
                        break
                done[b] = done[b] or hyps[b].is_done(top_scores[b].max().item(), cur_len + 1)
            rows = next_beams.view(-1)
            seqs = torch.cat([seqs[rows], next_tokens.view(-1, 1)], dim=-1)
            beam_scores = next_scores.view(-1)
            out.past_key_values.reorder_cache(rows)
            finished = all(done) or seqs.shape[1] >= max_length
        if synced:  # 4.28: every rank runs forwards until all ranks are done
            flag = torch.tensor(0.0 if finished else 1.0, device=device)
            torch.distributed.all_reduce(flag)
            if flag.item() == 0.0:
                break
        elif finished:
            break
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=-1)
        out = model(input_ids=seqs[:, -1:], attention_mask=mask, position_ids=(mask.sum(-1, keepdim=True) - 1),
                    past_key_values=out.past_key_values, use_cache=True, logits_to_keep=1)

    # finalize: open beams of unfinished samples join their hypotheses, then the best are returned
    for b in range(batch):
        if not done[b]:
            for beam in range(k):
                hyps[b].add(seqs[b * k + beam], beam_scores[b * k + beam].item())
    best = [h for b in range(batch) for _, h in hyps[b].best(num_return_sequences)]
    width = min(max(h.shape[-1] for h in best) + 1, max_length)
    decoded = torch.full((len(best), width), pad_token_id, dtype=torch.long, device=device)
    for i, h in enumerate(best):
        decoded[i, : h.shape[-1]] = h
        if h.shape[-1] < width:
            decoded[i, h.shape[-1]] = eos_token_id
    return decoded[:, 1:]
