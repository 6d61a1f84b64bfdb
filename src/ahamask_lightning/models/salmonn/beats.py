"""BEATs (Chen et al., 2022), the audio-event encoder of SALMONN, written from its description.

No maintained package ships BEATs, so the module is rebuilt here with parameter names that
match the official ``{"cfg", "model"}`` checkpoint (``BEATs_iter3_plus_AS2M_finetuned_on_AS2M_cpt2.pt``)
so that it loads with a strict ``load_state_dict``:

* 16x16 patch embedding of the normalised Kaldi fbank (no bias), LayerNorm(512), Linear 512->768;
* a weight-normed grouped positional convolution (``pos_conv.0.weight_g`` / ``weight_v``), SamePad,
  GELU, added to the input, then LayerNorm (``layer_norm_first=False``);
* 12 post-LN "deep-norm" layers (residual x alpha) with a T5-style bucketed relative position bias
  computed once in layer 0 (whose embedding module the other layers share) and a per-layer
  GRU-style gate on that bias (``grep_linear``, ``grep_a``);
* the fine-tuned ``predictor`` head exists for the strict load but SALMONN never calls it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
import torchaudio
from torch import nn

FBANK_MEAN = 15.41663
FBANK_STD = 6.55582


@dataclass
class BEATsConfig:
    """The fields of the checkpoint's ``cfg`` dict; defaults are the official code's defaults."""

    input_patch_size: int = -1
    embed_dim: int = 512
    conv_bias: bool = False
    encoder_layers: int = 12
    encoder_embed_dim: int = 768
    encoder_ffn_embed_dim: int = 3072
    encoder_attention_heads: int = 12
    activation_fn: str = "gelu"
    layer_wise_gradient_decay_ratio: float = 1.0
    layer_norm_first: bool = False
    deep_norm: bool = False
    dropout: float = 0.1
    attention_dropout: float = 0.1
    activation_dropout: float = 0.0
    encoder_layerdrop: float = 0.0
    dropout_input: float = 0.0
    conv_pos: int = 128
    conv_pos_groups: int = 16
    relative_position_embedding: bool = False
    num_buckets: int = 320
    max_distance: int = 1280
    gru_rel_pos: bool = False
    finetuned_model: bool = False
    predictor_dropout: float = 0.1
    predictor_class: int = 527

    @classmethod
    def from_dict(cls, cfg: dict) -> BEATsConfig:
        # Unknown keys are training-time knobs of other BEATs versions; they do not change the graph.
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in cfg.items() if k in known})


# The iter3+ AS2M cpt2 checkpoint's cfg (values from the released checkpoint's key list).
BEATS_ITER3_PLUS_CFG = dict(
    input_patch_size=16, embed_dim=512, conv_bias=False, encoder_layers=12, encoder_embed_dim=768,
    encoder_ffn_embed_dim=3072, encoder_attention_heads=12, activation_fn="gelu",
    layer_wise_gradient_decay_ratio=0.6, layer_norm_first=False, deep_norm=True, dropout=0.0,
    attention_dropout=0.0, activation_dropout=0.0, encoder_layerdrop=0.05, dropout_input=0.0, conv_pos=128,
    conv_pos_groups=16, relative_position_embedding=True, num_buckets=320, max_distance=800, gru_rel_pos=True,
    finetuned_model=True, predictor_dropout=0.0, predictor_class=527,
)


def beats_fbank(wav: torch.Tensor, mean: float = FBANK_MEAN, std: float = FBANK_STD) -> torch.Tensor:
    """[B, samples] at 16 kHz -> normalised Kaldi fbank [B, frames, 128].

    BEATs was trained on int16-scaled audio, hence the 2^15; the normalisation divides by
    twice the dataset std, as the official preprocessing does. Computed in float32 with autocast
    off: the int16-scaled power spectrum exceeds float16's range, so under a float16 autocast
    (SALMONN's 16-mixed on CUDA) fbank's matmul would give inf and every feature NaN. The
    released code never met this because its waveform is float64, which autocast leaves alone.
    """
    feats = []
    with torch.autocast(wav.device.type, enabled=False):
        for w in wav:
            fb = torchaudio.compliance.kaldi.fbank(
                w.float().unsqueeze(0) * 2**15, num_mel_bins=128, sample_frequency=16000, frame_length=25,
                frame_shift=10,
            )
            feats.append(fb)
        return (torch.stack(feats) - mean) / (2 * std)


def fbank_frames(num_samples: int) -> int:
    """Kaldi frame count for 25 ms windows every 10 ms (snip_edges=True)."""
    return 0 if num_samples < 400 else 1 + (num_samples - 400) // 160


def num_beats_tokens(num_samples: int, patch: int = 16, mel_bins: int = 128) -> int:
    """BEATs output length: (mel_bins/patch) frequency patches per ``patch`` fbank frames."""
    return (mel_bins // patch) * (fbank_frames(num_samples) // patch)


class WeightNormConv1d(nn.Module):
    """Conv1d with the weight split as g * v / ||v|| (norm over every dim but ``dim``).

    Written out instead of ``torch.nn.utils.weight_norm`` (deprecated) or the parametrization
    (which renames the parameters), so that the state dict keeps the checkpoint's
    ``weight_g`` / ``weight_v`` names.
    """

    def __init__(self, channels: int, kernel_size: int, groups: int, dim: int = 2) -> None:
        super().__init__()
        self.padding, self.groups, self.dim = kernel_size // 2, groups, dim
        self.weight_v = nn.Parameter(torch.empty(channels, channels // groups, kernel_size))
        g_shape = [1, 1, 1]
        g_shape[dim] = kernel_size
        self.weight_g = nn.Parameter(torch.empty(*g_shape))
        self.bias = nn.Parameter(torch.zeros(channels))
        std = math.sqrt(4.0 / (kernel_size * channels))
        nn.init.normal_(self.weight_v, 0.0, std)
        with torch.no_grad():
            self.weight_g.copy_(self._norm(self.weight_v))

    def _norm(self, v: torch.Tensor) -> torch.Tensor:
        other = [d for d in range(v.dim()) if d != self.dim]
        return v.norm(dim=other, keepdim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight_v * (self.weight_g / self._norm(self.weight_v))
        return F.conv1d(x, weight, self.bias, padding=self.padding, groups=self.groups)


class SamePad(nn.Module):
    """Drop the extra right frame an even kernel with padding k//2 produces."""

    def __init__(self, kernel_size: int) -> None:
        super().__init__()
        self.remove = 1 if kernel_size % 2 == 0 else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, : -self.remove] if self.remove else x


