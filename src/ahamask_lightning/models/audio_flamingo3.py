"""Audio Flamingo 3 on transformers' ``AudioFlamingo3ForConditionalGeneration``.

A Whisper-large-v3-style encoder (30 s windows, average-pooled to 750 frames), a 2-layer MLP
projector and a Qwen2.5-7B LLM; ``<sound>`` is expanded by ``AudioFlamingo3Processor`` to one
token per pooled frame. Audio is cut at one window (30 s), so ``input_features`` has one row
per sample and beam search expands it like the text.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from .base import weights_dir
from .chat_collate import TINY_SECONDS, ChatLALMAdapter, pretrained_model, tiny_model, unpad
from .full_size import meta_model

if TYPE_CHECKING:
    from transformers import AudioFlamingo3Config, AudioFlamingo3Processor

# The ChatML template of the converted checkpoint (nvidia/audio-flamingo-3-hf) written out:
# default system prompt, then the audio placeholder at the start of the user turn, directly
# followed by the instruction (no instruction = empty text).
TEMPLATE = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
            "<sound>{text}<|im_end|>\n<|im_start|>assistant\n")
AUDIO_TOKEN = "<sound>"
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", AUDIO_TOKEN]
ENV_PATH = "AHAMASK_AUDIO_FLAMINGO3_PATH"

# Published configuration: the text config written by transformers' conversion script
# (convert_audioflamingo3_to_hf.py: Qwen2.5-7B, 28 layers, 28 query / 4 KV heads) and the
# encoder defaults of AudioFlamingo3EncoderConfig (Whisper-large-v3 shape).
FULL_SIZE_CONFIGS: dict[str, dict] = {
    "audio-flamingo-3": {
        "audio_config": {"model_type": "audioflamingo3_encoder", "hidden_size": 1280,
                         "intermediate_size": 5120, "num_hidden_layers": 32, "num_attention_heads": 20,
                         "num_mel_bins": 128, "max_source_positions": 1500},
        "text_config": {"model_type": "qwen2", "hidden_size": 3584, "intermediate_size": 18944,
                        "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
                        "vocab_size": 151672,
                        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
                        "bos_token_id": 151643, "eos_token_id": 151645},
        "audio_token_id": 151669,
    },
}


def tiny_processor(chunk_seconds: int = 4) -> AudioFlamingo3Processor:
    """The real processor classes with a small BPE tokenizer and a short feature window."""
    from transformers import AudioFlamingo3Processor, WhisperFeatureExtractor

    from .tiny_lalm import build_tokenizer

    texts = ["the quick brown fox jumps over the lazy dog", "male female yes no",
             TEMPLATE.replace("{text}", ""),
             "Transcribe the input speech.", "What is the gender of the speaker? Answer Male or Female."]
    tok = build_tokenizer(texts, vocab_size=300, special_tokens=SPECIAL, eos="<|im_end|>",
                          pad="<|endoftext|>", bos=None)
    fe = WhisperFeatureExtractor(feature_size=128, sampling_rate=16000, chunk_length=chunk_seconds,
                                 return_attention_mask=True)
    return AudioFlamingo3Processor(feature_extractor=fe, tokenizer=tok, audio_token=AUDIO_TOKEN)


def tiny_config(processor: AudioFlamingo3Processor, layers: int = 2, heads: int = 4, kv_heads: int = 2,
                hidden: int = 64, chunk_seconds: int = 4) -> AudioFlamingo3Config:
    from transformers import AudioFlamingo3Config

    tok = processor.tokenizer
    return AudioFlamingo3Config(
        audio_config={"model_type": "audioflamingo3_encoder", "hidden_size": 32, "intermediate_size": 64,
                      "num_hidden_layers": 1, "num_attention_heads": 2, "num_mel_bins": 128,
                      "max_source_positions": chunk_seconds * 50},
        text_config={"model_type": "qwen2", "hidden_size": hidden, "intermediate_size": 2 * hidden,
                     "num_hidden_layers": layers, "num_attention_heads": heads,
                     "num_key_value_heads": kv_heads, "vocab_size": len(tok), "max_position_embeddings": 1024,
                     "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id},
        audio_token_id=tok.convert_tokens_to_ids(AUDIO_TOKEN),
    )


def full_size_meta(name: str = "audio-flamingo-3") -> tuple[nn.Module, list[nn.Module], Any]:
    """The full-size model on the meta device: (model, gated attentions, text config)."""
    from transformers import AudioFlamingo3Config, AudioFlamingo3ForConditionalGeneration

    return meta_model(AudioFlamingo3ForConditionalGeneration, AudioFlamingo3Config(**FULL_SIZE_CONFIGS[name]))


class AudioFlamingo3Adapter(ChatLALMAdapter):
    """Args:
        pretrained: local directory of the HF checkpoint (``nvidia/audio-flamingo-3-hf`` layout,
            or env ``AHAMASK_AUDIO_FLAMINGO3_PATH``).
        tiny: build a tiny random model of the same classes (tests, CPU demos); no files needed.
        dtype: weight dtype for real checkpoints.
        feature_cache, gradient_checkpointing: see ``ChatLALMAdapter``.
    """

    audio_keys = ("input_features", "input_features_mask")

    def __init__(self, pretrained: str | None = None, tiny: bool = False, dtype: str = "bfloat16",
                 attn_implementation: str = "sdpa", tiny_layers: int = 2, tiny_heads: int = 4,
                 tiny_kv_heads: int = 2,
                 feature_cache: str | None = None, gradient_checkpointing: bool = False) -> None:
        super().__init__(feature_cache=feature_cache, gradient_checkpointing=gradient_checkpointing)
        from transformers import AudioFlamingo3ForConditionalGeneration, AutoProcessor

        if tiny:
            self.processor = tiny_processor(int(TINY_SECONDS))
            self.model = tiny_model(AudioFlamingo3ForConditionalGeneration,
                                    tiny_config(self.processor, tiny_layers, tiny_heads, tiny_kv_heads,
                                                chunk_seconds=int(TINY_SECONDS)),
                                    attn_implementation)
        else:
            path = weights_dir(pretrained, ENV_PATH, "Audio Flamingo 3")
            self.processor = AutoProcessor.from_pretrained(path)
            self.model = pretrained_model(AudioFlamingo3ForConditionalGeneration, path, dtype, attn_implementation)
        # one window per sample keeps input_features aligned with the batch (see module doc)
        self.max_seconds = min(self.max_seconds, float(self.processor.feature_extractor.chunk_length))
        self.tokenizer = self.processor.tokenizer
        self.feature_extractor = self.processor.feature_extractor
        self._finish("audio-flamingo-3-tiny" if tiny else "audio-flamingo-3", eos="<|im_end|>")

    def collate(self, audios: Sequence[torch.Tensor], instructions: Sequence[str | None],
                targets: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        prompts = [TEMPLATE.replace("{text}", ins or "") for ins in instructions]
        # cut here too, not only in the data layer: the processor splits longer audio into more
        # windows than samples, and generate's beam expansion would then mix up the windows
        keep = int(self.max_seconds * self.sample_rate)
        waves = [np.asarray(a, dtype=np.float32)[:keep] for a in audios]
        enc = self.processor(text=prompts, audio=waves, sampling_rate=self.sample_rate)
        return self.pack(unpad(enc["input_ids"], enc["attention_mask"]), targets, waves,
                         input_features=enc["input_features"], input_features_mask=enc["input_features_mask"])
