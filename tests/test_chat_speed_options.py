"""The training-speed options of the shared chat adapter, on every chat LALM's tiny random model.

``feature_cache`` (frozen encoder output per clip on disk) and ``gradient_checkpointing`` (LLM
layers recomputed in backward) give the same loss and mask gradients as the plain adapter, alone
and together; the first pass writes the cache and the second reads it; checkpointed layers really
run twice. A clip's cached embeddings are its own (the same alone as in a padded batch) for the
families that allow the cache; Granite Speech's are not, so it refuses the option before loading.
TinyLALM (which had the cache already) and SALMONN (whose LoRA has dropout inside the layers) take
``gradient_checkpointing`` too; only the layer modules switch to training mode, so that dropout stays off.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from gate_helpers import mask_loss_and_grad

from ahamask_lightning import models
from ahamask_lightning.models.base import enable_llm_checkpointing

CHAT = ["Qwen2AudioAdapter", "Qwen2_5OmniAdapter", "VoxtralAdapter", "GraniteSpeechAdapter", "AudioFlamingo3Adapter"]
CACHEABLE = [name for name in CHAT if getattr(models, name).feature_cache_unsupported is None]
OPTIONS = [(True, False), (False, True), (True, True)]  # (feature cache, checkpointing)


def _audios(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [0.1 * torch.randn(16000, generator=g), 0.1 * torch.randn(28000, generator=g)]


def _build(name: str, cache: Path | None = None, checkpointing: bool = False):
    torch.manual_seed(0)
    return getattr(models, name)(tiny=True, feature_cache=str(cache) if cache else None,
                                 gradient_checkpointing=checkpointing).freeze()


def _batch(adapter) -> dict:
    return adapter.collate(_audios(), ["What is the gender of the speaker?", None], ["Male", "the quick brown fox"])


@pytest.mark.parametrize("cache,checkpointing", OPTIONS, ids=["cache", "checkpointing", "both"])
@pytest.mark.parametrize("name", CHAT)
def test_options_keep_loss_and_mask_gradients(name, cache, checkpointing, tmp_path):
    if cache and name not in CACHEABLE:
        pytest.skip(f"{name} refuses feature_cache (test_granite_refuses_the_cache_before_loading)")
    plain = _build(name)
    reference = mask_loss_and_grad(plain, _batch(plain))
    assert reference[1].abs().max() > 0  # not a comparison of zero gradients
    fast = _build(name, tmp_path / "cache" if cache else None, checkpointing)
    batch = _batch(fast)
    assert ("clip_keys" in batch) == cache
    calls = []
    # transformers checkpoints a layer's forward, so its submodules run again in backward (a pre-hook:
    # the recomputation stops once the tensors backward needs exist, before the last forward hooks)
    handle = fast.model.get_decoder().layers[0].mlp.register_forward_pre_hook(lambda *args: calls.append(1))
    runs = [mask_loss_and_grad(fast, batch) for _ in range(2)]  # the cache: written, then read back
    handle.remove()
    assert len(calls) == (4 if checkpointing else 2)  # a checkpointed layer runs again in backward
    if cache:
        assert (fast.feature_cache.misses, fast.feature_cache.hits) == (2, 2)
        assert len(list((tmp_path / "cache").rglob("*.safetensors"))) == 2
    for loss, grad in runs:  # the same operations on the same numbers: equal bit for bit on the CPU
        torch.testing.assert_close(loss, reference[0], rtol=0, atol=0)
        torch.testing.assert_close(grad, reference[1], rtol=0, atol=0)


@pytest.mark.parametrize("name", CACHEABLE)
def test_a_clips_embeddings_do_not_depend_on_its_batch(name):
    """What caching per clip relies on: the same embeddings alone and beside a longer, padded clip."""
    adapter = _build(name)
    short, long_ = _audios(3)
    alone = adapter.audio_embeddings(adapter.collate([short], [None], ["yes"]))[0]
    batched = adapter.audio_embeddings(adapter.collate([short, long_], [None, None], ["yes", "no"]))[0]
    assert alone.shape == batched.shape
    torch.testing.assert_close(alone, batched, rtol=1e-5, atol=1e-6)


def test_granite_embeddings_depend_on_the_batch():
    """Why Granite Speech refuses the cache: padding added for a longer clip changes a clip's embeddings."""
    adapter = _build("GraniteSpeechAdapter")
    short, long_ = _audios(3)
    alone = adapter.audio_embeddings(adapter.collate([short], [None], ["yes"]))[0]
    batched = adapter.audio_embeddings(adapter.collate([short, long_], [None, None], ["yes", "no"]))[0]
    assert alone.shape == batched.shape and (alone - batched).abs().max() > 1e-4


def test_granite_refuses_the_cache_before_loading(tmp_path, monkeypatch):
    from ahamask_lightning.models import granite_speech

    monkeypatch.delenv(granite_speech.ENV_PATH, raising=False)
    # no weights anywhere: the option is refused before the missing checkpoint would be noticed
    with pytest.raises(ValueError, match="^feature_cache: ") as err:
        models.GraniteSpeechAdapter(pretrained=None, feature_cache=str(tmp_path))
    assert "\n" not in str(err.value) and "padding" in str(err.value)
    assert not any(tmp_path.iterdir())  # nothing written


