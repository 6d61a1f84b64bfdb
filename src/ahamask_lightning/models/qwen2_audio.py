"""Qwen2-Audio-7B (Instruct and Base) on transformers' own ``Qwen2AudioForConditionalGeneration``.

The processor expands ``<|AUDIO|>`` to one token per 40 ms of audio; the model scatters the
audio features into those positions. Training sequences are prompt + target (right-padded,
labels only on the target); generation prompts are left-padded.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .base import LALMAdapter, causal_lm_loss, weights_dir
from .chat_collate import TINY_SECONDS, pack_prompts, pretrained_model, tiny_model, unpad

INSTRUCT_TEMPLATE = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    "Audio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\n{}<|im_end|>\n<|im_start|>assistant\n"
)
BASE_TEMPLATE = "<|audio_bos|><|AUDIO|><|audio_eos|>{}"
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|audio_bos|>", "<|AUDIO|>", "<|audio_eos|>"]
ENV_PATH = "AHAMASK_QWEN2AUDIO_PATH"


def full_size_config(path: str | Path | None = None):
    """The Qwen2-Audio-7B configuration (by default the one shipped in shared/reference)."""
    from transformers import Qwen2AudioConfig

    candidates = [Path(path)] if path else [
        Path(__file__).resolve().parents[3] / "../shared/reference/qwen2_audio_7b_config.json",
        Path.cwd() / "../shared/reference/qwen2_audio_7b_config.json",
    ]
    for p in candidates:
        if p.is_file():
            return Qwen2AudioConfig.from_dict(json.loads(p.read_text()))
    raise FileNotFoundError(f"Qwen2-Audio config not found: tried {', '.join(str(c) for c in candidates)}")


def tiny_processor(chunk_seconds: int = 4):
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


def tiny_config(processor, layers: int = 2, heads: int = 4, kv_heads: int = 2, hidden: int = 64,
                chunk_seconds: int = 4):
    from transformers import Qwen2AudioConfig

    tok = processor.tokenizer
    return Qwen2AudioConfig(
        audio_config=dict(d_model=32, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=64,
                          num_mel_bins=128, max_source_positions=chunk_seconds * 50),
        text_config=dict(model_type="qwen2", hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         vocab_size=len(tok), max_position_embeddings=1024, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id),
        audio_token_id=tok.convert_tokens_to_ids("<|AUDIO|>"),
    )


class Qwen2AudioAdapter(LALMAdapter):
    """Args:
        variant: ``instruct`` (ChatML prompt) or ``base`` (audio then plain text).
        pretrained: local directory of the HF checkpoint (or env ``AHAMASK_QWEN2AUDIO_PATH``).
        tiny: build a tiny random model of the same classes (tests, CPU demos); no files needed.
        dtype: weight dtype for real checkpoints.
    """

    def __init__(self, variant: str = "instruct", pretrained: str | None = None, tiny: bool = False,
                 dtype: str = "bfloat16", attn_implementation: str = "sdpa", tiny_layers: int = 2,
                 tiny_heads: int = 4, tiny_kv_heads: int = 2) -> None:
        super().__init__()
        if variant not in ("instruct", "base"):
            raise ValueError(f"Qwen2AudioAdapter.variant: expected 'instruct' or 'base', got {variant!r}")
        from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

        self.variant = variant
        self.template = INSTRUCT_TEMPLATE if variant == "instruct" else BASE_TEMPLATE
        if tiny:
            self.processor = tiny_processor(int(TINY_SECONDS))
            self.model = tiny_model(Qwen2AudioForConditionalGeneration,
                                    tiny_config(self.processor, tiny_layers, tiny_heads, tiny_kv_heads,
                                                chunk_seconds=int(TINY_SECONDS)),
                                    attn_implementation)
            self.model_id = f"qwen2-audio-tiny-{variant}"
            self.max_seconds = TINY_SECONDS
        else:
            path = weights_dir(pretrained, ENV_PATH, "Qwen2-Audio")
            self.processor = AutoProcessor.from_pretrained(path)
            self.model = pretrained_model(Qwen2AudioForConditionalGeneration, path, dtype, attn_implementation)
            self.model_id = f"qwen2-audio-7b-{variant}"
        text_cfg = self.model.config.text_config
        self.num_heads = text_cfg.num_attention_heads
        self.head_dim = getattr(text_cfg, "head_dim", None) or text_cfg.hidden_size // text_cfg.num_attention_heads
        tok = self.processor.tokenizer
        self.eos = "<|im_end|>" if variant == "instruct" else "<|endoftext|>"
        self.eos_id = tok.convert_tokens_to_ids(self.eos)
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else self.eos_id

    def gated_attentions(self) -> Sequence[nn.Module]:
        return [layer.self_attn for layer in self.model.get_decoder().layers]

    def collate(self, audios, instructions, targets=None) -> dict[str, torch.Tensor]:
        prompts = [self.template.format(ins or "") for ins in instructions]
        enc = self.processor(text=prompts, audio=[np.asarray(a, dtype=np.float32) for a in audios],
                             sampling_rate=self.sample_rate, return_tensors="pt", padding=True)
        batch = pack_prompts(unpad(enc["input_ids"], enc["attention_mask"]), targets,
                             lambda t: self.processor.tokenizer.encode(t, add_special_tokens=False),
                             self.eos_id, self.pad_id)
        batch.update(input_features=enc["input_features"], feature_attention_mask=enc["feature_attention_mask"])
        return batch

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         input_features=batch["input_features"].to(self.model.dtype),
                         feature_attention_mask=batch["feature_attention_mask"], use_cache=False)
        return causal_lm_loss(out.logits, batch["labels"])

    default_generation = {"max_new_tokens": 64, "num_beams": 1, "do_sample": False}

    @torch.no_grad()
    def generate(self, batch: dict[str, torch.Tensor], **generation) -> list[str]:
        ids = batch["gen_input_ids"]
        out = self.model.generate(input_ids=ids, attention_mask=batch["gen_attention_mask"],
                                  input_features=batch["input_features"].to(self.model.dtype),
                                  feature_attention_mask=batch["feature_attention_mask"],
                                  pad_token_id=self.pad_id, eos_token_id=self.eos_id,
                                  **{**self.default_generation, **generation})
        return [t.strip() for t in self.processor.tokenizer.batch_decode(out[:, ids.shape[1]:],
                                                                         skip_special_tokens=True)]