def relative_position_bucket(relative: torch.Tensor, num_buckets: int, max_distance: int) -> torch.Tensor:
    """Bidirectional T5-style buckets: exact for small offsets, log-spaced up to ``max_distance``."""
    half = num_buckets // 2
    buckets = (relative > 0).long() * half
    dist = relative.abs()
    max_exact = half // 2
    # clamp(min=1) only avoids log(0); those positions take the exact branch anyway.
    large = max_exact + (
        torch.log(dist.clamp(min=1).float() / max_exact) / math.log(max_distance / max_exact) * (half - max_exact)
    ).long()
    large = large.clamp(max=half - 1)
    return buckets + torch.where(dist < max_exact, dist, large)


class BEATsAttention(nn.Module):
    """Multi-head self-attention with the gated relative position bias."""

    def __init__(self, cfg: BEATsConfig, has_relative_attention_bias: bool) -> None:
        super().__init__()
        d, h = cfg.encoder_embed_dim, cfg.encoder_attention_heads
        self.num_heads, self.head_dim = h, d // h
        self.num_buckets, self.max_distance = cfg.num_buckets, cfg.max_distance
        self.has_relative_attention_bias = has_relative_attention_bias
        self.relative_attention_bias = nn.Embedding(cfg.num_buckets, h) if cfg.relative_position_embedding else None
        self.k_proj = nn.Linear(d, d)
        self.v_proj = nn.Linear(d, d)
        self.q_proj = nn.Linear(d, d)
        self.out_proj = nn.Linear(d, d)
        self.gru_rel_pos = cfg.gru_rel_pos
        if cfg.gru_rel_pos:
            self.grep_linear = nn.Linear(self.head_dim, 8)
            self.grep_a = nn.Parameter(torch.ones(1, h, 1, 1))

    def compute_bias(self, length: int, device: torch.device) -> torch.Tensor:
        pos = torch.arange(length, device=device)
        buckets = relative_position_bucket(pos[None, :] - pos[:, None], self.num_buckets, self.max_distance)
        return self.relative_attention_bias(buckets).permute(2, 0, 1)  # [H, T, T]

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None,
                position_bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        b, t, _ = x.shape
        if self.has_relative_attention_bias and position_bias is None:
            position_bias = self.compute_bias(t, x.device)
        split = lambda y: y.view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        bias = None
        if position_bias is not None:
            bias = position_bias.unsqueeze(0).to(q.dtype)
            if self.gru_rel_pos:
                # The gate reads the unscaled query of each head: two sigmoid gates from 8 outputs.
                gates = torch.sigmoid(self.grep_linear(q).view(b, self.num_heads, t, 2, 4).sum(-1))
                gate_a, gate_b = gates.chunk(2, dim=-1)
                bias = (gate_a * (gate_b * self.grep_a - 1.0) + 2.0) * bias
        if key_padding_mask is not None:
            pad = torch.zeros(b, 1, 1, t, dtype=q.dtype, device=q.device)
            pad = pad.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
            bias = pad if bias is None else bias + pad
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.out_proj(out.transpose(1, 2).reshape(b, t, -1)), position_bias


