"""Adapters on transformers' own classes: Qwen2.5-Omni thinker, Voxtral, Granite Speech, Audio Flamingo 3.

For each: tiny random models of the real classes run ``ahamask fit`` then ``ahamask test``
end to end; the head gate equals zeroing ``o_proj`` input columns on the full adapter with
audio (eager and sdpa, forward and cached generation); only LLM layers are gated; the prompt
with and without instruction is the family's chat format; and the full-size configuration,
built on the meta device, reports its gated heads.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from ahamask_lightning import models
from ahamask_lightning.cli.main import main as ahamask
from ahamask_lightning.masking import HeadGate, find_o_proj, load_mask
from ahamask_lightning.models.full_size import FULL_SIZE, gated_heads

ADAPTERS = {  # yaml key -> (adapter class, tiny model_id)
    "qwen2_5_omni": ("Qwen2_5OmniAdapter", "qwen2.5-omni-tiny"),
    "voxtral": ("VoxtralAdapter", "voxtral-tiny"),
    "granite_speech": ("GraniteSpeechAdapter", "granite-speech-tiny"),
    "audio_flamingo3": ("AudioFlamingo3Adapter", "audio-flamingo-3-tiny"),
}
# Published sizes: (layers, query heads, KV heads). All of them are grouped-query models.
FULL = {
    "qwen2.5-omni-7b": (28, 28, 4), "qwen2.5-omni-3b": (36, 16, 2),
    "voxtral-mini-3b": (30, 32, 8), "voxtral-small-24b": (40, 32, 8),
    "granite-speech-3.3-2b": (40, 32, 8), "granite-speech-3.3-8b": (40, 32, 8),
    "audio-flamingo-3": (28, 28, 4),
}


def _audios(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [0.1 * torch.randn(16000, generator=g), 0.1 * torch.randn(28000, generator=g)]


def _tiny(key: str, attn: str = "sdpa", seed: int = 0):
    torch.manual_seed(seed)
    return getattr(models, ADAPTERS[key][0])(tiny=True, attn_implementation=attn).freeze()


def _data_args(corpus: Path) -> list[str]:
    m = corpus / "manifests"
    return ["--data.init_args.train", f"[{m}/train/gr.jsonl]", "--data.init_args.val", f"[{m}/val/gr.jsonl]",
            "--data.init_args.test", f"[{m}/test/gr.jsonl]"]


@pytest.mark.parametrize("key", list(ADAPTERS))
def test_tiny_fit_then_test(key, synth_corpus, tmp_path, in_repo):
    cfg = f"experiments/gr_{key}_tiny.yaml"
    root, out = tmp_path / "run", tmp_path / "test"
    assert ahamask(["fit", "--config", cfg, *_data_args(synth_corpus), "--trainer.default_root_dir",
                    str(root), "--trainer.max_steps", "2", "--trainer.logger", "false"]) == 0
    masks = list(root.rglob("mask.safetensors"))
    assert len(masks) == 1
    mask = load_mask(masks[0], shape=(2, 4))
    assert mask.metadata["model_id"] == ADAPTERS[key][1]
    assert ahamask(["test", "--config", cfg, *_data_args(synth_corpus), "--model.init_args.mask",
                    str(masks[0]), "--model.init_args.results_dir", str(out), "--trainer.logger", "false",
                    "--trainer.limit_test_batches", "1"]) == 0
    rec = json.loads((out / "test_metrics.json").read_text())
    assert 0.0 <= rec["metrics"]["test/gr/acc"] <= 100.0 and rec["run"]["prompt"] == "none"
    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert preds and all(p["instruction"] is None for p in preds)


def _zeroed_copy(adapter, mask: torch.Tensor):
    """Reference: a deep copy whose o_proj input columns of the off heads are zero."""
    ref = copy.deepcopy(adapter)
    d = ref.head_dim
    for i, attn in enumerate(ref.gated_attentions()):
        w = find_o_proj(attn).weight.data
        for j in range(mask.shape[1]):
            if mask[i, j] == 0:
                w[:, j * d:(j + 1) * d] = 0
    return ref


def _logits(adapter, batch) -> torch.Tensor:
    with torch.no_grad():
        return adapter.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             **adapter._audio_inputs(batch)).logits


def _generate_ids(adapter, batch) -> torch.Tensor:
    with torch.no_grad():
        return adapter.model.generate(input_ids=batch["gen_input_ids"],
                                      attention_mask=batch["gen_attention_mask"], max_new_tokens=6,
                                      do_sample=False, pad_token_id=adapter.pad_id,
                                      eos_token_id=adapter.eos_id, **adapter._audio_inputs(batch))


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("key", list(ADAPTERS))
def test_gate_equals_zeroed_o_proj_columns(key, attn):
    adapter = _tiny(key, attn)
    for p in adapter.model.get_decoder().parameters():  # larger LLM weights: a wrong gate changes the argmax
        p.data.normal_(0, 0.2, generator=torch.Generator().manual_seed(p.numel()))
    g = torch.Generator().manual_seed(1)
    mask = (torch.rand(adapter.num_layers, adapter.num_heads, generator=g) > 0.5).float()
    ref = _zeroed_copy(adapter, mask)  # before the gate: the copy carries no hooks
    gate = HeadGate(adapter.gated_attentions(), adapter.num_heads, adapter.head_dim)
    batch = adapter.collate(_audios(), ["What is the gender of the speaker?", None], ["Male", "Female"])
    with gate.apply(mask):
        gated = _logits(adapter, batch)
    torch.testing.assert_close(gated, _logits(ref, batch), rtol=1e-5, atol=1e-5)
    assert (gated - _logits(adapter, batch)).abs().max() > 1e-3  # the mask really changed something
    if attn == "sdpa":  # cached generation (left-padded prompts) is gated the same way
        with gate.apply(mask):
            out = _generate_ids(adapter, batch)
        assert torch.equal(out, _generate_ids(ref, batch))
        assert not torch.equal(out, _generate_ids(adapter, batch))


def test_granite_gate_sees_the_lora_adapted_attention():
    """Granite's LoRA is on with audio; the gate hooks o_proj downstream of the LoRA'd q/v."""
    adapter = _tiny("granite_speech")
    attn = adapter.gated_attentions()[0]
    assert hasattr(attn.q_proj, "lora_A") and hasattr(attn.v_proj, "lora_A")
    assert isinstance(find_o_proj(attn), torch.nn.Linear) and not hasattr(find_o_proj(attn), "lora_A")
    mask = torch.ones(adapter.num_layers, adapter.num_heads)
    mask[:, 1] = 0
    ref = _zeroed_copy(adapter, mask)
    gate = HeadGate(adapter.gated_attentions(), adapter.num_heads, adapter.head_dim)
    batch = adapter.collate(_audios(1), [None, None], ["Male", "Female"])
    with gate.apply(mask):
        gated = _logits(adapter, batch)
    torch.testing.assert_close(gated, _logits(ref, batch), rtol=1e-5, atol=1e-5)
    ref.model.disable_adapters()  # the same zeroed heads without LoRA is a different model
    assert (gated - _logits(ref, batch)).abs().max() > 1e-4


def test_granite_speech_logits_are_the_granite_llms():
    """Granite divides its LM head's output by ``logits_scaling``; the Granite Speech model of the
    installed transformers does not, so the adapter does: its logits equal ``GraniteForCausalLM``'s
    on the same weights (a transformers release that scales by itself would make them 8x smaller)."""
    from transformers import GraniteForCausalLM, GraniteSpeechForConditionalGeneration

    from ahamask_lightning.models.granite_speech import restore_logits_scaling, tiny_config, tiny_processor

    cfg = tiny_config(tiny_processor())
    cfg.text_config.logits_scaling = 8.0
    torch.manual_seed(0)
    speech = GraniteSpeechForConditionalGeneration(cfg).eval()
    llm = GraniteForCausalLM(cfg.text_config).eval()
    llm.model.load_state_dict(speech.model.language_model.state_dict())
    llm.lm_head.load_state_dict(speech.lm_head.state_dict())
    ids = torch.tensor([[5, 9, 17, 30, 41]])
    with torch.no_grad():
        reference, unscaled = llm(ids).logits, speech(input_ids=ids).logits
        restore_logits_scaling(speech)
        scaled = speech(input_ids=ids).logits
    torch.testing.assert_close(scaled, reference)
    assert not torch.allclose(unscaled, reference)


@pytest.mark.parametrize("heads", [2, 4, 8])
def test_tiny_qwen2_5_omni_runs_with_any_head_count(heads):
    """The tiny thinker's rotary sections add up to head_dim / 2 for any head count."""
    torch.manual_seed(0)
    adapter = models.Qwen2_5OmniAdapter(tiny=True, tiny_heads=heads, tiny_kv_heads=2).freeze()
    assert sum(adapter.model.config.get_text_config().rope_parameters["mrope_section"]) == 64 // heads // 2
    assert torch.isfinite(adapter.loss(adapter.collate(_audios()[:1], [None], ["hello"])))


