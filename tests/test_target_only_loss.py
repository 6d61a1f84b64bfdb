"""Target-only logits: every adapter's training loss and the mask gradients equal the full-logits path.

The reference is what the adapters computed before: the model's full ``[B, S, V]`` logits and
``causal_lm_loss`` (shift, float copy, ignore_index). The adapters now project only the positions
that predict a target (the feature cache's path through merged embeddings is compared with the
plain one in ``test_chat_speed_options.py``).
"""
from __future__ import annotations

import pytest
import torch

from ahamask_lightning import models
from ahamask_lightning.masking import HeadGate
from ahamask_lightning.models.base import causal_lm_loss, target_only_loss, target_positions
from ahamask_lightning.models.salmonn import SalmonnAdapter
from ahamask_lightning.models.tiny_lalm import random_tiny_lalm

CHAT = ["Qwen2_5OmniAdapter", "VoxtralAdapter", "GraniteSpeechAdapter", "AudioFlamingo3Adapter"]


def _audios(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [0.1 * torch.randn(16000, generator=g), 0.1 * torch.randn(28000, generator=g)]


def _full_logits_loss(adapter, batch) -> torch.Tensor:
    """The full-logits reference: every position projected onto the vocabulary."""
    if isinstance(adapter, (models.TinyLALM, SalmonnAdapter)):
        embeds, mask, labels = adapter._inputs(batch)
        return causal_lm_loss(adapter.llm(inputs_embeds=embeds, attention_mask=mask, use_cache=False).logits, labels)
    out = adapter.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False,
                        **adapter._audio_inputs(batch))
    return causal_lm_loss(out.logits, batch["labels"])


def _build(name: str):
    torch.manual_seed(0)
    if name == "TinyLALM":
        texts = ["the quick brown fox", "male female"]
        return random_tiny_lalm(texts, layers=2, heads=4, hidden=32).freeze()
    if name == "SalmonnAdapter":
        return SalmonnAdapter(tiny=True)
    return getattr(models, name)(tiny=True).freeze()


@pytest.mark.parametrize("name", ["Qwen2AudioAdapter", *CHAT, "TinyLALM", "SalmonnAdapter"])
def test_loss_and_mask_gradients_equal_full_logits(name):
    adapter = _build(name)
    batch = adapter.collate(_audios(), ["What is the gender of the speaker?", None],
                            ["Male", "the quick brown fox"])
    gate = HeadGate(adapter.gated_attentions(), adapter.num_heads, adapter.head_dim)
    logits = torch.randn(adapter.num_layers, adapter.num_heads, generator=torch.Generator().manual_seed(3))
    losses, grads = [], []
    for compute in (adapter.loss, lambda b: _full_logits_loss(adapter, b)):
        theta = logits.clone().requires_grad_(True)
        with gate.apply(torch.sigmoid(theta)):  # a soft mask: every head gets a gradient
            loss = compute(batch)
        (grad,) = torch.autograd.grad(loss, theta)
        losses.append(loss.detach())
        grads.append(grad)
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-7)
    assert grads[1].abs().max() > 0  # the comparison is not between two zero gradients


def test_target_positions_select_the_predictions_of_targets():
    labels = torch.tensor([[-100, -100, 5, 6, -100], [-100, 7, 8, 9, 2]])
    keep = target_positions(labels)
    assert keep.tolist() == [[False, True, True, False, False], [True, True, True, True, False]]
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 5, 8, generator=g)
    head = torch.nn.Linear(8, 11, bias=False)
    torch.testing.assert_close(target_only_loss(hidden, head, labels), causal_lm_loss(head(hidden), labels))


def _saved_bytes_and_grad(module, batch, backward) -> tuple[int, torch.Tensor]:
    """Bytes autograd keeps for backward outside checkpointed regions, and the mask-logit gradient."""
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    torch.manual_seed(7)  # the same mask sample in every run
    module.head_mask.logits.grad = None
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = module.training_step(batch, 0)
    backward(loss)
    return sum(saved.values()), module.head_mask.logits.grad.clone()


def test_activation_checkpointing_keeps_the_mask_gradients():
    """Checkpointed LLM layers are recomputed in backward, where AHAMaskModule keeps the step's mask on."""
    from ahamask_lightning.module import AHAMaskModule

    runs = {}
    for ckpt in (False, True):
        torch.manual_seed(0)
        adapter = models.Qwen2AudioAdapter(tiny=True, tiny_layers=3, gradient_checkpointing=ckpt)
        module = AHAMaskModule(adapter, init_mean=0.0, init_std=1.0)
        batch = adapter.collate(_audios(), ["What is the gender of the speaker?", None], ["Male", "Female"])
        batch["ids"] = ["a", "b"]
        runs[ckpt] = _saved_bytes_and_grad(module, batch, module.backward)
        if ckpt:  # the same backward without the module's hook: the recomputed layers run ungated
            with pytest.raises(torch.utils.checkpoint.CheckpointError):
                _saved_bytes_and_grad(module, batch, lambda loss: loss.backward())
    (plain_bytes, plain_grad), (ckpt_bytes, ckpt_grad) = runs[False], runs[True]
    torch.testing.assert_close(ckpt_grad, plain_grad, rtol=1e-5, atol=1e-7)
    assert plain_grad.abs().max() > 0
    assert ckpt_bytes < 0.7 * plain_bytes  # the layers' activations really were dropped
