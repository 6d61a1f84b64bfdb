"""Full-size models built on the meta device: head counts and structure without any memory."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..masking import HeadGate


def meta_model(model_class: type[nn.Module], config: Any) -> tuple[nn.Module, list[nn.Module], Any]:
    """``model_class(config)`` on the meta device: (model, its decoder's attention modules, text config)."""
    with torch.device("meta"):
        model = model_class(config)
    return model, [layer.self_attn for layer in model.get_decoder().layers], model.config.text_config


def qwen2_audio_7b_meta() -> tuple[nn.Module, list[nn.Module], Any]:
    from transformers import Qwen2AudioForConditionalGeneration

    from .qwen2_audio import full_size_config

    return meta_model(Qwen2AudioForConditionalGeneration, full_size_config())


def _salmonn(variant: str):
    def build():
        # Only the LLM carries gated heads: Vicuna as LlamaForCausalLM with SALMONN's LoRA on q/v.
        from transformers import LlamaConfig, LlamaForCausalLM

        from .salmonn.configs import full_spec, with_released_lora

        cfg = LlamaConfig(**full_spec(variant).llm)
        with torch.device("meta"):
            llm = with_released_lora(LlamaForCausalLM(cfg))
        return llm, [layer.self_attn for layer in llm.base_model.model.model.layers], cfg

    return build


FULL_SIZE: dict[str, Callable] = {
    "qwen2-audio-7b": qwen2_audio_7b_meta,
    "salmonn-13b": _salmonn("13b"),
    "salmonn-7b": _salmonn("7b"),
}


def gated_heads(name: str) -> dict[str, int]:
    """Layers, query heads and KV heads the gate sees on the full-size model ``name``."""
    if name not in FULL_SIZE:
        raise ValueError(f"--model: unknown model {name!r}, expected one of {', '.join(FULL_SIZE)}")
    model, attentions, cfg = FULL_SIZE[name]()
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    gate = HeadGate(attentions, heads, head_dim)
    gate.remove()
    return {"layers": gate.num_layers, "heads": heads, "kv_heads": getattr(cfg, "num_key_value_heads", heads) or heads,
            "gated": gate.num_layers * heads}


def _native(module: str, name: str) -> Callable:
    """Lazy builder of a full-size model whose adapter module holds its published configuration."""
    def build():
        from importlib import import_module

        return import_module(f"{__package__}.{module}").full_size_meta(name)

    return build


FULL_SIZE.update({
    "qwen2.5-omni-7b": _native("qwen2_5_omni", "qwen2.5-omni-7b"),
    "qwen2.5-omni-3b": _native("qwen2_5_omni", "qwen2.5-omni-3b"),
    "voxtral-mini-3b": _native("voxtral", "voxtral-mini-3b"),
    "voxtral-small-24b": _native("voxtral", "voxtral-small-24b"),
    "granite-speech-3.3-2b": _native("granite_speech", "granite-speech-3.3-2b"),
    "granite-speech-3.3-8b": _native("granite_speech", "granite-speech-3.3-8b"),
    "audio-flamingo-3": _native("audio_flamingo3", "audio-flamingo-3"),
})
