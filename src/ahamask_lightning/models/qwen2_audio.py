"""Qwen2-Audio-7B (Instruct and Base) on transformers' own ``Qwen2AudioForConditionalGeneration``.

The processor expands ``<|AUDIO|>`` to one token per 40 ms of audio; the model scatters the
audio features into those positions. Training sequences are prompt + target (right-padded,
labels only on the target); generation prompts are left-padded. Loss, generation, the feature
cache and activation checkpointing come from ``ChatLALMAdapter``.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from .base import weights_dir
from .chat_collate import TINY_SECONDS, ChatLALMAdapter, pretrained_model, tiny_model, unpad

if TYPE_CHECKING:
    from transformers import Qwen2AudioConfig, Qwen2AudioProcessor

INSTRUCT_TEMPLATE = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    "Audio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\n{}<|im_end|>\n<|im_start|>assistant\n"
)
BASE_TEMPLATE = "<|audio_bos|><|AUDIO|><|audio_eos|>{}"
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|audio_bos|>", "<|AUDIO|>", "<|audio_eos|>"]
ENV_PATH = "AHAMASK_QWEN2AUDIO_PATH"


# The published Qwen2-Audio-7B sizes, shipped with the package so the full-size structure can be
# built on the meta device without any download.
FULL_SIZE_CONFIG = Path(__file__).resolve().parent / "configs" / "qwen2_audio_7b.json"


def full_size_config(path: str | Path | None = None) -> Qwen2AudioConfig:
    """The Qwen2-Audio-7B configuration: ``path``, or the one shipped in the package."""
    from transformers import Qwen2AudioConfig

    p = Path(path) if path else FULL_SIZE_CONFIG
    if not p.is_file():
        raise FileNotFoundError(f"{p}: Qwen2-Audio configuration not found (expected a config.json file)")
    return Qwen2AudioConfig.from_dict(json.loads(p.read_text()))


def tiny_processor(chunk_seconds: int = 4) -> Qwen2AudioProcessor:
    """A processor of the real classes with a small BPE tokenizer and a short feature window."""
    from transformers import Qwen2AudioProcessor, WhisperFeatureExtractor

    from .tiny_lalm import build_tokenizer

    texts = ["the quick brown fox jumps over the lazy dog", "male female yes no", "you are a helpful assistant",
             "system user assistant audio", "recognize the speech and give me the transcription",
             INSTRUCT_TEMPLATE, "What is the gender of the speaker? Answer Male or Female."]
    tok = build_tokenizer(texts, vocab_size=300, special_tokens=SPECIAL, eos="<|endoftext|>", pad="<|endoftext|>",
                          bos=None)
    fe = WhisperFeatureExtractor(feature_size=128, sampling_rate=16000, chunk_length=chunk_seconds)
    return Qwen2AudioProcessor(feature_extractor=fe, tokenizer=tok)


def tiny_config(processor: Qwen2AudioProcessor, layers: int = 2, heads: int = 4, kv_heads: int = 2,
                hidden: int = 64, chunk_seconds: int = 4, vocab_size: int | None = None,
                intermediate: int | None = None, audio: dict | None = None) -> Qwen2AudioConfig:
    """A random-weights configuration of the real classes: the tokenizer's special ids, ``vocab_size``
    rows (default: the tokenizer's size; larger for cost measurements) and the audio encoder
    ``audio`` (Whisper-encoder fields; default a 1-layer, 32-wide encoder)."""
    from transformers import Qwen2AudioConfig

    tok = processor.tokenizer
    audio_config = dict(d_model=32, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=64)
    audio_config.update(audio or {})
    audio_config.update(num_mel_bins=128, max_source_positions=chunk_seconds * 50)
    return Qwen2AudioConfig(
        audio_config=audio_config,
        text_config=dict(model_type="qwen2", hidden_size=hidden, intermediate_size=intermediate or 2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         vocab_size=max(vocab_size or 0, len(tok)), max_position_embeddings=4096,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        audio_token_id=tok.convert_tokens_to_ids("<|AUDIO|>"),
    )


class Qwen2AudioAdapter(ChatLALMAdapter):
    """Args:
        variant: ``instruct`` (ChatML prompt) or ``base`` (audio then plain text).
        pretrained: local directory of the HF checkpoint (or env ``AHAMASK_QWEN2AUDIO_PATH``).
        tiny: build a tiny random model of the same classes (tests, CPU demos); no files needed.
        dtype: weight dtype for real checkpoints.
        random_config: with ``tiny``, a ``Qwen2AudioConfig`` as a dict (``to_dict()``) to build with
            random weights instead of the tiny one (cost measurements: bench/); its audio token and eos/pad ids are set to the
            tiny tokenizer's and its feature window follows ``audio_config.max_source_positions``.
        feature_cache, gradient_checkpointing: see ``ChatLALMAdapter``.
    """

    audio_keys = ("input_features", "feature_attention_mask")

    def __init__(self, variant: str = "instruct", pretrained: str | None = None, tiny: bool = False,
                 dtype: str = "bfloat16", attn_implementation: str = "sdpa", tiny_layers: int = 2,
                 tiny_heads: int = 4, tiny_kv_heads: int = 2, random_config: dict | None = None,
                 feature_cache: str | None = None, gradient_checkpointing: bool = False) -> None:
        super().__init__(feature_cache=feature_cache, gradient_checkpointing=gradient_checkpointing)
        if variant not in ("instruct", "base"):
            raise ValueError(f"Qwen2AudioAdapter.variant: expected 'instruct' or 'base', got {variant!r}")
        from transformers import AutoProcessor, Qwen2AudioConfig, Qwen2AudioForConditionalGeneration

        self.variant = variant
        self.template = INSTRUCT_TEMPLATE if variant == "instruct" else BASE_TEMPLATE
        if tiny:
            config = None if random_config is None else Qwen2AudioConfig.from_dict(random_config)
            chunk = int(TINY_SECONDS) if config is None else config.audio_config.max_source_positions // 50
            self.processor = tiny_processor(chunk)
            if config is None:
                config = tiny_config(self.processor, tiny_layers, tiny_heads, tiny_kv_heads, chunk_seconds=chunk)
            else:
                tok = self.processor.tokenizer
                config.audio_token_id = tok.convert_tokens_to_ids("<|AUDIO|>")
                config.text_config.eos_token_id, config.text_config.pad_token_id = tok.eos_token_id, tok.pad_token_id
            self.model = tiny_model(Qwen2AudioForConditionalGeneration, config, attn_implementation)
            model_id = f"qwen2-audio-tiny-{variant}"
            self.max_seconds = float(chunk)
        else:
            path = weights_dir(pretrained, ENV_PATH, "Qwen2-Audio")
            self.processor = AutoProcessor.from_pretrained(path)
            self.model = pretrained_model(Qwen2AudioForConditionalGeneration, path, dtype, attn_implementation)
            model_id = f"qwen2-audio-7b-{variant}"
        self.tokenizer = self.processor.tokenizer
        self.feature_extractor = self.processor.feature_extractor
        self.eos = "<|im_end|>" if variant == "instruct" else "<|endoftext|>"
        self._finish(model_id, eos=self.eos)

    def collate(self, audios: Sequence[torch.Tensor], instructions: Sequence[str | None],
                targets: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        prompts = [self.template.format(ins or "") for ins in instructions]
        waves = [np.asarray(a, dtype=np.float32) for a in audios]
        enc = self.processor(text=prompts, audio=waves, sampling_rate=self.sample_rate, return_tensors="pt",
                             padding=True)
        return self.pack(unpad(enc["input_ids"], enc["attention_mask"]), targets, waves,
                         input_features=enc["input_features"], feature_attention_mask=enc["feature_attention_mask"])

    @torch.no_grad()
    def encode_audio(self, input_features: torch.Tensor, feature_attention_mask: torch.Tensor) -> list[torch.Tensor]:
        """Each clip's LLM-width audio embeddings ``[frames_i, hidden]``: the frozen encoder and projector.

        ``Qwen2AudioModel`` has no ``get_audio_features``: this is the same computation as its
        ``forward`` (conv lengths, bidirectional mask over the valid frames, tower, projector, then the
        valid frames), written out so that the embeddings can be cached; tests compare the two paths.
        """
        from transformers.masking_utils import create_bidirectional_mask

        base = self.model.model
        tower = base.audio_tower
        feats = input_features.to(tower.conv1.weight.dtype)
        after_conv = (feature_attention_mask.sum(-1) - 1) // 2 + 1
        n_out = (after_conv - 2) // 2 + 1
        max_len = (feats.shape[-1] - 2) // 2 + 1
        valid = (torch.arange(max_len, device=feats.device)[None] < after_conv[:, None]).long()
        dummy = feats.new_zeros(feats.shape[0], max_len, 1)
        mask = create_bidirectional_mask(config=tower.config, inputs_embeds=dummy, attention_mask=valid)
        states = base.multi_modal_projector(tower(feats, attention_mask=mask).last_hidden_state)
        return [states[i, : int(n)] for i, n in enumerate(n_out)]

    def audio_features(self, audio: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat(self.encode_audio(audio["input_features"], audio["feature_attention_mask"]))