@pytest.mark.parametrize("key", ["qwen2_5_omni", "voxtral", "audio_flamingo3"])
def test_collate_cuts_audio_longer_than_its_window(key):
    """The Whisper-window models: a clip longer than ``max_seconds`` given to ``collate`` directly
    (not through the data layer) gives one window, not extra ones that beam search would mix up
    (Granite's conformer has no window: it takes long audio whole)."""
    adapter = _tiny(key)
    sr = adapter.sample_rate
    long, short = torch.randn(int((adapter.max_seconds + 1.5) * sr)) * 0.1, torch.randn(sr) * 0.1
    batch = adapter.collate([long, short], [None, None])
    cut = adapter.collate([long[: int(adapter.max_seconds * sr)], short], [None, None])
    assert batch.keys() == cut.keys()
    for name, value in batch.items():
        assert torch.equal(value, cut[name]) if torch.is_tensor(value) else value == cut[name], name


@pytest.mark.parametrize("key", list(ADAPTERS))
def test_only_llm_attention_is_gated(key):
    adapter = _tiny(key)
    llm = adapter.model.get_decoder()
    gated = adapter.gated_attentions()
    assert len(gated) == adapter.model.config.get_text_config().num_hidden_layers == adapter.num_layers
    inside = {id(m) for m in llm.modules()}
    assert all(id(a) in inside for a in gated)
    base = adapter.model.model
    encoder = next(getattr(base, n) for n in ("audio_tower", "encoder") if hasattr(base, n))
    assert not {id(m) for m in encoder.modules()} & {id(find_o_proj(a)) for a in gated}


