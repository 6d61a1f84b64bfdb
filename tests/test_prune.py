"""Physical head pruning equals the gate: eager and sdpa, forward and cached generate, GQA and MHA.

Tiny random transformers decoders (Llama without biases, Qwen2 with q/k/v biases), 8 query
heads over 2 KV heads, so each KV group has 4 query heads. The mask below has one layer of
each kind: a whole KV group off, groups that must stay because one or more of their heads is
on (with padding), every head off, every head on.
"""
from __future__ import annotations

import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from ahamask_lightning.cli.main import main as ahamask
from ahamask_lightning.masking import HeadGate, save_mask
from ahamask_lightning.masking.prune import plan_layer, prune_adapter, prune_heads

HEADS, KV, HIDDEN, D = 8, 2, 64, 8
MASK = torch.tensor([
    [0, 0, 0, 0, 1, 1, 0, 0],  # group 0 all off: removed; group 1 kept (2 of 4 on)
    [1, 0, 0, 0, 1, 1, 1, 0],  # both groups kept; group 0 pads with 2 off heads to 3 per group
    [0, 0, 0, 0, 0, 0, 0, 0],  # every head off
    [1, 1, 1, 1, 1, 1, 1, 1],  # untouched
], dtype=torch.float32)


def _decoder(kind: str, attn: str, kv: int = KV, layers: int = 4, seed: int = 0):
    torch.manual_seed(seed)
    common = dict(vocab_size=97, hidden_size=HIDDEN, intermediate_size=96, num_hidden_layers=layers,
                  num_attention_heads=HEADS, num_key_value_heads=kv, max_position_embeddings=128)
    model = LlamaForCausalLM(LlamaConfig(**common)) if kind == "llama" else Qwen2ForCausalLM(Qwen2Config(**common))
    model.set_attn_implementation(attn)
    for p in model.parameters():  # larger weights so that a wrong head changes the argmax
        p.data.normal_(0, 0.2)
    return model.eval()


def _attentions(model):
    return [layer.self_attn for layer in model.model.layers]


def _gated_and_pruned(kind: str, attn: str, mask: torch.Tensor = MASK, kv: int = KV):
    model = _decoder(kind, attn, kv=kv, layers=mask.shape[0])
    pruned = copy.deepcopy(model)
    report = prune_heads(_attentions(pruned), mask)
    gate = HeadGate(_attentions(model), HEADS, D)
    return model, gate, pruned, report


def _batch():
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(1, 97, (3, 10), generator=g)
    am = torch.ones_like(ids)
    am[0, :4] = 0  # left padding: the masked path of every kernel
    return ids, am


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_pruned_forward_equals_gated(kind, attn):
    model, gate, pruned, _ = _gated_and_pruned(kind, attn)
    ids, am = _batch()
    with torch.no_grad():
        with gate.apply(MASK):
            gated, gated_nomask = model(ids, attention_mask=am).logits, model(ids).logits
        plain = model(ids, attention_mask=am).logits
        out, out_nomask = pruned(ids, attention_mask=am).logits, pruned(ids).logits
    torch.testing.assert_close(out, gated, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out_nomask, gated_nomask, rtol=1e-5, atol=1e-5)  # sdpa: the enable_gqa path
    assert (out - plain).abs().max() > 1e-2  # pruning really changed the model


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_pruned_cached_generate_equals_gated(kind, attn):
    model, gate, pruned, _ = _gated_and_pruned(kind, attn)
    ids, am = _batch()
    kw = dict(attention_mask=am, max_new_tokens=10, do_sample=False, use_cache=True, pad_token_id=0,
              output_scores=True, return_dict_in_generate=True)
    with torch.no_grad():
        with gate.apply(MASK):
            gated = model.generate(ids, **kw)
        out = pruned.generate(ids, **kw)
        plain = model.generate(ids, **kw)
    assert torch.equal(out.sequences, gated.sequences)
    for a, b in zip(out.scores, gated.scores):  # every cached decoding step, not only the argmax
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert not torch.equal(out.sequences, plain.sequences)


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_parameter_counts_drop_by_the_removed_heads_and_groups(kind):
    model, _, pruned, report = _gated_and_pruned(kind, "sdpa")
    bias = kind == "qwen2"  # Qwen2: q/k/v biases, no o_proj bias
    per_q = HIDDEN * D + (D if bias else 0) + D * HIDDEN  # q_proj rows (+ bias) and o_proj columns
    per_kv = 2 * (HIDDEN * D + (D if bias else 0))  # k_proj and v_proj rows (+ biases)
    # layer 0: 6 heads, 1 group; layer 1: 2 heads (2 off heads kept as padding); layer 2: 7 heads, 1 group
    assert [r.removed_heads for r in report.layers] == [6, 2, 7, 0]
    assert [r.removed_kv_groups for r in report.layers] == [1, 0, 1, 0]
    expected = 15 * per_q + 2 * per_kv
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert count(model) - count(pruned) == expected
    assert report.params_before - report.params_after == expected
    assert [r.params_removed for r in report.layers] == [6 * per_q + per_kv, 2 * per_q, 7 * per_q + per_kv, 0]
    shapes = [(a.q_proj.out_features, a.k_proj.out_features, a.o_proj.in_features, a.num_key_value_groups)
              for a in _attentions(pruned)]
    assert shapes == [(2 * D, D, 2 * D, 2), (6 * D, 2 * D, 6 * D, 3), (D, D, D, 1), (8 * D, 2 * D, 8 * D, 4)]


