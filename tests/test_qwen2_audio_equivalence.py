"""Qwen2-Audio through the adapter = transformers' own processor and ``Qwen2AudioForConditionalGeneration``.

The reference is computed here from the real classes the adapter wraps: the processor's prompt
expansion of each sample alone, the target tokens + end token as labels, the model's own forward
(its own audio merge, full logits) for the loss and mask gradients, and the model's own
``generate`` for greedy and beam outputs. Both variants (instruct, base) on a tiny random model.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ahamask_lightning.masking import HeadGate
from ahamask_lightning.models import Qwen2AudioAdapter, qwen2_audio
from ahamask_lightning.models.base import causal_lm_loss

INSTRUCTIONS = ["What is the gender of the speaker?", None, "Answer Male or Female."]
TARGETS = ["Male", "the quick brown fox", "Female"]
EOS = {"instruct": "<|im_end|>", "base": "<|endoftext|>"}
TEMPLATE = {"instruct": qwen2_audio.INSTRUCT_TEMPLATE, "base": qwen2_audio.BASE_TEMPLATE}


def _audios() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [0.1 * torch.randn(n, generator=g) for n in (16000, 28000, 9000)]


def _adapter(variant: str, **options) -> Qwen2AudioAdapter:
    torch.manual_seed(0)
    adapter = Qwen2AudioAdapter(variant=variant, tiny=True, **options).freeze()
    for p in adapter.model.get_decoder().parameters():  # larger LLM weights: generation is not degenerate
        p.data.normal_(0, 0.2, generator=torch.Generator().manual_seed(p.numel()))
    return adapter


def _rows(ids: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
    return [r[m.bool()].tolist() for r, m in zip(ids, mask)]


@pytest.mark.parametrize("variant", ["instruct", "base"])
def test_prompt_ids_and_labels_are_the_processors(variant):
    adapter = _adapter(variant)
    proc, tok = adapter.processor, adapter.processor.tokenizer
    batch = adapter.collate(_audios(), INSTRUCTIONS, TARGETS)
    eos = tok.convert_tokens_to_ids(EOS[variant])
    prompts, full = _rows(batch["gen_input_ids"], batch["gen_attention_mask"]), \
        _rows(batch["input_ids"], batch["attention_mask"])
    for i, (wave, ins, target) in enumerate(zip(_audios(), INSTRUCTIONS, TARGETS)):
        alone = proc(text=TEMPLATE[variant].format(ins or ""), audio=np.asarray(wave, dtype=np.float32),
                     sampling_rate=16000, return_tensors="pt")
        prompt = alone["input_ids"][0].tolist()
        answer = tok.encode(target, add_special_tokens=False) + [eos]
        assert prompts[i] == prompt
        assert full[i] == prompt + answer
        labels = batch["labels"][i, : len(full[i])].tolist()
        assert labels == [-100] * len(prompt) + answer
        assert (batch["labels"][i, len(full[i]):] == -100).all()
    whole = proc(text=[TEMPLATE[variant].format(ins or "") for ins in INSTRUCTIONS],
                 audio=[np.asarray(w, dtype=np.float32) for w in _audios()], sampling_rate=16000,
                 return_tensors="pt", padding=True)
    assert torch.equal(batch["input_features"], whole["input_features"])
    assert torch.equal(batch["feature_attention_mask"], whole["feature_attention_mask"])


def _loss_and_grad(adapter, batch, compute) -> tuple[torch.Tensor, torch.Tensor]:
    gate = HeadGate(adapter.gated_attentions(), adapter.num_heads, adapter.head_dim)
    theta = torch.randn(adapter.num_layers, adapter.num_heads,
                        generator=torch.Generator().manual_seed(5)).requires_grad_(True)
    with gate.apply(torch.sigmoid(theta)):
        loss = compute(batch)
    (grad,) = torch.autograd.grad(loss, theta)
    gate.remove()
    return loss.detach(), grad


def _model_loss(adapter, batch) -> torch.Tensor:
    """transformers' own forward: its audio merge, every position projected, shifted cross-entropy."""
    out = adapter.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                        input_features=batch["input_features"],
                        feature_attention_mask=batch["feature_attention_mask"], use_cache=False)
    return causal_lm_loss(out.logits, batch["labels"])


@pytest.mark.parametrize("variant", ["instruct", "base"])
def test_loss_and_mask_gradients_are_the_models(variant):
    adapter = _adapter(variant)
    batch = adapter.collate(_audios(), INSTRUCTIONS, TARGETS)
    loss, grad = _loss_and_grad(adapter, batch, adapter.loss)
    ref_loss, ref_grad = _loss_and_grad(adapter, batch, lambda b: _model_loss(adapter, b))
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-7)
    assert ref_grad.abs().max() > 0


@pytest.mark.parametrize("variant", ["instruct", "base"])
def test_generated_tokens_are_the_models(variant):
    adapter = _adapter(variant)
    batch = adapter.collate(_audios(), INSTRUCTIONS)
    eos = adapter.processor.tokenizer.convert_tokens_to_ids(EOS[variant])
    ids = batch["gen_input_ids"]
    for options in ({"num_beams": 1}, {"num_beams": 3}):
        with torch.no_grad():
            out = adapter.model.generate(input_ids=ids, attention_mask=batch["gen_attention_mask"],
                                         input_features=batch["input_features"],
                                         feature_attention_mask=batch["feature_attention_mask"],
                                         max_new_tokens=8, do_sample=False, eos_token_id=eos,
                                         pad_token_id=adapter.processor.tokenizer.pad_token_id, **options)
        expected = [t.strip() for t in adapter.processor.tokenizer.batch_decode(out[:, ids.shape[1]:],
                                                                                skip_special_tokens=True)]
        assert adapter.generate(batch, max_new_tokens=8, **options) == expected
        assert any(expected)  # the comparison is not between empty outputs