class BEATsLayer(nn.Module):
    """Post-LN transformer layer; deep-norm scales the residual by alpha = (2N)^(1/4)."""

    def __init__(self, cfg: BEATsConfig, has_relative_attention_bias: bool) -> None:
        super().__init__()
        d = cfg.encoder_embed_dim
        self.self_attn = BEATsAttention(cfg, has_relative_attention_bias)
        self.self_attn_layer_norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, cfg.encoder_ffn_embed_dim)
        self.fc2 = nn.Linear(cfg.encoder_ffn_embed_dim, d)
        self.final_layer_norm = nn.LayerNorm(d)
        self.alpha = math.pow(2 * cfg.encoder_layers, 0.25) if cfg.deep_norm else 1.0
        if cfg.layer_norm_first:
            raise NotImplementedError("BEATs with layer_norm_first=True is not used by SALMONN")

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None,
                pos_bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        attn, pos_bias = self.self_attn(x, padding_mask, pos_bias)
        x = self.self_attn_layer_norm(x * self.alpha + attn)
        y = self.fc2(F.gelu(self.fc1(x).float()).type_as(x))
        return self.final_layer_norm(x * self.alpha + y), pos_bias


class BEATsEncoder(nn.Module):
    def __init__(self, cfg: BEATsConfig) -> None:
        super().__init__()
        d = cfg.encoder_embed_dim
        self.pos_conv = nn.Sequential(WeightNormConv1d(d, cfg.conv_pos, cfg.conv_pos_groups), SamePad(cfg.conv_pos),
                                      nn.GELU())
        self.layers = nn.ModuleList(
            BEATsLayer(cfg, cfg.relative_position_embedding and i == 0) for i in range(cfg.encoder_layers)
        )
        if cfg.relative_position_embedding:
            # One embedding for all layers; state_dict() still lists it under every layer,
            # exactly like the checkpoint (12 keys, one tensor).
            for layer in self.layers[1:]:
                layer.self_attn.relative_attention_bias = self.layers[0].self_attn.relative_attention_bias
        self.layer_norm = nn.LayerNorm(d)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
        if padding_mask is not None:
            x = x.masked_fill(padding_mask.unsqueeze(-1), 0.0)
        x = x + self.pos_conv(x.transpose(1, 2)).transpose(1, 2)
        x = self.layer_norm(x)
        pos_bias = None
        for layer in self.layers:  # eval only: layerdrop and gradient decay are training-time
            x, pos_bias = layer(x, padding_mask, pos_bias)
        return x


def reduce_padding_mask(features: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
    """Coarsen a [B, N] padding mask to features.shape[1] steps: a step is padding iff all of it is.

    Mirrors the official mapping, which treats the patch tokens as if they were time-ordered.
    """
    steps = features.shape[1]
    extra = padding_mask.shape[1] % steps
    if extra:
        padding_mask = padding_mask[:, :-extra]
    return padding_mask.view(padding_mask.shape[0], steps, -1).all(-1)


class BEATs(nn.Module):
    def __init__(self, cfg: BEATsConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.post_extract_proj = (nn.Linear(cfg.embed_dim, cfg.encoder_embed_dim)
                                  if cfg.embed_dim != cfg.encoder_embed_dim else None)
        p = cfg.input_patch_size
        self.patch_embedding = nn.Conv2d(1, cfg.embed_dim, kernel_size=p, stride=p, bias=cfg.conv_bias)
        self.encoder = BEATsEncoder(cfg)
        self.layer_norm = nn.LayerNorm(cfg.embed_dim)
        self.predictor = nn.Linear(cfg.encoder_embed_dim, cfg.predictor_class) if cfg.finetuned_model else None

    @property
    def out_dim(self) -> int:
        return self.cfg.encoder_embed_dim

    def extract_features(self, wav: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """[B, samples] (16 kHz, float in [-1, 1]) -> [B, 8 * floor(frames / 16), encoder_embed_dim]."""
        fbank = beats_fbank(wav).to(self.patch_embedding.weight.dtype)
        if padding_mask is not None:
            padding_mask = reduce_padding_mask(fbank, padding_mask.bool())
        x = self.patch_embedding(fbank.unsqueeze(1))  # [B, C, T/16, F/16]
        x = x.flatten(2).transpose(1, 2)  # time-major, F/16 frequency patches per time step
        x = self.layer_norm(x)
        if padding_mask is not None:
            padding_mask = reduce_padding_mask(x, padding_mask)
        if self.post_extract_proj is not None:
            x = self.post_extract_proj(x)
        return self.encoder(x, padding_mask)


def load_beats(path: str | Path, device: str | torch.device = "cpu") -> BEATs:
    """Build BEATs from the official ``{"cfg", "model"}`` checkpoint and load it strictly."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or "cfg" not in ckpt or "model" not in ckpt:
        raise ValueError(f"{path}: not a BEATs checkpoint (expected a dict with 'cfg' and 'model')")
    with torch.device("meta"):
        model = BEATs(BEATsConfig.from_dict(ckpt["cfg"]))
    model.load_state_dict(ckpt["model"], strict=True, assign=True)
    _retie_relative_bias(model)
    return model.to(device).eval()


def _retie_relative_bias(model: BEATs) -> None:
    # assign=True replaces each alias's parameter separately; point the aliases back at layer 0.
    layers = model.encoder.layers
    if layers[0].self_attn.relative_attention_bias is not None:
        for layer in layers[1:]:
            layer.self_attn.relative_attention_bias = layers[0].self_attn.relative_attention_bias
