"""Pruned models in use: ``ahamask prune --out`` saves one that loads back and generates the gated
tokens, and the AHAMaskModule ``prune`` option decodes like the gate in ``ahamask test``."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from ahamask_lightning.cli.main import main as ahamask
from ahamask_lightning.masking import HeadGate, save_mask


def _generated_tokens(adapter, batch, **generation) -> torch.Tensor:
    """The token chosen at every decoding step (greedy: the argmax of each lm_head call's last position)."""
    heads = [m for name, m in adapter.named_modules() if name.endswith("lm_head")]
    steps = []
    handle = heads[0].register_forward_hook(lambda m, a, out: steps.append(out[:, -1].argmax(-1)))
    try:
        with torch.no_grad():
            adapter.generate(batch, num_beams=1, do_sample=False, **generation)
    finally:
        handle.remove()
    return torch.stack(steps, dim=1)


def _gated_and_plain_tokens(adapter, batch, mask: torch.Tensor, **generation) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens generated with ``mask`` on the heads, then without any gate (the gate is removed after)."""
    gate = HeadGate(adapter.gated_attentions(), adapter.num_heads, adapter.head_dim)
    with gate.apply(mask):
        gated = _generated_tokens(adapter, batch, **generation)
    gate.remove()
    return gated, _generated_tokens(adapter, batch, **generation)


def _noise_batch(adapter, seconds=(1.0, 1.5)):
    g = torch.Generator().manual_seed(5)
    return adapter.collate([0.1 * torch.randn(int(s * 16000), generator=g) for s in seconds], [None] * len(seconds))


def test_prune_out_on_tiny_lalm_loads_back_and_generates_the_gated_tokens(tmp_path, in_repo, capsys, monkeypatch):
    from ahamask_lightning.analysis.masks import mask_to_logits, random_mask
    from ahamask_lightning.models.tiny_lalm import TinyLALM
    from ahamask_lightning.pruned_model import load_pruned

    mask = random_mask((6, 8), 14, seed=3)
    mask[2] = 0  # a layer with every head off
    save_mask(tmp_path / "m.safetensors", mask_to_logits(mask))
    out = tmp_path / "pruned"
    assert ahamask(["prune", "--model", "tiny", "--weights", "checkpoints/tiny_lalm", "--mask",
                    str(tmp_path / "m.safetensors"), "--out", str(out), "--summary"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    recorded = json.loads((out / "pruning.json").read_text())
    assert [len(r["kept_heads"]) for r in recorded["layers"]] == [max(1, int(n)) for n in mask.sum(1).tolist()]
    original = TinyLALM("checkpoints/tiny_lalm").freeze()
    monkeypatch.chdir(tmp_path)  # the folder loads from anywhere: its spec's checkpoint path is absolute
    loaded = load_pruned(out)
    attn = loaded.gated_attentions()
    assert [a.q_proj.out_features // loaded.head_dim for a in attn] == [len(r["kept_heads"]) for r in recorded["layers"]]
    batch = _noise_batch(original)
    gen = dict(max_new_tokens=10, min_new_tokens=10)
    gated, plain = _gated_and_plain_tokens(original, batch, mask, **gen)
    assert torch.equal(_generated_tokens(loaded, batch, **gen), gated)
    assert not torch.equal(gated, plain)  # the mask changes the tokens, so equality says something


def test_pruned_qwen2_audio_saved_and_loaded_generates_the_gated_tokens(tmp_path):
    """GQA (4 query heads over 2 KV heads): the reloaded model is rebuilt randomly, then its weights are read."""
    from ahamask_lightning.pruned_model import load_pruned, save_pruned
    from ahamask_lightning.serving import build_adapter

    spec = {"class_path": "ahamask_lightning.models.Qwen2AudioAdapter",
            "init_args": {"tiny": True, "tiny_layers": 2, "tiny_heads": 4, "tiny_kv_heads": 2}}
    torch.manual_seed(0)
    adapter = build_adapter(spec)
    for i, block in enumerate(adapter.gated_attentions()):  # larger attention weights: a wrong head shows
        for p in block.parameters():
            p.data.normal_(0, 0.2, generator=torch.Generator().manual_seed(100 * i + p.numel()))
    mask = torch.tensor([[1, 0, 0, 0], [0, 0, 1, 1]], dtype=torch.float32)
    batch = _noise_batch(adapter)
    gen = dict(max_new_tokens=8, min_new_tokens=8)
    gated, plain = _gated_and_plain_tokens(adapter, batch, mask, **gen)
    report = save_pruned(copy.deepcopy(adapter), spec, mask, tmp_path / "q")
    assert report.removed_kv_groups == 2
    torch.manual_seed(1)  # another random initialisation: only the saved weights can give the gated tokens
    loaded = load_pruned(tmp_path / "q")
    assert torch.equal(_generated_tokens(loaded, batch, **gen), gated)
    assert not torch.equal(gated, plain)
    assert [a.k_proj.out_features // loaded.head_dim for a in loaded.gated_attentions()] == [1, 1]


def test_load_pruned_refuses_an_incomplete_directory(tmp_path):
    from ahamask_lightning.pruned_model import load_pruned

    (tmp_path / "model.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="not a pruned model directory, missing mask.safetensors"):
        load_pruned(tmp_path)


def test_module_prune_option_decodes_like_the_gate_and_leaves_the_model_as_it_was(tmp_path):
    from ahamask_lightning.models.tiny_lalm import random_tiny_lalm
    from ahamask_lightning.module import AHAMaskModule

    torch.manual_seed(0)
    adapter = random_tiny_lalm(["male female yes no", "the quick brown fox"], layers=2, heads=4, hidden=32)
    for i, block in enumerate(adapter.gated_attentions()):
        for p in block.parameters():
            p.data.normal_(0, 0.3, generator=torch.Generator().manual_seed(10 * i + p.numel()))
    logits = torch.tensor([[4.0, -4, -4, 4], [-4, -4, 4, -4]])
    save_mask(tmp_path / "m.safetensors", logits)
    gated = AHAMaskModule(adapter, mask=str(tmp_path / "m.safetensors"), generation={"max_new_tokens": 8})
    pruned = AHAMaskModule(copy.deepcopy(adapter), mask=str(tmp_path / "m.safetensors"), prune=True,
                           generation={"max_new_tokens": 8})
    originals = list(pruned.adapter.gated_attentions())
    batch = _noise_batch(adapter)
    text = pruned._generate(batch)
    assert text == gated._generate(batch)
    assert text != AHAMaskModule(adapter, use_mask=False, generation={"max_new_tokens": 8})._generate(batch)
    assert list(pruned.adapter.gated_attentions()) == originals  # swapped back after decoding
    first = pruned.pruned_eval.blocks
    assert [b.q_proj.out_features for b in first] == [2 * 8, 8] and pruned._generate(batch) == text
    assert pruned.pruned_eval.blocks is first  # built once per evaluation mask
    with torch.no_grad():
        pruned.head_mask.logits[1, 0] = 4.0  # the mask moved (e.g. validation during a fit): rebuilt
    pruned._generate(batch)
    assert [b.q_proj.out_features for b in pruned.pruned_eval.blocks] == [2 * 8, 2 * 8]
    with torch.no_grad():
        gated.head_mask.logits[1, 0] = 4.0
    pruned.to(torch.float64), gated.to(torch.float64)  # the copies are no submodules: rebuilt in float64
    batch = {k: v.double() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in batch.items()}
    assert pruned._generate(batch) == gated._generate(batch)
    assert pruned.describe_run()["pruned"] is True and "pruned" not in gated.describe_run()
    with pytest.raises(ValueError, match="prune: needs a binary mask"):
        AHAMaskModule(copy.deepcopy(adapter), estimator="sigmoid", prune=True)


def test_ahamask_test_with_prune_true_writes_the_gated_predictions(synth_corpus, tmp_path, in_repo):
    """``ahamask test ... --model.init_args.prune true`` on the TinyLALM testbed: same predictions as the gate."""
    from ahamask_lightning.analysis.masks import mask_to_logits, random_mask

    save_mask(tmp_path / "m.safetensors", mask_to_logits(random_mask((8, 16), 48, seed=2)))
    m = synth_corpus / "manifests"
    common = ["test", "--config", "experiments/gr_tiny.yaml", "--data.init_args.train", f"[{m}/train/gr.jsonl]",
              "--data.init_args.val", f"[{m}/val/gr.jsonl]", "--data.init_args.test", f"[{m}/test/gr.jsonl]",
              "--data.init_args.batch_size", "4", "--trainer.limit_test_batches", "1", "--trainer.logger", "false",
              "--model.init_args.mask", str(tmp_path / "m.safetensors"), "--model.init_args.generation",
              "{max_new_tokens: 6}"]
    runs = {}
    for prune in ("false", "true"):
        out = tmp_path / f"prune_{prune}"
        assert ahamask(common + ["--trainer.default_root_dir", str(out), "--model.init_args.results_dir", str(out),
                                 "--model.init_args.prune", prune]) == 0
        runs[prune] = (json.loads((out / "test_metrics.json").read_text()),
                       [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()])
    (gated_metrics, gated), (pruned_metrics, pruned) = runs["false"], runs["true"]
    assert len(gated) == 4 and pruned == gated
    assert pruned_metrics["run"].get("pruned") is True and "pruned" not in gated_metrics["run"]
