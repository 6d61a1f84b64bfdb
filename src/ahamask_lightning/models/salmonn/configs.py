"""Configurations of SALMONN's parts: the released sizes and tiny ones of the same classes.

Full-size values come from the released checkpoints' key lists (the official module rebuilt with its pinned
versions); they let the full-size structure be built on the meta device without any file.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .beats import BEATS_ITER3_PLUS_CFG

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import LlamaForCausalLM

# openai/whisper-large-v2, encoder only (SALMONN never runs the decoder).
WHISPER_LARGE_V2 = dict(
    num_mel_bins=80, encoder_layers=32, encoder_attention_heads=20, encoder_ffn_dim=5120, d_model=1280,
    max_source_positions=1500, activation_function="gelu", dropout=0.0, attention_dropout=0.0,
    activation_dropout=0.0, scale_embedding=False,
)

# Vicuna v1.1 13B and v1.5 7B; vocab 32000 + the "[PAD]" token SALMONN adds (resized to 32001).
VICUNA = {
    "13b": dict(vocab_size=32001, hidden_size=5120, intermediate_size=13824, num_hidden_layers=40,
                num_attention_heads=40, num_key_value_heads=40, max_position_embeddings=2048, rms_norm_eps=1e-6,
                hidden_act="silu", bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False),
    "7b": dict(vocab_size=32001, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
               num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096, rms_norm_eps=1e-5,
               hidden_act="silu", bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False),
}

# LoRA of the released checkpoint: peft's llama default targets, scaling 32 / 8 = 4.
LORA = dict(r=8, lora_alpha=32, lora_dropout=0.1, target_modules=["q_proj", "v_proj"])



def with_released_lora(llm: LlamaForCausalLM) -> PeftModel:
    """``llm`` wrapped by peft with the released LoRA (:data:`LORA`). peft's default keeps the adapters
    in float32 on a half-precision base, like peft 0.3's fp32 LoRA branch in the released training.
    While wrapping, peft reads transformers' deprecated ``is_gradient_checkpointing``; that
    FutureWarning is about peft, not about anything a user of this package can change."""
    from peft import LoraConfig, get_peft_model

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(llm, LoraConfig(task_type="CAUSAL_LM", **LORA))


PROMPT_TEMPLATE = "USER: <Speech><SpeechHere></Speech> {}\nASSISTANT:"


@dataclass
class SalmonnSpec:
    """Everything that fixes the module structure of one SALMONN variant."""

    whisper: dict
    beats: dict
    llm: dict
    qformer: dict = field(default_factory=lambda: dict(qformer_hidden=768, qformer_layers=2, qformer_heads=12,
                                                       qformer_intermediate=3072))


def full_spec(variant: str) -> SalmonnSpec:
    if variant not in VICUNA:
        raise ValueError(f"SALMONN variant: expected one of {sorted(VICUNA)} or 'tiny', got {variant!r}")
    return SalmonnSpec(whisper=dict(WHISPER_LARGE_V2), beats=dict(BEATS_ITER3_PLUS_CFG), llm=dict(VICUNA[variant]))


def tiny_spec(vocab_size: int, layers: int = 2, heads: int = 4, hidden: int = 64) -> SalmonnSpec:
    """Small random parts with the real geometry where it matters: 80 mel x 3000 frames into
    Whisper (1500 outputs, so 88 windows), 128-bin fbank and 16x16 patches into BEATs."""
    whisper = dict(WHISPER_LARGE_V2, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=64, d_model=32)
    beats = dict(BEATS_ITER3_PLUS_CFG, embed_dim=16, encoder_layers=2, encoder_embed_dim=32,
                 encoder_ffn_embed_dim=64, encoder_attention_heads=4, conv_pos=16, conv_pos_groups=4,
                 predictor_class=5)
    llm = dict(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
               num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=512,
               rms_norm_eps=1e-6, hidden_act="silu", tie_word_embeddings=False)
    qformer = dict(qformer_hidden=32, qformer_layers=2, qformer_heads=4, qformer_intermediate=64)
    return SalmonnSpec(whisper=whisper, beats=beats, llm=llm, qformer=qformer)
