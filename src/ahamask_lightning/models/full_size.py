"""Full-size models built on the meta device: head counts and structure without any memory."""
from __future__ import annotations

from collections.abc import Callable

import torch

from ..masking import HeadGate


def qwen2_audio_7b_meta():
    from transformers import Qwen2AudioForConditionalGeneration

    from .qwen2_audio import full_size_config

    with torch.device("meta"):
        model = Qwen2AudioForConditionalGeneration(full_size_config())
    return model, [layer.self_attn for layer in model.get_decoder().layers], model.config.text_config


def _salmonn(variant: str):
    def build():
        from .salmonn import meta_llm  # provided by the SALMONN package

        return meta_llm(variant)

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
