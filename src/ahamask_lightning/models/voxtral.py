"""Voxtral (Mini 3B, Small 24B) on transformers' ``VoxtralForConditionalGeneration``.

A Whisper-large-v3 encoder sees fixed 30 s windows (3000 mel frames -> 1500 frames); the
projector stacks 4 frames, so each window is 375 ``[AUDIO]`` tokens (12.5 per second) in a
Mistral ``[INST]`` turn. Audio is cut at one window (30 s), so ``input_features`` has one row
per sample and beam search expands it like the text.

Voxtral's processor builds audio prompts only through ``mistral_common`` chat requests; the
prompt is written out here instead and encoded token by token around the special tokens,
which is how ``mistral_common`` encodes a user turn (special ids + text encoded without
BOS/EOS). Real checkpoints still need ``pip install mistral-common`` for their tekken
tokenizer; the tiny model uses a small BPE tokenizer with the same special tokens.
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
    from transformers import (
        PreTrainedTokenizerBase,
        PreTrainedTokenizerFast,
        VoxtralConfig,
        VoxtralEncoderConfig,
    )

# One user turn: audio first, then the instruction (no instruction = empty text), then the
# answer follows [/INST] and ends with </s>. This is the chat form, not the transcription
# form ("[/INST]lang:en[TRANSCRIBE]"): AHAMask replaces the instruction, so no task hint.
TEMPLATE = "<s>[INST][BEGIN_AUDIO][AUDIO]{text}[/INST]"
AUDIO_TOKEN = "[AUDIO]"
SPECIAL = ["<s>", "</s>", "[INST]", "[/INST]", "[BEGIN_AUDIO]", AUDIO_TOKEN]
ENV_PATH = "AHAMASK_VOXTRAL_PATH"

# Published configurations: config.json of mistralai/Voxtral-Mini-3B-2507 and
# Voxtral-Small-24B-2507 (values written from knowledge of those files, not downloaded here; the
# Mini text defaults match transformers' VoxtralConfig). LLM: llama class, 32 query / 8 KV heads,
# head_dim 128 (so o_proj's input is 4096 wide on the 3072-wide Mini); encoder: Whisper-large-v3.
_ENCODER = {"hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32,
            "num_attention_heads": 20, "num_mel_bins": 128, "max_source_positions": 1500, "vocab_size": 51866}


def _voxtral(hidden: int, intermediate: int, layers: int) -> dict:
    text = {"model_type": "llama", "hidden_size": hidden, "intermediate_size": intermediate,
            "num_hidden_layers": layers, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
            "vocab_size": 131072, "max_position_embeddings": 131072, "rms_norm_eps": 1e-5,
            "rope_parameters": {"rope_type": "default", "rope_theta": 100000000.0}}
    return {"audio_config": _ENCODER, "text_config": text, "audio_token_id": 24,
            "projector_hidden_act": "gelu"}


FULL_SIZE_CONFIGS: dict[str, dict] = {
    "voxtral-mini-3b": _voxtral(3072, 8192, 30),
    "voxtral-small-24b": _voxtral(5120, 32768, 40),
}


def tokens_per_window(audio_config: VoxtralEncoderConfig) -> int:
    """[AUDIO] tokens per 30 s window: encoder frames regrouped into projector inputs."""
    return audio_config.max_source_positions * audio_config.hidden_size // audio_config.intermediate_size


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    from .tiny_lalm import build_tokenizer

    texts = ["the quick brown fox jumps over the lazy dog", "male female yes no",
             "recognize the speech and give me the transcription",
             "What is the gender of the speaker? Answer Male or Female."]
    return build_tokenizer(texts, vocab_size=300, special_tokens=SPECIAL, eos="</s>", pad="<pad>", bos="<s>")


def tiny_config(tokenizer: PreTrainedTokenizerBase, layers: int = 2, heads: int = 4, kv_heads: int = 2,
                hidden: int = 64, chunk_seconds: int = 4) -> VoxtralConfig:
    """A tiny Voxtral: 1-layer Whisper-style encoder on ``chunk_seconds`` windows, small llama LLM.

    Like the real Mini (32 heads x 128 = 4096 > 3072 hidden), heads x head_dim is wider than
    the hidden size, so the gate's head split is tested where it differs from hidden / heads.
    """
    from transformers import VoxtralConfig

    return VoxtralConfig(
        # intermediate_size is both the encoder FFN width and the projector's 4-frame stack width
        audio_config={"hidden_size": 32, "intermediate_size": 128, "num_hidden_layers": 1,
                      "num_attention_heads": 2, "num_mel_bins": 128,
                      "max_source_positions": chunk_seconds * 50},
        text_config={"model_type": "llama", "hidden_size": hidden, "intermediate_size": 2 * hidden,
                     "num_hidden_layers": layers, "num_attention_heads": heads,
                     "num_key_value_heads": kv_heads, "head_dim": 3 * hidden // (2 * heads),
                     "vocab_size": len(tokenizer), "max_position_embeddings": 1024,
                     "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id,
                     "bos_token_id": tokenizer.bos_token_id},
        audio_token_id=tokenizer.convert_tokens_to_ids(AUDIO_TOKEN),
    )


def full_size_meta(name: str = "voxtral-mini-3b") -> tuple[nn.Module, list[nn.Module], Any]:
    """The full-size model on the meta device: (model, gated attentions, text config)."""
    from transformers import VoxtralConfig, VoxtralForConditionalGeneration

    return meta_model(VoxtralForConditionalGeneration, VoxtralConfig(**FULL_SIZE_CONFIGS[name]))


def require_mistral_common(path: str) -> None:
    """Stop in one line, before any weight loads, when the tekken tokenizer's library is absent.

    transformers loads a Voxtral checkpoint's ``tekken.json`` only through ``mistral_common``, an
    optional dependency of both transformers and this package; without it the failure surfaces
    as a multi-line ImportError from inside ``AutoTokenizer``.
    """
    import importlib.util

    if importlib.util.find_spec("mistral_common") is None:
        raise RuntimeError(f"Voxtral weights at {path} need the mistral-common package for their tekken "
                           "tokenizer: pip install 'ahamask-lightning[voxtral]'")

class VoxtralAdapter(ChatLALMAdapter):
    """Args:
        pretrained: local directory of a Voxtral checkpoint (or env ``AHAMASK_VOXTRAL_PATH``).
        tiny: build a tiny random model of the same classes (tests, CPU demos); no files needed.
        dtype: weight dtype for real checkpoints.
        feature_cache, gradient_checkpointing: see ``ChatLALMAdapter``.
    """

    audio_keys = ("input_features",)

    def __init__(self, pretrained: str | None = None, tiny: bool = False, dtype: str = "bfloat16",
                 attn_implementation: str = "sdpa", tiny_layers: int = 2, tiny_heads: int = 4,
                 tiny_kv_heads: int = 2,
                 feature_cache: str | None = None, gradient_checkpointing: bool = False) -> None:
        super().__init__(feature_cache=feature_cache, gradient_checkpointing=gradient_checkpointing)
        from transformers import AutoTokenizer, VoxtralForConditionalGeneration, WhisperFeatureExtractor

        if tiny:
            self.tokenizer = tiny_tokenizer()
            self.feature_extractor = WhisperFeatureExtractor(feature_size=128, sampling_rate=16000,
                                                             chunk_length=int(TINY_SECONDS))
            self.model = tiny_model(VoxtralForConditionalGeneration,
                                    tiny_config(self.tokenizer, tiny_layers, tiny_heads, tiny_kv_heads),
                                    attn_implementation)
            model_id = "voxtral-tiny"
        else:
            path = weights_dir(pretrained, ENV_PATH, "Voxtral")
            require_mistral_common(path)
            self.tokenizer = AutoTokenizer.from_pretrained(path)  # tekken via mistral-common
            self.feature_extractor = WhisperFeatureExtractor.from_pretrained(path)
            self.model = pretrained_model(VoxtralForConditionalGeneration, path, dtype, attn_implementation)
            model_id = published_name(FULL_SIZE_CONFIGS, self.model.config.get_text_config(),
                                      f"voxtral-{Path(path).name.lower()}")
        # one window per sample keeps input_features aligned with the batch (see module doc)
        self.max_seconds = min(self.max_seconds, float(self.feature_extractor.chunk_length))
        self.n_audio = tokens_per_window(self.model.config.audio_config)
        self._finish(model_id, eos="</s>")

    def prompt_ids(self, instruction: str | None) -> list[int]:
        return encode_template(self.tokenizer, TEMPLATE, SPECIAL, instruction or "", AUDIO_TOKEN,
                               self.n_audio)

    def collate(self, audios: Sequence[torch.Tensor], instructions: Sequence[str | None],
                targets: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        # one full window per sample: the encoder only accepts exactly max_source_positions * 2 frames
        waves = [np.asarray(a, dtype=np.float32) for a in audios]
        feats = self.feature_extractor(waves, sampling_rate=self.sample_rate, padding="max_length",
                                       truncation=True, return_tensors="pt")
        prompts = [self.prompt_ids(ins) for ins in instructions]
        return self.pack(prompts, targets, waves, input_features=feats["input_features"])