def test_group_is_kept_when_one_of_its_heads_is_on():
    mask = torch.ones(2, HEADS)
    mask[0, [0, 1, 3]] = 0  # group 0: only head 2 on
    mask[0, 4:] = 0  # group 1: all off -> removed
    mask[1, :4] = 0
    mask[1, 5:] = 0  # layer 1: group 1 only head 4 on; group 0 removed
    model, gate, pruned, report = _gated_and_pruned("qwen2", "sdpa", mask)
    first, second = report.layers
    assert (first.kept_groups, first.kept_heads, first.partial_groups) == ([0], [2], [0])
    assert (second.kept_groups, second.kept_heads, second.partial_groups) == ([1], [4], [1])
    a0 = _attentions(pruned)[0]
    assert a0.k_proj.out_features == a0.v_proj.out_features == D and a0.q_proj.out_features == D
    # the kept KV group is the original group 0: its k/v rows are unchanged
    k_orig = _attentions(model)[0].k_proj.weight[:D]
    assert torch.equal(a0.k_proj.weight, k_orig)
    assert "kept KV group 0 because some of its query heads are on" in first.describe()
    assert "kept only because some of their query heads are on" in str(report)
    ids, am = _batch()
    with torch.no_grad(), gate.apply(mask):
        gated = model(ids, attention_mask=am).logits
    torch.testing.assert_close(pruned(ids, attention_mask=am).logits, gated, rtol=1e-5, atol=1e-5)


def test_multi_head_attention_removes_exactly_the_off_heads():
    """With one KV head per query head (SALMONN, Qwen2-Audio) every off head goes with its k/v."""
    g = torch.Generator().manual_seed(3)
    mask = (torch.rand(3, HEADS, generator=g) > 0.5).float()
    mask[0] = 1
    model, gate, pruned, report = _gated_and_pruned("llama", "eager", mask, kv=HEADS)
    off = (mask == 0).sum(1).tolist()
    assert [r.removed_heads for r in report.layers] == off == [r.removed_kv_groups for r in report.layers]
    assert all(not r.padding_heads and not r.partial_groups for r in report.layers)
    ids, am = _batch()
    with torch.no_grad(), gate.apply(mask):
        gated = model.generate(ids, attention_mask=am, max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert torch.equal(pruned.generate(ids, attention_mask=am, max_new_tokens=8, do_sample=False, pad_token_id=0),
                       gated)


def test_layer_with_every_head_off_keeps_one_zeroed_head():
    _, _, pruned, report = _gated_and_pruned("llama", "sdpa")
    layer = report.layers[2]
    assert layer.all_off and layer.kept_heads == [0] and layer.padding_heads == [0]
    assert "every head off" in layer.describe()
    attn = _attentions(pruned)[2]
    assert attn.o_proj.weight.shape == (HIDDEN, D) and attn.o_proj.weight.abs().sum() == 0
    x = torch.randn(1, 5, HIDDEN)
    out = pruned.model.layers[2](x, position_embeddings=pruned.model.rotary_emb(x, torch.arange(5)[None]))
    out = out[0] if isinstance(out, tuple) else out
    mlp_only = x + pruned.model.layers[2].mlp(pruned.model.layers[2].post_attention_layernorm(x))
    torch.testing.assert_close(out, mlp_only)  # the attention adds nothing, the residual path works


def test_plan_pads_groups_to_one_width():
    plan = plan_layer([True, False, False, False, True, True, True, False], kv_heads=2)
    assert plan.kept_heads == [0, 1, 2, 4, 5, 6] and plan.padding_heads == [1, 2]
    assert plan.removed_heads == 2 and plan.removed_kv_groups == 0
    assert "off heads 1, 2 kept with zeroed o_proj columns so that every kept group has 3 query heads" in \
        plan.describe()


def test_mask_that_does_not_fit_is_refused_before_any_change():
    model = _decoder("llama", "sdpa")
    before = [a.q_proj.weight.shape for a in _attentions(model)]
    with pytest.raises(ValueError, match="does not fit 4 attention layers"):
        prune_heads(_attentions(model), torch.ones(3, HEADS))
    with pytest.raises(ValueError, match="mask has 6 heads"):
        prune_heads(_attentions(model), torch.ones(4, 6))
    assert [a.q_proj.weight.shape for a in _attentions(model)] == before


def test_lora_wrapped_projections_are_pruned_with_their_factors():
    """SALMONN and Granite Speech put LoRA on q_proj/v_proj: base weights and LoRA B rows shrink together."""
    from peft import LoraConfig, get_peft_model

    base = _decoder("llama", "sdpa")
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                            init_lora_weights=False)).eval()
    pruned = copy.deepcopy(model)
    attns = lambda m: [layer.self_attn for layer in m.base_model.model.model.layers]
    report = prune_heads(attns(pruned), MASK)
    q = attns(pruned)[0].q_proj
    assert q.base_layer.out_features == q.lora_B["default"].out_features == q.out_features == 2 * D
    gate = HeadGate(attns(model), HEADS, D)
    ids, am = _batch()
    with torch.no_grad():
        with gate.apply(MASK):
            gated = model(input_ids=ids, attention_mask=am).logits
        out = pruned(input_ids=ids, attention_mask=am).logits
        with model.disable_adapter(), gate.apply(MASK):
            without_lora = model(input_ids=ids, attention_mask=am).logits
    torch.testing.assert_close(out, gated, rtol=1e-5, atol=1e-5)
    assert (gated - without_lora).abs().max() > 1e-3  # the LoRA factors matter, so they were pruned right
    assert report.removed_kv_groups == 2


