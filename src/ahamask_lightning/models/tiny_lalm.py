"""TinyLALM: a small audio LLM that this project trains, so AHAMask can run and be measured on a CPU.

Log-mel front end -> 2 strided convolutions + a small transformer encoder -> frame-stacking
projector -> a small transformers ``LlamaForCausalLM`` with a ``tokenizers`` BPE tokenizer,
prompted like SALMONN (``USER: <Speech><SpeechHere></Speech> {}\\nASSISTANT:``). The LLM is a
real transformers decoder, so the head gate is the same code path as for the real models.

A checkpoint is a directory: ``config.json``, ``model.safetensors`` (fp16) and ``tokenizer.json``.
"""
from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torchaudio
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from .base import (
    LALMAdapter,
    enable_llm_checkpointing,
    llm_checkpointing_active,
    loss_on_target_logits,
    target_positions,
)
from .feature_cache import FeatureCache, weights_fingerprint
from .splice import splice_embeddings, tokenize_prompts

PROMPT_TEMPLATE = "USER: <Speech><SpeechHere></Speech> {}\nASSISTANT:"
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]


@dataclass
class TinyLALMConfig:
    n_mels: int = 80
    hop_ms: float = 20.0  # 50 frames/s in, 12.5 encoder frames/s, 12.5 / stack (6.25) audio tokens/s to the LLM
    enc_dim: int = 256
    enc_layers: int = 2
    enc_heads: int = 4
    stack: int = 2
    # The projector also reads the convolution features (before the transformer): a path for
    # speaker cues (pitch, timbre) that the encoder's CTC training tends to normalise away.
    skip: bool = False
    llm: dict = field(default_factory=lambda: dict(
        hidden_size=256, intermediate_size=672, num_hidden_layers=6, num_attention_heads=8,
        num_key_value_heads=8, max_position_embeddings=512, rms_norm_eps=1e-5, tie_word_embeddings=True,
    ))
    vocab_size: int = 1000


