"""Granite Speech 3.3 (2B, 8B) on transformers' ``GraniteSpeechForConditionalGeneration``.

A conformer CTC encoder, a windowed Q-Former projector (15 frames -> 3 tokens) and a Granite
LLM whose LoRA adapter (r=64 on q_proj, v_proj) is switched on whenever audio is present.
Every AHAMask input has audio, so the adapter keeps the LoRA on for the loss and generation;
the gate's pre-hook sits on ``o_proj``, downstream of the LoRA-adapted q/v projections, so it
gates the adapted attention (peft wraps q_proj/v_proj only; o_proj stays a plain Linear).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from .base import weights_dir
from .chat_collate import (
    TINY_SECONDS,
    ChatLALMAdapter,
    pretrained_model,
    published_name,
    tiny_model,
    unpad,
)
from .full_size import meta_model

if TYPE_CHECKING:
    from peft import LoraConfig
    from torch.utils.hooks import RemovableHandle
    from transformers import GraniteSpeechConfig, GraniteSpeechProcessor

# Granite 3.3 chat format written out, with the system prompt of the granite-speech-3.3
# model card (its date is fixed here so that prompts are reproducible: a **choice**).
SYSTEM = ("Knowledge Cutoff Date: April 2024.\nToday's Date: April 9, 2025.\n"
          "You are Granite, developed by IBM. You are a helpful AI assistant")
TEMPLATE = (f"<|start_of_role|>system<|end_of_role|>{SYSTEM}<|end_of_text|>\n"
            "<|start_of_role|>user<|end_of_role|><|audio|>{text}<|end_of_text|>\n"
            "<|start_of_role|>assistant<|end_of_role|>")
AUDIO_TOKEN = "<|audio|>"
SPECIAL = ["<|end_of_text|>", "<|start_of_role|>", "<|end_of_role|>", AUDIO_TOKEN]
ENV_PATH = "AHAMASK_GRANITE_SPEECH_PATH"

# Published configurations: config.json of ibm-granite/granite-speech-3.3-2b and -8b (values
# written from knowledge of those files, not downloaded here; what the gate relies on is layers,
# query/KV heads and head_dim). adapter_config.json: LoRA r=64, alpha=32 on q_proj, v_proj.
_ENCODER = {"input_dim": 160, "num_layers": 16, "hidden_dim": 1024, "num_heads": 8, "dim_head": 128,
            "output_dim": 348, "context_size": 200, "max_pos_emb": 512, "feedforward_mult": 4,
            "conv_kernel_size": 15, "conv_expansion_factor": 2}
_PROJECTOR = {"model_type": "blip_2_qformer", "hidden_size": 1024, "num_hidden_layers": 2,
              "num_attention_heads": 16, "intermediate_size": 4096, "encoder_hidden_size": 1024,
              "cross_attention_frequency": 1, "max_position_embeddings": 2048, "layer_norm_eps": 1e-12,
              "use_qformer_text_input": False}


def _granite(hidden: int, intermediate: int, logits_scaling: float) -> dict:
    text = {"model_type": "granite", "hidden_size": hidden, "intermediate_size": intermediate,
            "num_hidden_layers": 40, "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 49160,
            "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "embedding_multiplier": 12.0,
            "attention_multiplier": 0.015625, "residual_multiplier": 0.22, "logits_scaling": logits_scaling,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000000.0},
            "tie_word_embeddings": True}
    return {"encoder_config": _ENCODER, "projector_config": _PROJECTOR, "text_config": text,
            "audio_token_index": 49155, "downsample_rate": 5, "window_size": 15, "has_lora_adapter": True}


FULL_SIZE_CONFIGS: dict[str, dict] = {
    "granite-speech-3.3-2b": _granite(2048, 8192, 8.0),
    "granite-speech-3.3-8b": _granite(4096, 12800, 16.0),
}


def tiny_processor() -> GraniteSpeechProcessor:
    """The real processor classes with a small BPE tokenizer and 40 mel bins."""
    from transformers import GraniteSpeechFeatureExtractor, GraniteSpeechProcessor

    from .tiny_lalm import build_tokenizer

    texts = ["the quick brown fox jumps over the lazy dog", "male female yes no",
             TEMPLATE.replace("{text}", ""),
             "can you transcribe the speech into a written format?",
             "What is the gender of the speaker? Answer Male or Female."]
    tok = build_tokenizer(texts, vocab_size=320, special_tokens=SPECIAL, eos="<|end_of_text|>",
                          pad="<|end_of_text|>", bos=None)
    fe = GraniteSpeechFeatureExtractor(n_mels=40)
    return GraniteSpeechProcessor(audio_processor=fe, tokenizer=tok, audio_token=AUDIO_TOKEN)


def tiny_config(processor: GraniteSpeechProcessor, layers: int = 2, heads: int = 4, kv_heads: int = 2,
                hidden: int = 64) -> GraniteSpeechConfig:
    """A tiny Granite Speech: 2-block conformer, 1-layer Q-Former, small Granite LLM."""
    from transformers import GraniteSpeechConfig

    tok = processor.tokenizer
    n_mels = processor.audio_processor.melspec_kwargs["n_mels"]
    return GraniteSpeechConfig(
        encoder_config={"input_dim": 2 * n_mels, "num_layers": 2, "hidden_dim": 32, "num_heads": 2,
                        "output_dim": 8, "context_size": 50, "max_pos_emb": 64, "conv_kernel_size": 5,
                        "dropout": 0.0},
        projector_config={"model_type": "blip_2_qformer", "hidden_size": 32, "num_hidden_layers": 1,
                          "num_attention_heads": 2, "intermediate_size": 64, "encoder_hidden_size": 32,
                          "cross_attention_frequency": 1, "use_qformer_text_input": False},
        text_config={"model_type": "granite", "hidden_size": hidden, "intermediate_size": 2 * hidden,
                     "num_hidden_layers": layers, "num_attention_heads": heads,
                     "num_key_value_heads": kv_heads, "vocab_size": len(tok), "max_position_embeddings": 2048,
                     "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id,
                     "bos_token_id": tok.eos_token_id},
        audio_token_index=tok.convert_tokens_to_ids(AUDIO_TOKEN), has_lora_adapter=True,
    )


def restore_logits_scaling(model: nn.Module) -> RemovableHandle | None:
    """Divide the LM head's output by the Granite LLM's ``logits_scaling`` (8 for the 2B, 16 for the
    8B), as ``GraniteForCausalLM`` does. transformers' ``GraniteSpeechForConditionalGeneration``
    (5.x) applies its own ``lm_head`` without it, so the loss and beam scores would come from
    logits 8-16x sharper than the model's (greedy tokens are the same). A forward hook on the head
    covers every path: the loss, ``generate`` and pruned copies of the attention blocks.
    tests/test_adapters_more.py compares with ``GraniteForCausalLM`` on the same weights, so a
    transformers release that scales by itself fails there instead of scaling twice. Returns the
    hook's handle (None where the scale is 1)."""
    scale = float(getattr(model.config.get_text_config(), "logits_scaling", 1.0) or 1.0)
    if scale == 1.0:
        return None
    return model.get_output_embeddings().register_forward_hook(lambda module, args, out: out / scale)