@pytest.mark.parametrize("cls", ["VoxtralAdapter", "Qwen2_5OmniAdapter"])
def test_prune_adapter_equals_gated_adapter_loss(cls):
    """On a whole LALM (audio in, LLM pruned): Voxtral's heads x head_dim != hidden; Omni has biases, M-RoPE."""
    from ahamask_lightning import models

    torch.manual_seed(0)
    adapter = getattr(models, cls)(tiny=True, tiny_heads=4, tiny_kv_heads=2).freeze()
    for p in adapter.model.get_decoder().parameters():
        p.data.normal_(0, 0.2, generator=torch.Generator().manual_seed(p.numel()))
    mask = torch.tensor([[1, 0, 0, 0], [0, 0, 1, 1]], dtype=torch.float32)
    pruned = copy.deepcopy(adapter)
    report = prune_adapter(pruned, mask)
    assert report.removed_heads == 5 and report.removed_kv_groups == 2
    g = torch.Generator().manual_seed(1)
    audios = [0.1 * torch.randn(16000, generator=g), 0.1 * torch.randn(24000, generator=g)]
    batch = adapter.collate(audios, [None, "What is the gender of the speaker?"], ["Male", "Female"])
    gate = HeadGate(adapter.gated_attentions(), adapter.num_heads, adapter.head_dim)
    with torch.no_grad():
        with gate.apply(mask):
            gated = adapter.loss(batch)
        plain = adapter.loss(batch)
        out = pruned.loss(batch)
    torch.testing.assert_close(out, gated, rtol=1e-5, atol=1e-5)
    assert abs(out.item() - plain.item()) > 1e-3
    with pytest.raises(RuntimeError, match="o_proj input of layer 0 has width"):  # no gate on a pruned model
        g2 = HeadGate(pruned.gated_attentions(), pruned.num_heads, pruned.head_dim)
        with torch.no_grad(), g2.apply(mask):
            pruned.loss(batch)


def test_prune_cli_on_full_size_meta(tmp_path, capsys):
    """``ahamask prune`` builds Voxtral Mini on meta (32 query / 8 KV heads) and says what it keeps."""
    logits = torch.full((30, 32), 4.0)
    logits[0, :4] = -4.0  # layer 0: KV group 0 entirely off
    logits[1, 4:7] = -4.0  # layer 1: three of group 1's four heads off, group kept
    logits[2] = -4.0  # layer 2: every head off
    path = tmp_path / "m.safetensors"
    save_mask(path, logits, model_id="voxtral-mini-3b")
    assert ahamask(["prune", "--model", "voxtral-mini-3b", "--mask", str(path), "--mask", str(path)]) == 2
    assert "--mask: given 2 times; a pruned model holds one mask" in capsys.readouterr().err
    assert ahamask(["prune", "--model", "voxtral-mini-3b", "--mask", str(path)]) == 0
    out = capsys.readouterr().out
    assert "layer 0: removed 4 of 32 query heads, 1 of 8 KV groups" in out
    assert "layer 1: removed 0 of 32 query heads, 0 of 8 KV groups; kept KV group 1 because" in out
    assert "off heads 4, 5, 6 kept with zeroed o_proj columns so that every kept group has 4" in out
    assert "layer 2: removed 31 of 32 query heads, 7 of 8 KV groups (every head off" in out
    per_q, per_kv = 2 * 3072 * 128, 2 * 3072 * 128  # q row + o column per head; k + v rows per group
    removed = 35 * per_q + 8 * per_kv
    assert f"(-{removed:,}," in out
    assert ahamask(["prune", "--model", "voxtral-mini-3b", "--mask", str(path), "--summary"]) == 0
    assert capsys.readouterr().out.count("layer ") == 0
    assert ahamask(["prune", "--model", "qwen2.5-omni-7b", "--mask", str(path)]) == 2
    assert "does not fit the model, expected (28, 28)" in capsys.readouterr().err
