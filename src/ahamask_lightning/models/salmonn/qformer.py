"""SALMONN's connector: LayerNorms, window-level Q-Former and projection into the LLM.

The official Q-Former is LAVIS' BLIP-2 ``BertModel`` with the word/position embeddings and the
text FFN deleted, so only the query path is left. transformers' ``Blip2QFormerModel`` with
``use_qformer_text_input=False`` is exactly that path (post-LN BERT, cross-attention in every
layer, ``intermediate_query`` / ``output_query``), and its parameters map one-to-one onto the
released keys (see ``checkpoint.KEY_RULES``), so it is reused instead of rewritten.

Window pooling, as the released SALMONN code does it: LayerNorm each stream, zero-pad the shorter one at the end
(after its LayerNorm), concatenate on channels, cut the 1500 frames into windows of 17 frames
with stride 17 (88 windows; the last 4 frames are dropped), one query token per window.
"""
from __future__ import annotations

import torch
from torch import nn
from transformers import Blip2QFormerConfig, Blip2QFormerModel

WHISPER_FRAMES = 1500  # Whisper encoder output for the 30 s padded input
SECOND_PER_WINDOW = 0.333333
WINDOW = round(WHISPER_FRAMES * SECOND_PER_WINDOW / 30.0)  # 17 frames, also the stride


def qformer_config(encoder_width: int, hidden: int = 768, layers: int = 2, heads: int = 12,
                   intermediate: int = 3072, attn_implementation: str = "eager") -> Blip2QFormerConfig:
    """BERT-base values (layer_norm_eps 1e-12, gelu) with SALMONN's overrides."""
    cfg = Blip2QFormerConfig(
        hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=intermediate,
        hidden_act="gelu", layer_norm_eps=1e-12, cross_attention_frequency=1, encoder_hidden_size=encoder_width,
        use_qformer_text_input=False, max_position_embeddings=512, vocab_size=30522,
        attn_implementation=attn_implementation,
    )
    return cfg


def num_windows(frames: int = WHISPER_FRAMES, window: int = WINDOW, stride: int = WINDOW) -> int:
    return (frames - window) // stride + 1


def split_windows(x: torch.Tensor, window: int = WINDOW, stride: int = WINDOW) -> torch.Tensor:
    """[B, T, C] -> [B * n, window, C], the same order as the official F.unfold + view + permute."""
    c = x.shape[-1]
    w = x.unfold(1, window, stride)  # [B, n, C, window]
    return w.permute(0, 1, 3, 2).reshape(-1, window, c)


class SalmonnConnector(nn.Module):
    """Whisper + BEATs features -> 88 LLM input embeddings per clip.

    Attribute names follow the official module where the keys allow it (``ln_speech``,
    ``ln_audio``, ``speech_query_tokens``, ``speech_llama_proj``); ``speech_qformer`` is the
    transformers Q-Former that replaces ``speech_Qformer.bert``.
    """

    def __init__(self, whisper_dim: int, beats_dim: int, llm_hidden: int, qformer_hidden: int = 768,
                 qformer_layers: int = 2, qformer_heads: int = 12, qformer_intermediate: int = 3072,
                 num_query_tokens: int = 1) -> None:
        super().__init__()
        self.ln_speech = nn.LayerNorm(whisper_dim)
        self.ln_audio = nn.LayerNorm(beats_dim)
        cfg = qformer_config(whisper_dim + beats_dim, qformer_hidden, qformer_layers, qformer_heads,
                             qformer_intermediate)
        self.speech_qformer = Blip2QFormerModel(cfg)
        self.speech_query_tokens = nn.Parameter(torch.zeros(1, num_query_tokens, qformer_hidden))
        nn.init.normal_(self.speech_query_tokens, std=0.02)
        self.speech_llama_proj = nn.Linear(qformer_hidden, llm_hidden)

    @staticmethod
    def fuse(speech: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """Zero-pad the shorter stream at the end, then concatenate on channels."""
        ts, ta = speech.shape[1], audio.shape[1]
        if ta < ts:
            audio = nn.functional.pad(audio, (0, 0, 0, ts - ta))
        elif ts < ta:
            speech = nn.functional.pad(speech, (0, 0, 0, ta - ts))
        return torch.cat([speech, audio], dim=-1)

    def forward(self, whisper_hidden: torch.Tensor, beats_hidden: torch.Tensor) -> torch.Tensor:
        """[B, 1500, Dw] and [B, N, Db] -> [B, 88, llm_hidden] (float32, like the official amp run)."""
        dtype = self.ln_speech.weight.dtype
        fused = self.fuse(self.ln_speech(whisper_hidden.to(dtype)), self.ln_audio(beats_hidden.to(dtype)))
        b = fused.shape[0]
        windows = split_windows(fused)  # [B * 88, 17, Dw + Db]; every frame attended (mask all ones)
        queries = self.speech_query_tokens.expand(windows.shape[0], -1, -1)
        out = self.speech_qformer(query_embeds=queries, encoder_hidden_states=windows).last_hidden_state
        return self.speech_llama_proj(out).reshape(b, -1, self.speech_llama_proj.out_features)
