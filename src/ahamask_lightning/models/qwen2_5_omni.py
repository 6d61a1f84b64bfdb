"""Qwen2.5-Omni (3B, 7B), the *thinker* only, on transformers' ``Qwen2_5OmniThinkerForConditionalGeneration``.

The thinker is the text-generating half of Omni (audio + vision encoders + a Qwen2.5 LLM);
the talker / token2wav speech half is never loaded. Only the LLM's attention heads are gated.

The audio goes through Whisper log-mels padded to 30 s with a frame mask; ``<|AUDIO|>`` is
repeated once per encoder output frame (two stride-2 reductions of the valid mel frames,
i.e. 25 tokens per second), the count ``Qwen2_5OmniProcessor`` uses. The processor itself is
not used: it also needs the image/video processors (torchvision), which audio never touches.
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
    encode_template,
    pretrained_model,
    published_name,
    tiny_model,
)
from .full_size import meta_model

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast, Qwen2_5OmniThinkerConfig

# Chat template of the Omni family written out: the official system prompt (the one the
# model card asks for), one user turn holding the audio then the instruction. No instruction
# = the same prompt with empty user text.
SYSTEM = ("You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, capable of perceiving "
          "auditory and visual inputs, as well as generating text and speech.")
TEMPLATE = (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n"
            "<|audio_bos|><|AUDIO|><|audio_eos|>{text}<|im_end|>\n<|im_start|>assistant\n")
AUDIO_TOKEN = "<|AUDIO|>"
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|audio_bos|>", AUDIO_TOKEN, "<|audio_eos|>",
           "<|vision_bos|>", "<|vision_eos|>", "<|IMAGE|>", "<|VIDEO|>"]
ENV_PATH = "AHAMASK_QWEN2_5_OMNI_PATH"

# Published thinker configurations: ``thinker_config`` in config.json of Qwen/Qwen2.5-Omni-7B
# and -3B (values written from knowledge of those files, not downloaded here; the 7B ones are
# also transformers' Qwen2_5OmniThinkerConfig defaults). Only the fields that shape the model
# are listed; the rest keep transformers' defaults.
_ROPE = {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]}
_AUDIO = {"d_model": 1280, "encoder_layers": 32, "encoder_attention_heads": 20, "encoder_ffn_dim": 5120,
          "num_mel_bins": 128, "n_window": 100, "max_source_positions": 1500}
_VISION = {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16}


def _thinker(hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int, vocab: int) -> dict:
    text = {"hidden_size": hidden, "intermediate_size": intermediate, "num_hidden_layers": layers,
            "num_attention_heads": heads, "num_key_value_heads": kv_heads, "vocab_size": vocab,
            "max_position_embeddings": 32768, "rope_parameters": _ROPE}
    return {"text_config": text, "audio_config": {**_AUDIO, "output_dim": hidden},
            "vision_config": {**_VISION, "out_hidden_size": hidden}}


FULL_SIZE_CONFIGS: dict[str, dict] = {
    "qwen2.5-omni-7b": _thinker(3584, 18944, 28, 28, 4, 152064),
    "qwen2.5-omni-3b": _thinker(2048, 11008, 36, 16, 2, 151936),
}


def audio_token_count(mel_frames: torch.Tensor) -> torch.Tensor:
    """Encoder output frames per audio: conv stride 2, then average pooling stride 2."""
    after_conv = (mel_frames - 1) // 2 + 1
    return (after_conv - 2) // 2 + 1


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    from .tiny_lalm import build_tokenizer

    texts = ["the quick brown fox jumps over the lazy dog", "male female yes no",
             TEMPLATE.replace("{text}", ""),
             "recognize the speech and give me the transcription",
             "What is the gender of the speaker? Answer Male or Female."]
    return build_tokenizer(texts, vocab_size=320, special_tokens=SPECIAL, eos="<|im_end|>",
                           pad="<|endoftext|>", bos=None)


def tiny_config(tokenizer: PreTrainedTokenizerBase, layers: int = 2, heads: int = 4, kv_heads: int = 2,
                hidden: int = 64) -> Qwen2_5OmniThinkerConfig:
    """A tiny thinker of the real classes: 1-layer audio and vision encoders, a small Qwen2.5 LLM."""
    from transformers import Qwen2_5OmniThinkerConfig

    ids = tokenizer.convert_tokens_to_ids
    head_dim = hidden // heads
    # the real split 16/24/24 of 64 = head_dim / 2, scaled; the sections must add up to head_dim / 2
    half = head_dim // 2
    temporal = half // 4
    height = (half - temporal) // 2
    section = [temporal, height, half - temporal - height]
    rope = {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": section}
    return Qwen2_5OmniThinkerConfig(
        audio_config={"d_model": 32, "encoder_layers": 1, "encoder_attention_heads": 2, "encoder_ffn_dim": 64,
                      "num_mel_bins": 128, "output_dim": hidden, "n_window": 100,
                      "max_source_positions": 1500},
        vision_config={"depth": 1, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
                       "out_hidden_size": hidden, "fullatt_block_indexes": [0]},
        text_config={"hidden_size": hidden, "intermediate_size": 2 * hidden, "num_hidden_layers": layers,
                     "num_attention_heads": heads, "num_key_value_heads": kv_heads,
                     "vocab_size": len(tokenizer), "max_position_embeddings": 2048, "rope_parameters": rope,
                     "eos_token_id": ids("<|im_end|>"), "pad_token_id": ids("<|endoftext|>")},
        audio_token_index=ids(AUDIO_TOKEN), image_token_index=ids("<|IMAGE|>"),
        video_token_index=ids("<|VIDEO|>"),
        audio_start_token_id=ids("<|audio_bos|>"), audio_end_token_id=ids("<|audio_eos|>"),
        vision_start_token_id=ids("<|vision_bos|>"), vision_end_token_id=ids("<|vision_eos|>"),
    )


def full_size_meta(name: str = "qwen2.5-omni-7b") -> tuple[nn.Module, list[nn.Module], Any]:
    """The full-size thinker on the meta device: (model, gated attentions, text config)."""
    from transformers import Qwen2_5OmniThinkerConfig, Qwen2_5OmniThinkerForConditionalGeneration

    config = Qwen2_5OmniThinkerConfig(**FULL_SIZE_CONFIGS[name])
    return meta_model(Qwen2_5OmniThinkerForConditionalGeneration, config)


class Qwen2_5OmniAdapter(ChatLALMAdapter):
    """Args:
        pretrained: local directory of a Qwen2.5-Omni checkpoint (or env ``AHAMASK_QWEN2_5_OMNI_PATH``);
            only the thinker's weights are loaded from it.
        tiny: build a tiny random thinker of the same classes (tests, CPU demos); no files needed.
        dtype: weight dtype for real checkpoints.
        feature_cache, gradient_checkpointing: see ``ChatLALMAdapter``.
    """

    audio_keys = ("input_features", "feature_attention_mask")
    encoder_parts = ("audio_tower",)

    def __init__(self, pretrained: str | None = None, tiny: bool = False, dtype: str = "bfloat16",
                 attn_implementation: str = "sdpa", tiny_layers: int = 2, tiny_heads: int = 4,
                 tiny_kv_heads: int = 2,
                 feature_cache: str | None = None, gradient_checkpointing: bool = False) -> None:
        super().__init__(feature_cache=feature_cache, gradient_checkpointing=gradient_checkpointing)
        from transformers import (
            AutoTokenizer,
            Qwen2_5OmniForConditionalGeneration,
            Qwen2_5OmniThinkerForConditionalGeneration,
            WhisperFeatureExtractor,
        )

        if tiny:
            self.tokenizer = tiny_tokenizer()
            self.feature_extractor = WhisperFeatureExtractor(feature_size=128, sampling_rate=16000,
                                                             chunk_length=int(TINY_SECONDS))
            self.model = tiny_model(Qwen2_5OmniThinkerForConditionalGeneration,
                                    tiny_config(self.tokenizer, tiny_layers, tiny_heads, tiny_kv_heads),
                                    attn_implementation)
            self.max_seconds = TINY_SECONDS
            model_id = "qwen2.5-omni-tiny"
        else:
            path = weights_dir(pretrained, ENV_PATH, "Qwen2.5-Omni")
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.feature_extractor = WhisperFeatureExtractor.from_pretrained(path)
            # The documented loader of the full checkpoint; without audio output the talker and
            # token2wav are never built, so only the thinker's weights are read.
            self.model = pretrained_model(Qwen2_5OmniForConditionalGeneration, path, dtype, attn_implementation,
                                          enable_audio_output=False).thinker
            model_id = published_name(FULL_SIZE_CONFIGS, self.model.config.get_text_config(),
                                      f"qwen2.5-omni-{Path(path).name.lower()}")
        self._finish(model_id, eos="<|im_end|>")

    def prompt_ids(self, instruction: str | None, n_audio: int) -> list[int]:
        return encode_template(self.tokenizer, TEMPLATE, SPECIAL, instruction or "", AUDIO_TOKEN, n_audio)

    def collate(self, audios: Sequence[torch.Tensor], instructions: Sequence[str | None],
                targets: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        waves = [np.asarray(a, dtype=np.float32) for a in audios]
        feats = self.feature_extractor(waves, sampling_rate=self.sample_rate, padding="max_length",
                                       truncation=True, return_attention_mask=True, return_tensors="pt")
        n_audio = audio_token_count(feats["attention_mask"].sum(-1))
        prompts = [self.prompt_ids(ins, int(n)) for ins, n in zip(instructions, n_audio)]
        return self.pack(prompts, targets, waves, input_features=feats["input_features"],
                         feature_attention_mask=feats["attention_mask"])

    def audio_features(self, audio: dict[str, torch.Tensor]) -> torch.Tensor:
        # the thinker's audio tower runs each clip's valid frames on their own: no padding reaches them
        return self.model.get_audio_features(**audio, return_dict=True).last_hidden_state

    def embeds_inputs(self, batch: dict[str, torch.Tensor], embeds: torch.Tensor) -> dict[str, torch.Tensor]:
        # the thinker derives its 3-D (mRoPE) positions from the token ids and the audio lengths
        return {"input_ids": batch["input_ids"], "inputs_embeds": embeds,
                "feature_attention_mask": batch["feature_attention_mask"]}
