"""The audio-feature cache: the same loss and mask gradients with and without it, keyed by content and model.

Real adapters (tiny random Qwen2-Audio of transformers' classes, TinyLALM), real collate of
waveforms; the first pass writes one safetensors file per clip, the second reads them.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from gate_helpers import mask_loss_and_grad

from ahamask_lightning.models import Qwen2AudioAdapter
from ahamask_lightning.models.feature_cache import FeatureCache, clip_key
from ahamask_lightning.models.tiny_lalm import TinyLALM, random_tiny_lalm


def _audios(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [0.1 * torch.randn(16000, generator=g), 0.1 * torch.randn(28000, generator=g)]


def _qwen(cache: Path | None, seed: int = 0) -> Qwen2AudioAdapter:
    torch.manual_seed(seed)
    return Qwen2AudioAdapter(tiny=True, feature_cache=str(cache) if cache else None).freeze()


def _tiny(cache: Path | None, seed: int = 0) -> TinyLALM:
    torch.manual_seed(seed)
    ref = random_tiny_lalm(["the quick brown fox", "male female"], layers=2, heads=4, hidden=32)
    model = TinyLALM(checkpoint=None, config=ref.config, tokenizer=ref.tokenizer,
                     feature_cache=str(cache) if cache else None)
    model.load_state_dict(ref.state_dict())
    return model.freeze()


def _entries(root: Path) -> list[Path]:
    return sorted(root.rglob("*.safetensors"))


@pytest.mark.parametrize("build", [_qwen, _tiny], ids=["qwen2_audio", "tiny_lalm"])
def test_cached_epochs_give_the_same_loss_and_gradients(build, tmp_path):
    cache_dir = tmp_path / "cache"
    plain = build(None)
    cached = build(cache_dir)
    instructions, targets = ["What is the gender of the speaker?", None], ["Male", "the quick brown fox"]
    batch = cached.collate(_audios(), instructions, targets)
    assert batch["clip_keys"] == [clip_key(a) for a in _audios()]
    assert "clip_keys" not in plain.collate(_audios(), instructions, targets)

    reference = mask_loss_and_grad(plain, plain.collate(_audios(), instructions, targets))
    first = mask_loss_and_grad(cached, batch)  # epoch 1: encoder runs, entries written
    assert (cached.feature_cache.hits, cached.feature_cache.misses) == (0, 2)
    assert len(_entries(cache_dir)) == 2
    second = mask_loss_and_grad(cached, batch)  # epoch 2: read back, encoder skipped
    assert (cached.feature_cache.hits, cached.feature_cache.misses) == (2, 2)
    for got in (first, second):
        torch.testing.assert_close(got[0], reference[0], rtol=0, atol=0)
        torch.testing.assert_close(got[1], reference[1], rtol=0, atol=0)
    assert not list(cache_dir.rglob("*.tmp"))  # written atomically: no temporary file left


@pytest.mark.parametrize("build", [_qwen, _tiny], ids=["qwen2_audio", "tiny_lalm"])
def test_an_entry_written_under_mixed_precision_is_the_full_precision_one(build, tmp_path):
    """The key cannot hold the trainer's precision (the lookup runs in the loader workers), so the
    entries are computed with autocast off: a bf16-mixed run writes what a 32-true run computes."""
    plain, cached = build(None), build(tmp_path / "cache")
    batch = cached.collate(_audios(), [None, None], ["male", "female"])
    with torch.autocast("cpu", dtype=torch.bfloat16):  # what Lightning's bf16-mixed wraps the step in
        cached.loss(batch)
        assert cached.feature_cache.misses == 2
    reread = build(tmp_path / "cache")  # a 32-true run of the same configuration
    again = reread.collate(_audios(), [None, None], ["male", "female"])
    torch.testing.assert_close(reread.loss(again), plain.loss(plain.collate(_audios(), [None, None], ["male", "female"])),
                               rtol=0, atol=0)
    assert (reread.feature_cache.hits, reread.feature_cache.misses) == (2, 0)


def test_second_epoch_does_not_run_the_encoder(tmp_path):
    adapter = _tiny(tmp_path)
    batch = adapter.collate(_audios(), [None, None], ["male", "female"])
    calls = []
    handle = adapter.audio_encoder.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        adapter.loss(batch)
        adapter.loss(batch)
    handle.remove()
    assert len(calls) == 1


@pytest.mark.parametrize("build", [_qwen, _tiny], ids=["qwen2_audio", "tiny_lalm"])
def test_the_collate_reads_the_entries_and_the_step_reads_no_file(build, tmp_path):
    """The epoch after the first: the collate (a loader worker) carries the entries in the batch, so
    the training step gives the same loss and gradients with the cache's files already gone."""
    cache_dir = tmp_path / "cache"
    cached = build(cache_dir)
    instructions, targets = ["What is the gender of the speaker?", None], ["Male", "the quick brown fox"]
    first = cached.collate(_audios(), instructions, targets)
    assert first["cached_audio"] == [None, None]  # nothing written yet
    reference = mask_loss_and_grad(cached, first)  # writes the entries
    second = cached.collate(_audios(), instructions, targets)
    assert all(isinstance(f, torch.Tensor) for f in second["cached_audio"])
    for entry in _entries(cache_dir):
        entry.unlink()
    hits = cached.feature_cache.hits
    got = mask_loss_and_grad(cached, second)
    assert cached.feature_cache.hits == hits + 2 and not _entries(cache_dir)  # nothing read, nothing rewritten
    torch.testing.assert_close(got[0], reference[0], rtol=0, atol=0)
    torch.testing.assert_close(got[1], reference[1], rtol=0, atol=0)


