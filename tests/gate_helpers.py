"""Test helper: the loss and mask-logit gradient of an adapter under a soft head mask."""
from __future__ import annotations

import torch

from ahamask_lightning.masking import HeadGate


def mask_loss_and_grad(adapter, batch: dict, seed: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss and mask-logit gradient; backward runs inside the gate, where checkpointed layers are recomputed."""
    gate = HeadGate(adapter.gated_attentions(), adapter.num_heads, adapter.head_dim)
    theta = torch.randn(adapter.num_layers, adapter.num_heads,
                        generator=torch.Generator().manual_seed(seed)).requires_grad_(True)
    try:
        with gate.apply(torch.sigmoid(theta)):
            loss = adapter.loss(batch)
            (grad,) = torch.autograd.grad(loss, theta)
    finally:
        gate.remove()
    return loss.detach(), grad
