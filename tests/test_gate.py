"""The head gate equals zeroing o_proj input columns, on eager and sdpa, forward and generate.

First on bare decoders (Llama, grouped-query Qwen2), then on every registered LALM adapter with
audio in: the training forward and each step of cached generation.
"""
from __future__ import annotations

import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from ahamask_lightning.masking import HeadGate, HeadMask, find_o_proj

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
    model.set_attn_implementation(attn)
    for p in model.parameters():  # larger weights so that a wrong gate changes the argmax
        p.data.normal_(0, 0.2)
    return model.eval()


def _zeroed_copy(model, mask: torch.Tensor):
    """Reference: the same model with the o_proj input columns of the off heads zeroed."""
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


# --- every registered adapter: gate == zeroed o_proj columns on the whole LALM, audio in ----------------
def _adapter_factories():
    from ahamask_lightning import models
    from ahamask_lightning.models.salmonn import SalmonnAdapter
    from ahamask_lightning.models.tiny_lalm import random_tiny_lalm

    def tiny(cls):
        return lambda attn: cls(tiny=True, attn_implementation=attn)

    chat = {name: tiny(getattr(models, name)) for name in (
        "Qwen2AudioAdapter", "Qwen2_5OmniAdapter", "VoxtralAdapter", "GraniteSpeechAdapter", "AudioFlamingo3Adapter")}
    return {
        "TinyLALM": lambda attn: random_tiny_lalm(["male female yes no", "the quick brown fox"], layers=2,
                                                  heads=4, hidden=32, attn_implementation=attn),
        "SalmonnAdapter": lambda attn: SalmonnAdapter(tiny=True, attn_implementation=attn),
        **chat,
    }


ADAPTER_NAMES = ["TinyLALM", "SalmonnAdapter", "Qwen2AudioAdapter", "Qwen2_5OmniAdapter", "VoxtralAdapter",
                 "GraniteSpeechAdapter", "AudioFlamingo3Adapter"]


def _registered_adapters() -> set[str]:
    """Concrete LALMAdapter classes of the package (an adapter without a collate is a base class)."""
    import ahamask_lightning.models
    import ahamask_lightning.models.salmonn  # noqa: F401  (imports every family)
    from ahamask_lightning.models.base import LALMAdapter

    found, todo = set(), list(LALMAdapter.__subclasses__())
    while todo:
        cls = todo.pop()
        todo += cls.__subclasses__()
        if cls.__module__.startswith("ahamask_lightning.") and cls.collate is not LALMAdapter.collate:
            found.add(cls.__name__)
    return found


def test_every_registered_adapter_is_in_the_equivalence_test():
    assert _registered_adapters() == set(ADAPTER_NAMES) == set(_adapter_factories())


def _lm_head(adapter):
    heads = [m for name, m in adapter.named_modules() if name.endswith("lm_head")]
    assert len(heads) == 1, "expected one lm_head in the adapter"
    return heads[0]


def _captured_logits(adapter, batch):
    """Logits of the training forward (``loss``) and of every step of cached greedy ``generate``."""
    seen = []
    handle = _lm_head(adapter).register_forward_hook(lambda m, a, out: seen.append(out.detach().clone()))
    try:
        with torch.no_grad():
            adapter.loss(batch)
            n_forward = len(seen)
            adapter.generate(batch, max_new_tokens=5, num_beams=1, do_sample=False)
    finally:
        handle.remove()
    assert n_forward == 1 and len(seen) > 2, "the forward and each decoding step should reach lm_head once"
    return seen


@pytest.mark.parametrize("attn", ATTN)
@pytest.mark.parametrize("name", ADAPTER_NAMES)
def test_adapter_gate_equals_zeroed_o_proj_columns(name, attn):
    torch.manual_seed(0)
    adapter = _adapter_factories()[name](attn).freeze()
    for i, block in enumerate(adapter.gated_attentions()):  # larger attention weights: a wrong gate shows
        for p in block.parameters():
            p.data.normal_(0, 0.2, generator=torch.Generator().manual_seed(100 * i + p.numel()))
    mask = (torch.rand(adapter.num_layers, adapter.num_heads, generator=torch.Generator().manual_seed(1)) > 0.5)
    mask = mask.float()
    mask[0, 0], mask[0, 1] = 0.0, 1.0  # at least one head off and one on
    ref = copy.deepcopy(adapter)  # before the gate: the copy carries no hooks
    d = ref.head_dim
    for i, block in enumerate(ref.gated_attentions()):
        w = find_o_proj(block).weight.data
        assert w.shape[1] == ref.num_heads * d  # num_heads x head_dim is the o_proj input width
        for j in range(ref.num_heads):
            if mask[i, j] == 0:
                w[:, j * d:(j + 1) * d] = 0
    g = torch.Generator().manual_seed(2)
    audios = [0.1 * torch.randn(16000, generator=g), 0.1 * torch.randn(28000, generator=g)]
    batch = adapter.collate(audios, ["What is the gender of the speaker?", None], ["Male", "Female"])
    gate = HeadGate(adapter.gated_attentions(), adapter.num_heads, adapter.head_dim)
    with gate.apply(mask):
        gated = _captured_logits(adapter, batch)
    expected = _captured_logits(ref, batch)
    plain = _captured_logits(adapter, batch)
    assert len(gated) == len(expected)
    for a, b in zip(gated, expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert (gated[0] - plain[0]).abs().max() > 1e-3  # the mask really changed the model
