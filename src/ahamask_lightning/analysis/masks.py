"""Mask arithmetic for the analyses: Jaccard similarity, set operations, random masks of a given size."""
from __future__ import annotations

import torch


def jaccard(a: torch.Tensor, b: torch.Tensor) -> float:
    """|A & B| / |A | B| of two 0/1 masks (1.0 when both are empty)."""
    a, b = a.bool(), b.bool()
    union = (a | b).sum().item()
    return 1.0 if union == 0 else (a & b).sum().item() / union


def jaccard_matrix(masks: list[torch.Tensor]) -> torch.Tensor:
    n = len(masks)
    out = torch.ones(n, n)
    for i in range(n):
        for j in range(i + 1, n):
            out[i, j] = out[j, i] = jaccard(masks[i], masks[j])
    return out


def combine(masks: list[torch.Tensor], op: str) -> torch.Tensor:
    if op not in ("and", "or"):
        raise ValueError(f"--op: expected 'and' or 'or', got {op!r}")
    out = masks[0].bool()
    for m in masks[1:]:
        out = (out & m.bool()) if op == "and" else (out | m.bool())
    return out.float()


def random_mask(shape: tuple[int, int], active: int, seed: int) -> torch.Tensor:
    """A 0/1 mask with exactly ``active`` heads on, uniformly at random (the paper's random baseline)."""
    n = shape[0] * shape[1]
    if not 0 <= active <= n:
        raise ValueError(f"active heads must be in [0, {n}], got {active}")
    g = torch.Generator().manual_seed(seed)
    flat = torch.zeros(n)
    flat[torch.randperm(n, generator=g)[:active]] = 1.0
    return flat.view(shape)


def mask_to_logits(mask: torch.Tensor, scale: float = 4.0) -> torch.Tensor:
    """Logits that reproduce a 0/1 mask exactly (on: +scale, off: -scale)."""
    return torch.where(mask.bool(), torch.tensor(scale), torch.tensor(-scale))


def progressive_masks(logits: torch.Tensor, fractions: list[float]) -> list[torch.Tensor]:
    """Heads ordered by logit, the top share switched on (Figure 4)."""
    order = torch.argsort(logits.flatten(), descending=True)
    out = []
    for f in fractions:
        flat = torch.zeros(logits.numel())
        flat[order[: round(f * logits.numel())]] = 1.0
        out.append(flat.view(logits.shape))
    return out
