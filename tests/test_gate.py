"""The head gate equals zeroing o_proj input columns, on eager and sdpa, forward and generate."""
from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from ahamask_lightning.masking import HeadGate, HeadMask

ATTN = ["eager", "sdpa"]


def _decoder(kind: str, attn: str, seed: int = 0):
    torch.manual_seed(seed)
    common = dict(vocab_size=97, hidden_size=48, intermediate_size=96, num_hidden_layers=3,
                  num_attention_heads=6, max_position_embeddings=128)
    if kind == "llama":
        cfg = LlamaConfig(num_key_value_heads=6, **common)
        model = LlamaForCausalLM(cfg)
    else:  # grouped-query attention: 6 query heads share 2 KV heads
        cfg = Qwen2Config(num_key_value_heads=2, **common)
        model = Qwen2ForCausalLM(cfg)
    model.config._attn_implementation = attn
    for p in model.parameters():  # larger weights so that a wrong gate changes the argmax
        p.data.normal_(0, 0.2)
    return model.eval()


def _zeroed_copy(model, mask: torch.Tensor):
    """Reference: the same model with the o_proj input columns of the off heads zeroed."""
    import copy

    ref = copy.deepcopy(model)
    hd = ref.config.hidden_size // ref.config.num_attention_heads
    for i, layer in enumerate(ref.model.layers):
        w = layer.self_attn.o_proj.weight.data
        for j in range(mask.shape[1]):
            if mask[i, j] == 0:
                w[:, j * hd:(j + 1) * hd] = 0
    return ref


def _gate(model) -> HeadGate:
    cfg = model.config
    return HeadGate([layer.self_attn for layer in model.model.layers], cfg.num_attention_heads,
                    cfg.hidden_size // cfg.num_attention_heads)


@pytest.mark.parametrize("attn", ATTN)
@pytest.mark.parametrize("kind", ["llama", "qwen2_gqa"])
def test_gated_forward_equals_zeroed_columns(kind, attn):
    model = _decoder(kind, attn)
    mask = (torch.rand(3, 6, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    ids = torch.randint(0, 97, (2, 11))
    gate = _gate(model)
    with torch.no_grad(), gate.apply(mask):
        gated = model(ids).logits
    ref = _zeroed_copy(model, mask)
    with torch.no_grad():
        expected = ref(ids).logits
        plain = model(ids).logits
    torch.testing.assert_close(gated, expected, rtol=1e-5, atol=1e-5)
    assert (gated - plain).abs().max() > 1e-3  # the mask really changed something


@pytest.mark.parametrize("attn", ATTN)
@pytest.mark.parametrize("kind", ["llama", "qwen2_gqa"])
def test_gated_generate_with_kv_cache_equals_zeroed_columns(kind, attn):
    model = _decoder(kind, attn)
    mask = (torch.rand(3, 6, generator=torch.Generator().manual_seed(2)) > 0.4).float()
    ids = torch.randint(0, 97, (2, 7))
    gate = _gate(model)
    kw = dict(max_new_tokens=12, do_sample=False, use_cache=True, pad_token_id=0)
    with torch.no_grad(), gate.apply(mask):
        gated = model.generate(ids, **kw)
    ref = _zeroed_copy(model, mask)
    with torch.no_grad():
        expected = ref.generate(ids, **kw)
        plain = model.generate(ids, **kw)
    assert torch.equal(gated, expected)
    assert not torch.equal(gated, plain)


def test_all_on_mask_leaves_model_unchanged():
    model = _decoder("llama", "sdpa")
    ids = torch.randint(0, 97, (2, 9))
    gate = _gate(model)
    with torch.no_grad():
        plain = model(ids).logits
        with gate.apply(torch.ones(3, 6)):
            gated = model(ids).logits
    assert torch.equal(plain, gated)


def test_per_sample_mask_follows_beam_expansion():
    """A [B, L, H] mask gates each sample by its own mask, also after beam expansion."""
    model = _decoder("llama", "sdpa")
    gate = _gate(model)
    g = torch.Generator().manual_seed(3)
    masks = (torch.rand(2, 3, 6, generator=g) > 0.5).float()
    ids = torch.randint(0, 97, (2, 6))
    kw = dict(max_new_tokens=8, do_sample=False, num_beams=3, pad_token_id=0)
    with torch.no_grad(), gate.apply(masks):
        together = model.generate(ids, **kw)
    for b in range(2):
        with torch.no_grad(), gate.apply(masks[b]):
            alone = model.generate(ids[b:b + 1], **kw)
        assert torch.equal(together[b:b + 1], alone)


def test_gradients_reach_mask_logits_only():
    model = _decoder("qwen2_gqa", "sdpa")
    for p in model.parameters():
        p.requires_grad_(False)
    head_mask = HeadMask(3, 6, temperature=1.0).train()
    gate = _gate(model)
    ids = torch.randint(0, 97, (2, 9))
    with gate.apply(head_mask()):
        loss = model(ids, labels=ids).loss
    loss.backward()
    assert head_mask.logits.grad is not None and head_mask.logits.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())


def test_mask_shape_that_does_not_fit_is_refused():
    gate = _gate(_decoder("llama", "sdpa"))
    with pytest.raises(ValueError, match=r"does not fit the model: expected \[3, 6\]"):
        gate.set(torch.ones(40, 40))


def test_mask_training_moves_loss_down_on_toy_target():
    """A few hundred straight-through steps lower the loss of a frozen model on a fixed target."""
    model = _decoder("llama", "sdpa", seed=4)
    for p in model.parameters():
        p.requires_grad_(False)
    head_mask = HeadMask(3, 6, temperature=1.0, init_mean=0.0, init_std=0.5).train()
    gate = _gate(model)
    opt = torch.optim.AdamW([head_mask.logits], lr=0.1, weight_decay=0.0)
    ids = torch.randint(0, 97, (4, 10), generator=torch.Generator().manual_seed(5))
    # target: what the model says with a particular, hidden mask
    hidden = (torch.rand(3, 6, generator=torch.Generator().manual_seed(6)) > 0.5).float()
    with torch.no_grad(), gate.apply(hidden):
        target = model(ids).logits.argmax(-1)

    def loss_with(mask):
        with gate.apply(mask):
            logits = model(ids).logits
        return torch.nn.functional.cross_entropy(logits.reshape(-1, 97), target.reshape(-1))

    with torch.no_grad():
        before = loss_with(head_mask.hard()).item()
    for _ in range(300):
        opt.zero_grad()
        loss_with(head_mask()).backward()
        opt.step()
    with torch.no_grad():
        after = loss_with(head_mask.hard()).item()
        best = loss_with(hidden).item()  # the targets' own mask is the optimum (CE > 0: argmax targets)
    assert after < before - 0.1, (before, after)
    assert after <= best + 0.05, (after, best)
    assert (head_mask.hard() == hidden).float().mean() >= 0.85