@pytest.mark.parametrize("build", [_qwen, _tiny], ids=["qwen2_audio", "tiny_lalm"])
def test_other_encoder_weights_use_another_namespace(build, tmp_path):
    a, b = build(tmp_path, seed=0), build(tmp_path, seed=1)
    assert a.feature_cache.namespace != b.feature_cache.namespace
    batch = a.collate(_audios(), [None, None], ["male", "female"])
    with torch.no_grad():
        a.loss(batch)
        b.loss(batch)
    assert b.feature_cache.hits == 0 and b.feature_cache.misses == 2  # nothing of a's read by b
    assert build(tmp_path, seed=0).feature_cache.namespace == a.feature_cache.namespace  # stable across runs


def test_partial_batch_computes_only_the_misses(tmp_path):
    cache = FeatureCache(tmp_path, {"model_id": "x"})
    seen = []

    def compute(idx):
        seen.append(list(idx))
        return [torch.full((2, 3), float(i)) for i in idx]

    cache.features(["k1", "k2"], compute, "cpu", torch.float32)
    out = cache.features(["k2", "k3", "k1"], compute, "cpu", torch.float32)
    assert seen == [[0, 1], [1]]
    assert [float(t[0, 0]) for t in out] == [1.0, 1.0, 0.0]


def test_corrupt_entry_is_named(tmp_path):
    cache = FeatureCache(tmp_path, {"model_id": "x"})
    from safetensors.torch import save_file

    p = cache.path("ab" * 32)
    p.parent.mkdir(parents=True)
    save_file({"other": torch.zeros(1)}, str(p))
    with pytest.raises(ValueError, match=str(p.name)):
        cache.load("ab" * 32)


def test_entry_of_another_namespace_is_a_miss_and_is_overwritten(tmp_path):
    cache = FeatureCache(tmp_path, {"model_id": "x"})
    from safetensors.torch import save_file

    key = "cd" * 32
    p = cache.path(key)
    p.parent.mkdir(parents=True)
    save_file({"features": torch.ones(2, 3)}, str(p), metadata={"namespace": "someone-else", "key": key})
    assert cache.load(key) is None
    out = cache.features([key], lambda idx: [torch.zeros(2, 3) for _ in idx], "cpu", torch.float32)
    assert cache.misses == 1 and torch.equal(out[0], torch.zeros(2, 3))
    assert torch.equal(cache.load(key), torch.zeros(2, 3))  # rewritten with this namespace