def assert_checkpointed_like_plain(fast, plain, batch: dict, first_layer: torch.nn.Module) -> None:
    """The checkpointed adapter ``fast`` gives ``plain``'s loss and mask gradients bit for bit, and its
    first decoder layer really runs again in backward."""
    calls = []
    handle = first_layer.mlp.register_forward_pre_hook(lambda *args: calls.append(1))
    loss, grad = mask_loss_and_grad(fast, batch)
    handle.remove()
    assert len(calls) == 2
    ref_loss, ref_grad = mask_loss_and_grad(plain, batch)
    assert ref_grad.abs().max() > 0  # not a comparison of zero gradients
    torch.testing.assert_close(loss, ref_loss, rtol=0, atol=0)
    torch.testing.assert_close(grad, ref_grad, rtol=0, atol=0)


def test_checkpointing_keeps_dropout_inside_the_layers_off():
    """Only the layer modules switch to training mode: a LoRA with dropout inside them stays a no-op,
    so the checkpointed loss and mask gradients equal the plain adapter's bit for bit."""
    from peft import LoraConfig

    lora = LoraConfig(r=2, lora_alpha=4, lora_dropout=0.5, target_modules=["q_proj"], init_lora_weights=False)
    plain, fast = _build("Qwen2AudioAdapter"), _build("Qwen2AudioAdapter", checkpointing=True)
    for adapter in (plain, fast):
        torch.manual_seed(1)  # the same random LoRA weights in both
        adapter.model.add_adapter(lora)
        adapter.freeze()
    assert_checkpointed_like_plain(fast, plain, _batch(fast), fast.model.get_decoder().layers[0])
    assert not any(m.training for m in fast.model.modules())  # back in eval mode after the step


class LayerWrapper(torch.nn.Module):
    """What FSDP's auto-wrap leaves in ``decoder.layers``: a module around the layer that forwards calls
    and attribute reads to it (FSDP itself needs an accelerator, torch refuses the CPU)."""

    def __init__(self, layer: torch.nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, *args, **kwargs):
        return self.layer(*args, **kwargs)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.layer, name)


def test_checkpointing_reaches_layers_inside_a_wrapper():
    plain, fast = _build("Qwen2AudioAdapter"), _build("Qwen2AudioAdapter", checkpointing=True)
    layers = fast.model.get_decoder().layers
    for i, layer in enumerate(layers):
        layers[i] = LayerWrapper(layer)
    assert_checkpointed_like_plain(fast, plain, _batch(fast), layers[0].layer)


def test_checkpointing_refuses_layers_that_drop_out_in_their_own_forward():
    """Whisper's decoder layers apply dropout in the layer's forward: training mode there would change
    the function, so it is refused in one line; with dropout 0 the same decoder is accepted."""
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperDecoder

    small = dict(d_model=16, decoder_layers=2, decoder_attention_heads=2, decoder_ffn_dim=32, vocab_size=50,
                 max_target_positions=32, pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)
    with pytest.raises(ValueError, match="^gradient_checkpointing: LLM layer 0 .*dropout=0.1") as err:
        enable_llm_checkpointing(WhisperDecoder(WhisperConfig(dropout=0.1, **small)))
    assert "\n" not in str(err.value)
    enable_llm_checkpointing(WhisperDecoder(WhisperConfig(dropout=0.0, activation_dropout=0.0, **small)))


def test_salmonn_checkpointing_keeps_loss_and_mask_gradients():
    """SALMONN's Vicuna carries a LoRA with dropout 0.1 on q/v (the released configuration): checkpointed,
    the loss and mask gradients equal the plain adapter's, and the layers really run twice."""
    from ahamask_lightning.models.salmonn import SalmonnAdapter

    adapters = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        adapters.append(SalmonnAdapter(tiny=True, gradient_checkpointing=checkpointing))
    plain, fast = adapters
    assert any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in fast.llm.model.layers.modules())
    batch = fast.collate(_audios(), [None, None], ["male", "the quick brown fox"])
    assert_checkpointed_like_plain(fast, plain, batch, fast.llm.model.layers[0])


def test_tiny_lalm_checkpointing_keeps_loss_and_mask_gradients():
    from ahamask_lightning.models.tiny_lalm import TinyLALM, random_tiny_lalm

    torch.manual_seed(0)
    plain = random_tiny_lalm(["male female", "the quick brown fox"], layers=2, heads=4, hidden=32).freeze()
    fast = TinyLALM(checkpoint=None, config=plain.config, tokenizer=plain.tokenizer,
                    gradient_checkpointing=True)
    fast.load_state_dict(plain.state_dict())
    fast.freeze()
    batch = _batch(plain)
    assert_checkpointed_like_plain(fast, plain, batch, fast.llm.model.layers[0])
