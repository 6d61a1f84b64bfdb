"""The trainable object of AHAMask: one logit per attention head of the LLM backbone."""
from __future__ import annotations

import torch
from torch import nn

from .estimators import CONTINUOUS, ESTIMATORS, deterministic_mask, soft_sample, straight_through


class HeadMask(nn.Module):
    """Mask logits ``[layers, heads]``, initialised N(4, 0.02) so every head starts on.

    In training mode ``forward`` returns a straight-through hard sample (0/1 values,
    gradients of the relaxed sample); in eval mode the deterministic mask (logit >= 0).
    ``temperature`` is a buffer so that it travels with checkpoints; :meth:`set_temperature`
    changes it (the module's temperature schedule calls it). A continuous estimator (``sigmoid``) returns
    sigmoid(M) in both modes: a diagnostic gate, not a binary mask.
    """

    def __init__(
        self,
        num_layers: int,
        num_heads: int,
        estimator: str = "logistic",
        init_mean: float = 4.0,
        init_std: float = 0.02,
        temperature: float = 4.0,
    ) -> None:
        super().__init__()
        if estimator not in ESTIMATORS:
            raise ValueError(f"estimator: expected one of {ESTIMATORS}, got {estimator!r}")
        self.estimator = estimator
        self.logits = nn.Parameter(torch.empty(num_layers, num_heads).normal_(init_mean, init_std))
        self.register_buffer("temperature", torch.tensor(float(temperature)))

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.logits.shape)

    def set_temperature(self, value: float) -> None:
        """The relaxation temperature of the next samples (in place: the buffer stays the one saved)."""
        self.temperature.fill_(float(value))

    def forward(self, batch_size: int | None = None, rank: int = 0, world_size: int = 1) -> torch.Tensor:
        """A gate ``[layers, heads]``, or ``[batch_size, layers, heads]`` with one sample each.

        With ``world_size`` > 1 (data-parallel ranks, whose random generators are kept in step so
        that a shared mask is one draw) the per-sample draws are made for the whole global batch
        and this rank keeps its own rows: every sample of every rank gets its own mask, as on one
        device with the global batch.
        """
        if not self.training:
            return self.eval_gate()
        rows = None if batch_size is None else batch_size * world_size
        logits = self.logits if rows is None else self.logits.expand(rows, *self.logits.shape)
        gate = soft_sample(logits, float(self.temperature), self.estimator)
        if self.estimator not in CONTINUOUS:
            gate = straight_through(gate)
        if rows is not None and world_size > 1:
            gate = gate[rank * batch_size:(rank + 1) * batch_size]
        return gate

    def eval_gate(self) -> torch.Tensor:
        """The evaluation gate: the binary mask, or sigmoid(M) for a continuous estimator."""
        if self.estimator in CONTINUOUS:
            return soft_sample(self.logits.detach(), float(self.temperature), self.estimator)
        return deterministic_mask(self.logits.detach())

    def hard(self) -> torch.Tensor:
        return deterministic_mask(self.logits.detach())

    def active_heads(self) -> int:
        return int(self.hard().sum().item())

    @torch.no_grad()
    def load_logits(self, logits: torch.Tensor) -> None:
        if tuple(logits.shape) != self.shape:
            raise ValueError(f"mask logits of shape {tuple(logits.shape)} do not fit the model's {self.shape}")
        self.logits.copy_(logits.to(self.logits.dtype))
