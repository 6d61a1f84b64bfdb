"""Gate the attention heads of any transformers decoder from outside the model code.

In every transformers decoder the input of ``o_proj`` is the head-major concatenation
``(B, S, H * D)`` of the per-head attention outputs. A forward pre-hook on ``o_proj``
that multiplies head ``j`` of layer ``i`` by ``m[i, j]`` is exactly the AHAMask gate
MHA_i(X) = sum_j m_ij Y^(i,j) W_O^(i,j): it works with every attention implementation
(eager, sdpa, flash), under ``generate`` with a KV cache, and on LoRA-wrapped
projections (the hook sits on the outer module, after the adapters).

Written by hand because no library gates heads from outside: transformers 5's decoders take no
``head_mask`` argument and transformers has no ``prune_heads`` any more, and peft's nearest method, IA3 on
``o_proj``'s input, learns one continuous scale per feature, not a sampled binary per head (nor
one per batch sample), as AHAMask needs.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn


def find_o_proj(attention: nn.Module) -> nn.Module:
    """The output projection of an attention block (``o_proj``; ``out_proj`` in some families)."""
    for name in ("o_proj", "out_proj", "dense"):
        mod = getattr(attention, name, None)
        if isinstance(mod, nn.Module):
            return mod
    raise AttributeError(f"{type(attention).__name__} has no o_proj/out_proj: cannot install a head gate")


class HeadGate:
    """Pre-hooks on the ``o_proj`` of each gated layer; the mask is set per forward.

    ``mask`` is ``[layers, heads]`` (one for the batch) or ``[B, layers, heads]`` (one per
    sample). When ``generate`` expands the batch for beams or samples (``repeat_interleave``
    along the batch), a per-sample mask is expanded the same way.
    """

    def __init__(self, attentions: Sequence[nn.Module], num_heads: int, head_dim: int) -> None:
        self.num_layers = len(attentions)
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.mask: torch.Tensor | None = None
        self._handles = []
        for layer_idx, attn in enumerate(attentions):
            o_proj = find_o_proj(attn)
            self._handles.append(o_proj.register_forward_pre_hook(self._make_hook(layer_idx)))

    @property
    def shape(self) -> tuple[int, int]:
        return (self.num_layers, self.num_heads)

    def _make_hook(self, layer_idx: int):
        def hook(module: nn.Module, args: tuple) -> tuple | None:
            if self.mask is None:
                return None
            x = args[0]
            return (self._gate(x, layer_idx),) + tuple(args[1:])

        return hook

    def _gate(self, x: torch.Tensor, layer_idx: int) -> torch.Tensor:
        mask = self.mask
        h, d = self.num_heads, self.head_dim
        if x.shape[-1] != h * d:
            raise RuntimeError(
                f"o_proj input of layer {layer_idx} has width {x.shape[-1]}, expected heads*head_dim = {h}*{d}"
            )
        if mask.dim() == 2:
            m = mask[layer_idx].to(x.dtype)  # [H]
            shape = (1,) * (x.dim() - 1) + (h, 1)
            return (x.unflatten(-1, (h, d)) * m.view(shape)).flatten(-2)
        m = mask[:, layer_idx].to(x.dtype)  # [B, H]
        batch = x.shape[0]
        if m.shape[0] != batch:
            if batch % m.shape[0]:
                raise RuntimeError(f"batch {batch} is not a multiple of the per-sample mask batch {m.shape[0]}")
            m = m.repeat_interleave(batch // m.shape[0], dim=0)
        shape = (batch,) + (1,) * (x.dim() - 2) + (h, 1)
        return (x.unflatten(-1, (h, d)) * m.view(shape)).flatten(-2)

    def check(self, mask: torch.Tensor) -> None:
        if mask.shape[-2:] != self.shape or mask.dim() not in (2, 3):
            raise ValueError(
                f"mask shape {tuple(mask.shape)} does not fit the model: expected [{self.num_layers}, "
                f"{self.num_heads}] or [batch, {self.num_layers}, {self.num_heads}]"
            )

    def set(self, mask: torch.Tensor | None) -> None:
        if mask is not None:
            self.check(mask)
        self.mask = mask

    @contextmanager
    def apply(self, mask: torch.Tensor | None) -> Iterator[None]:
        """Gate the model with ``mask`` inside the block (None: ungated)."""
        previous = self.mask
        self.set(mask)
        try:
            yield
        finally:
            self.mask = previous

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