def build_tokenizer(texts: Iterable[str], vocab_size: int = 1000, special_tokens: Sequence[str] = (),
                    eos: str = "</s>", pad: str = "<pad>", bos: str | None = "<s>") -> PreTrainedTokenizerFast:
    """A BPE tokenizer trained on the corpus and prompt texts with the `tokenizers` library."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    specials = list(dict.fromkeys(SPECIAL_TOKENS + list(special_tokens)))
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad,
                                   unk_token="<unk>", additional_special_tokens=list(special_tokens) or None)


class LogMel:
    """Log-mel features, computed on the CPU in the collate step (no weights).

    Deliberately not an ``nn.Module``: moving the model to a GPU must leave the front end on the
    CPU, where the dataloader workers call it (a CUDA filterbank there fails in forked workers).
    """

    def __init__(self, n_mels: int, hop_ms: float, sample_rate: int = 16000) -> None:
        hop = int(sample_rate * hop_ms / 1000)
        self.hop = hop
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=sample_rate, n_fft=2 * hop, win_length=2 * hop, hop_length=hop, n_mels=n_mels
        )

    @torch.no_grad()
    def __call__(self, wav: torch.Tensor) -> torch.Tensor:  # [T] -> [frames, n_mels]
        return (self.mel(wav.detach().cpu().float()) + 1e-6).log().clamp(min=-12.0).transpose(0, 1)


class AudioEncoder(nn.Module):
    """Two stride-2 convolutions then a small transformer; 4x time reduction, then frame stacking."""

    def __init__(self, cfg: TinyLALMConfig, llm_hidden: int) -> None:
        super().__init__()
        d = cfg.enc_dim
        self.conv = nn.Sequential(
            nn.Conv1d(cfg.n_mels, d, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv1d(d, d, 3, stride=2, padding=1), nn.GELU(),
        )
        layer = nn.TransformerEncoderLayer(d, cfg.enc_heads, 4 * d, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.enc_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.stack, self.skip = cfg.stack, cfg.skip
        self.proj = nn.Sequential(nn.Linear(d * cfg.stack * (2 if cfg.skip else 1), llm_hidden), nn.GELU(), nn.Linear(llm_hidden, llm_hidden))
        self.register_buffer("pos", self._sinusoids(4096, d), persistent=False)

    @staticmethod
    def _sinusoids(length: int, dim: int) -> torch.Tensor:
        inv = torch.exp(-math.log(10000.0) * torch.arange(0, dim, 2).float() / dim)
        ang = torch.arange(length).float()[:, None] * inv[None]
        return torch.cat([ang.sin(), ang.cos()], dim=-1)

    def encode(self, feats: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Log-mel [B, T, n_mels] -> (encoder states, convolution features) [B, T/4, d], lengths."""
        # The first convolution's output past a clip's length must be zero, as its own padding is when
        # the clip is alone: the second convolution's last window reads one position past it, so a
        # clip's features would otherwise depend on the longer clips padded beside it.
        half = self.conv[1](self.conv[0](feats.transpose(1, 2)))  # [B, d, T/2]
        half_lens = (lens - 1) // 2 + 1
        past = torch.arange(half.shape[-1], device=half.device)[None] >= half_lens[:, None]
        conv = self.conv[3](self.conv[2](half.masked_fill(past[:, None], 0.0))).transpose(1, 2)  # [B, T/4, d]
        t = conv.shape[1]
        enc_lens = (half_lens - 1) // 2 + 1
        pad = torch.arange(t, device=conv.device)[None] >= enc_lens[:, None]
        x = self.norm(self.encoder(conv + self.pos[:t].to(conv.dtype), src_key_padding_mask=pad))
        return x, conv, enc_lens

    def project(self, x: torch.Tensor, conv: torch.Tensor, enc_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder states (+ convolution features) -> LLM-width audio tokens, ``stack`` frames each."""
        if self.skip:
            x = torch.cat([x, conv], dim=-1)
        t2 = x.shape[1] // self.stack
        x = x[:, : t2 * self.stack].reshape(x.shape[0], t2, -1)
        return self.proj(x), enc_lens // self.stack

    def forward(self, feats: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.project(*self.encode(feats, lens))


class TinyLALM(LALMAdapter):
    """The testbed LALM. ``checkpoint``: a directory written by ``save``; None builds random weights.

    ``feature_cache``: a directory where the frozen encoder + projector output of each clip is kept
    and read back in later epochs (``feature_cache.py``); for mask training, where the encoder is
    frozen. Pretraining, which trains the encoder, passes its own ``audio`` to ``loss`` instead.
    ``gradient_checkpointing``: recompute each LLM layer's activations in the backward pass of ``loss``
    (``enable_llm_checkpointing``), as the chat adapters do.
    """

    model_id = "tiny-lalm"
    min_seconds = 0.5
    max_seconds = 12.0

    def __init__(
        self,
        checkpoint: str | None = "checkpoints/tiny_lalm",
        config: TinyLALMConfig | None = None,
        tokenizer: PreTrainedTokenizerFast | None = None,
        attn_implementation: str = "sdpa",
        feature_cache: str | None = None,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if checkpoint is not None:
            path = Path(checkpoint)
            if not path.is_dir():  # the committed testbeds live in the repository, not the installed package
                raise FileNotFoundError(
                    f"{path}: no TinyLALM checkpoint folder here (looked in {path.resolve().parent}); the committed "
                    "testbeds are the repository's checkpoints/ folders: run from the repository root or give the "
                    "folder's path")
            missing = [p.name for p in (path / "config.json", path / "model.safetensors", path / "tokenizer.json")
                       if not p.is_file()]
            if missing:
                raise FileNotFoundError(f"{path}: TinyLALM checkpoint incomplete, missing {', '.join(missing)}")
            config = TinyLALMConfig(**json.loads((path / "config.json").read_text()))
            tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(path / "tokenizer.json"),
                                                bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                                unk_token="<unk>")
        if config is None or tokenizer is None:
            raise ValueError("TinyLALM needs a checkpoint directory, or both config and tokenizer")
        self.config = config
        self.tokenizer = tokenizer
        llm_cfg = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                              eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                              attn_implementation=attn_implementation, **config.llm)
        self.llm = LlamaForCausalLM(llm_cfg)
        self.audio_encoder = AudioEncoder(config, llm_cfg.hidden_size)
        self.frontend = LogMel(config.n_mels, config.hop_ms, self.sample_rate)
        self.num_heads = llm_cfg.num_attention_heads
        self.head_dim = llm_cfg.hidden_size // llm_cfg.num_attention_heads
        if checkpoint is not None:
            state = load_file(str(Path(checkpoint) / "model.safetensors"))
            result = self.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
            tied = {"llm.lm_head.weight"} if config.llm.get("tie_word_embeddings") else set()
            bad = [k for k in result.missing_keys if k not in tied]
            bad += list(result.unexpected_keys)
            if bad:
                raise ValueError(f"{checkpoint}/model.safetensors: keys do not match TinyLALM: {bad[:5]}")
            if self.config.llm.get("tie_word_embeddings"):
                self.llm.tie_weights()
        self.gradient_checkpointing = bool(gradient_checkpointing)
        if gradient_checkpointing:
            enable_llm_checkpointing(self.llm.model)
        self.feature_cache = None
        if feature_cache:
            namespace = {"model_id": self.model_id, "sample_rate": self.sample_rate, "n_mels": config.n_mels,
                         "hop_ms": config.hop_ms, "encoder": [config.enc_dim, config.enc_layers, config.enc_heads,
                                                              config.stack, config.skip],
                         "projector": llm_cfg.hidden_size, "dtype": str(self.llm.dtype),
                         "weights": weights_fingerprint(self.audio_encoder)}
            self.feature_cache = FeatureCache(feature_cache, namespace)

    # --- persistence ----------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "config.json").write_text(json.dumps(asdict(self.config), indent=1))
        self.tokenizer.backend_tokenizer.save(str(directory / "tokenizer.json"))
        tied = {"llm.lm_head.weight"} if self.config.llm.get("tie_word_embeddings") else set()
        state = {k: v.detach().to(torch.float16).contiguous() for k, v in self.state_dict().items()
                 if k not in tied}
        save_file(state, str(directory / "model.safetensors"), metadata={"model_id": self.model_id})

    # --- adapter interface ------------------------------------------------------------
    def gated_attentions(self) -> Sequence[nn.Module]:
        return [layer.self_attn for layer in self.llm.model.layers]

    def collate(self, audios: Sequence[torch.Tensor], instructions: Sequence[str | None],
                targets: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        feats = [self.frontend(a.float()) for a in audios]
        lens = torch.tensor([f.shape[0] for f in feats], dtype=torch.long)
        batch = {"features": nn.utils.rnn.pad_sequence(feats, batch_first=True), "feature_lens": lens}
        tok = self.tokenizer
        batch.update(tokenize_prompts(tok, PROMPT_TEMPLATE, list(instructions), targets,
                                      tok.bos_token_id, tok.eos_token_id, tok.pad_token_id))
        if self.feature_cache is not None:  # content keys and the entries found, here in the loader workers
            batch.update(self.feature_cache.batch_fields(audios))
        return batch

    def encode_audio(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(audio tokens [B, T, hidden], lengths): the encoder, or the feature cache when there is one."""
        feats, lens = batch["features"], batch["feature_lens"]
        if self.feature_cache is None or "clip_keys" not in batch:
            return self.audio_encoder(feats, lens)

        def compute(idx: list[int]) -> list[torch.Tensor]:
            with torch.no_grad():
                audio, n = self.audio_encoder(feats[idx], lens[idx])
            return [audio[i, : int(k)] for i, k in enumerate(n)]

        clips = self.feature_cache.features(batch["clip_keys"], compute, feats.device, self.llm.dtype,
                                            found=batch.get("cached_audio"))
        lengths = torch.tensor([c.shape[0] for c in clips], dtype=torch.long, device=feats.device)
        return nn.utils.rnn.pad_sequence(clips, batch_first=True), lengths

    def _inputs(self, batch: dict[str, torch.Tensor], audio: tuple[torch.Tensor, torch.Tensor] | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        audio, audio_lens = audio or self.encode_audio(batch)
        return splice_embeddings(self.llm.get_input_embeddings(), batch, audio, audio_lens)

    def loss(self, batch: dict[str, torch.Tensor], audio: tuple[torch.Tensor, torch.Tensor] | None = None,
             ) -> torch.Tensor:
        """Cross-entropy on the targets; ``audio`` = precomputed (audio tokens, lengths), e.g. in pretraining."""
        embeds, mask, labels = self._inputs(batch, audio)
        # logits only where a target is predicted (LlamaForCausalLM's logits_to_keep, 2-D bool mask)
        with llm_checkpointing_active(self.llm.model, self.gradient_checkpointing):
            out = self.llm(inputs_embeds=embeds, attention_mask=mask, use_cache=False,
                           logits_to_keep=target_positions(labels))
        return loss_on_target_logits(out.logits, labels)

    @torch.no_grad()
    def hidden_states(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """The LLM's hidden states over the prompt (left-padded: position -1 predicts the answer)."""
        embeds, mask, _ = self._inputs({k: v for k, v in batch.items() if not k.startswith("target_")})
        positions = (mask.long().cumsum(-1) - 1).clamp_min(0)  # as generate() numbers left-padded prompts
        out = self.llm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=False,
                       output_hidden_states=True)
        return out.hidden_states

    default_generation = {"max_new_tokens": 48, "num_beams": 1, "do_sample": False}

    @torch.no_grad()
    def generate(self, batch: dict[str, torch.Tensor], **generation: Any) -> list[str]:
        embeds, mask, _ = self._inputs({k: v for k, v in batch.items() if not k.startswith("target_")})
        kwargs = {**self.default_generation, **generation}
        # generate() derives left-padding-aware position ids from the attention mask.
        out = self.llm.generate(inputs_embeds=embeds, attention_mask=mask,
                                pad_token_id=self.tokenizer.pad_token_id, **kwargs)
        return [t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]


def random_tiny_lalm(texts: Sequence[str] = ("hello world",), layers: int = 2, heads: int = 4,
                     hidden: int = 32, attn_implementation: str = "sdpa", skip: bool = False) -> TinyLALM:
    """A small random TinyLALM for tests (no checkpoint)."""
    tok = build_tokenizer(list(texts) + [PROMPT_TEMPLATE], vocab_size=200)
    cfg = TinyLALMConfig(enc_dim=32, enc_layers=1, enc_heads=2, skip=skip, llm=dict(
        hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=heads, max_position_embeddings=512, tie_word_embeddings=True))
    return TinyLALM(checkpoint=None, config=cfg, tokenizer=tok, attn_implementation=attn_implementation)