@pytest.mark.parametrize("key", list(ADAPTERS))
def test_prompt_with_and_without_instruction(key):
    adapter = _tiny(key)
    module = __import__(type(adapter).__module__, fromlist=["TEMPLATE"])
    batch = adapter.collate(_audios(), ["Answer Male or Female.", None])
    assert "input_ids" not in batch  # prompt only: generation inputs
    tok = adapter.tokenizer
    rows = zip(batch["gen_input_ids"], batch["gen_attention_mask"])
    with_ins, without = (tok.decode(r[m.bool()]) for r, m in rows)
    audio_id = tok.convert_tokens_to_ids(module.AUDIO_TOKEN)
    n_audio = [(r == audio_id).sum().item() for r in batch["gen_input_ids"]]
    assert n_audio[0] > 0 and n_audio[1] >= n_audio[0]  # longer audio, at least as many audio tokens
    squash = lambda s: "".join(s.replace(module.AUDIO_TOKEN, "").split())
    assert squash(without) == squash(module.TEMPLATE.replace("{text}", ""))
    assert squash(with_ins) == squash(module.TEMPLATE.replace("{text}", "Answer Male or Female."))
    left = batch["gen_attention_mask"]
    assert (left[:, -1] == 1).all()  # left-padded for generation


@pytest.mark.parametrize("key", ["granite_speech", "audio_flamingo3"])
def test_processor_prompt_equals_template_encoding(key):
    """The real processor's expansion and the token-by-token template encoding give the same ids."""
    from ahamask_lightning.models.chat_collate import encode_template

    adapter = _tiny(key)
    module = __import__(type(adapter).__module__, fromlist=["TEMPLATE"])
    batch = adapter.collate(_audios(), ["Answer Male or Female.", None])
    audio_id = adapter.tokenizer.convert_tokens_to_ids(module.AUDIO_TOKEN)
    texts = ["Answer Male or Female.", ""]
    for row, mask, text in zip(batch["gen_input_ids"], batch["gen_attention_mask"], texts):
        ids = row[mask.bool()].tolist()
        expected = encode_template(adapter.tokenizer, module.TEMPLATE, module.SPECIAL, text,
                                   module.AUDIO_TOKEN, ids.count(audio_id))
        assert ids == expected