def tiny_lora() -> LoraConfig:
    """A LoRA like the released one (q_proj, v_proj of the LLM) but small, with random B so it acts."""
    from peft import LoraConfig

    return LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"],
                      init_lora_weights=False)


def full_size_meta(name: str = "granite-speech-3.3-2b") -> tuple[nn.Module, list[nn.Module], Any]:
    """The full-size model on the meta device: (model, gated attentions, text config).

    No LoRA is attached here: it wraps q_proj/v_proj, which changes neither the o_proj the
    gate hooks nor the head count.
    """
    from transformers import GraniteSpeechConfig, GraniteSpeechForConditionalGeneration

    return meta_model(GraniteSpeechForConditionalGeneration, GraniteSpeechConfig(**FULL_SIZE_CONFIGS[name]))


class GraniteSpeechAdapter(ChatLALMAdapter):
    """Args:
        pretrained: local directory of a Granite Speech checkpoint, LoRA adapter included
            (or env ``AHAMASK_GRANITE_SPEECH_PATH``).
        tiny: build a tiny random model of the same classes, with a random LoRA on q/v.
        dtype: weight dtype for real checkpoints.
        gradient_checkpointing: see ``ChatLALMAdapter``.
        feature_cache: refused: the conformer has no padding mask, so a clip's embeddings depend on its batch.
    """

    audio_keys = ("input_features", "input_features_mask")
    encoder_parts = ("encoder", "projector")
    feature_cache_unsupported = ("its conformer encoder has no padding mask, so a clip's audio embeddings depend "
                                 "on the padding of the batch it is in")

    def __init__(self, pretrained: str | None = None, tiny: bool = False, dtype: str = "bfloat16",
                 attn_implementation: str = "sdpa", tiny_layers: int = 2, tiny_heads: int = 4,
                 tiny_kv_heads: int = 2,
                 feature_cache: str | None = None, gradient_checkpointing: bool = False) -> None:
        super().__init__(feature_cache=feature_cache, gradient_checkpointing=gradient_checkpointing)
        from transformers import AutoProcessor, GraniteSpeechForConditionalGeneration

        if tiny:
            self.processor = tiny_processor()
            self.model = tiny_model(GraniteSpeechForConditionalGeneration,
                                    tiny_config(self.processor, tiny_layers, tiny_heads, tiny_kv_heads),
                                    attn_implementation)
            # before any gate is installed, like the released LoRA: the gate sees the adapted model
            self.model.add_adapter(tiny_lora())
            self.max_seconds = TINY_SECONDS
        else:
            path = weights_dir(pretrained, ENV_PATH, "Granite Speech")
            self.processor = AutoProcessor.from_pretrained(path)
            # from_pretrained finds adapter_config.json beside config.json and loads the LoRA
            self.model = pretrained_model(GraniteSpeechForConditionalGeneration, path, dtype, attn_implementation)
        if self.model.config.has_lora_adapter:
            try:  # transformers refuses (ValueError) when no adapter was loaded, (ImportError) without peft
                self.model.enable_adapters()
            except (ValueError, ImportError) as err:
                raise RuntimeError("Granite Speech: the config asks for a LoRA adapter but none was loaded "
                                   "(is peft installed, and adapter_config.json in the checkpoint "
                                   f"directory?): {err}") from None
        self.logits_scaling_hook = restore_logits_scaling(self.model)  # kept: visible, removable
        self.tokenizer = self.processor.tokenizer
        self.feature_extractor = self.processor.audio_processor
        model_id = "granite-speech-tiny" if tiny else published_name(
            FULL_SIZE_CONFIGS, self.model.config.get_text_config(), f"granite-speech-{Path(path).name.lower()}")
        self._finish(model_id, eos="<|end_of_text|>")

    def collate(self, audios: Sequence[torch.Tensor], instructions: Sequence[str | None],
                targets: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        prompts = [TEMPLATE.replace("{text}", ins or "") for ins in instructions]
        waves = [np.asarray(a, dtype=np.float32) for a in audios]
        enc = self.processor(text=prompts, audio=[torch.as_tensor(w) for w in waves], return_tensors="pt",
                             padding=True)
        return self.pack(unpad(enc["input_ids"], enc["attention_mask"]), targets, waves,
                         input_features=enc["input_features"], input_features_mask=enc["input_features_mask"])

    def audio_features(self, audio: dict[str, torch.Tensor]) -> torch.Tensor:
        # the projector's output for the valid windows only, as the model's own merge selects it
        embeds = self.model.get_audio_features(audio["input_features"], return_dict=True).pooler_output
        return embeds[audio["input_features_mask"]]