@pytest.mark.parametrize("name", list(FULL))
def test_full_size_on_meta_reports_gated_heads(name):
    layers, heads, kv = FULL[name]
    assert name in FULL_SIZE
    assert gated_heads(name) == {"layers": layers, "heads": heads, "kv_heads": kv, "gated": layers * heads}


def test_model_heads_cli_names_gqa(capsys):
    assert ahamask(["model", "heads", "--model", "voxtral-mini-3b"]) == 0
    out = capsys.readouterr().out
    assert "30 layers x 32 query heads = 960 gated heads, 8 KV heads (GQA" in out


MODULES = {"qwen2.5-omni": "qwen2_5_omni", "voxtral": "voxtral", "granite-speech": "granite_speech",
           "audio-flamingo-3": "audio_flamingo3"}


@pytest.mark.parametrize("name", list(FULL))
def test_real_checkpoints_are_named_by_their_published_shape(name):
    from types import SimpleNamespace

    from ahamask_lightning.models.chat_collate import published_name

    family = next(MODULES[f] for f in MODULES if name.startswith(f))
    module = __import__(f"ahamask_lightning.models.{family}", fromlist=["FULL_SIZE_CONFIGS"])
    text = SimpleNamespace(**module.FULL_SIZE_CONFIGS[name]["text_config"])
    assert published_name(module.FULL_SIZE_CONFIGS, text, "fallback") == name
    text.num_hidden_layers += 1
    assert published_name(module.FULL_SIZE_CONFIGS, text, "fallback") == "fallback"


@pytest.mark.parametrize("key", list(ADAPTERS))
def test_missing_weights_are_one_clear_error(key, monkeypatch):
    module = __import__(f"ahamask_lightning.models.{key}", fromlist=["ENV_PATH"])
    monkeypatch.delenv(module.ENV_PATH, raising=False)
    with pytest.raises(FileNotFoundError, match=module.ENV_PATH):
        getattr(models, ADAPTERS[key][0])(pretrained=None)


def test_granite_checkpoint_without_its_lora_is_one_clear_error(tmp_path):
    """A Granite Speech checkpoint whose config asks for the LoRA but lacks adapter_config.json (a copy
    cut short): one line saying what is missing, not the model running without its adapter."""
    from transformers import GraniteSpeechForConditionalGeneration

    from ahamask_lightning.models import granite_speech

    processor = granite_speech.tiny_processor()
    config = granite_speech.tiny_config(processor)
    assert config.has_lora_adapter
    GraniteSpeechForConditionalGeneration(config).save_pretrained(tmp_path)  # base weights only
    processor.save_pretrained(tmp_path)
    with pytest.raises(RuntimeError, match="asks for a LoRA adapter but none was loaded") as err:
        models.GraniteSpeechAdapter(pretrained=str(tmp_path), dtype="float32")
    assert "\n" not in str(err.value) and "adapter_config.json" in str(err.value)


def test_voxtral_without_mistral_common_is_one_clear_error(tmp_path, monkeypatch):
    """Real Voxtral checkpoints load their tekken tokenizer through mistral-common (an optional
    extra): without it, one line naming the install, before the tokenizer or any weight loads."""
    import importlib.util

    if importlib.util.find_spec("mistral_common") is not None:
        pytest.skip("mistral-common is installed here")
    monkeypatch.delenv("AHAMASK_VOXTRAL_PATH", raising=False)
    with pytest.raises(RuntimeError, match=r"mistral-common .*pip install 'ahamask-lightning\[voxtral\]'") as err:
        models.VoxtralAdapter(pretrained=str(tmp_path))
    assert str(tmp_path) in str(err.value) and "\n" not in str(err.value)
