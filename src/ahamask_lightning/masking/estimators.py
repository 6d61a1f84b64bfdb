"""Relaxed Bernoulli estimators that turn mask logits into (straight-through) head gates.

Every estimator maps logits M to a soft sample S in (0, 1); training uses the hard
gate 1[S >= 0.5] with the straight-through gradient of S. At evaluation the gate is
deterministic: a head is on iff its logit >= 0.

``sigmoid`` is not a binary mask but a diagnostic: the continuous gate sigmoid(M), with no
noise and no threshold, in training and at evaluation. What it cannot fit, no head subset
found by gradient descent is likely to fit, so it bounds what head gating can do on a model.
"""
from __future__ import annotations

import torch

ESTIMATORS = ("logistic", "official", "hard_concrete", "sigmoid")
CONTINUOUS = ("sigmoid",)


def _uniform(like: torch.Tensor, eps: float = 1e-6, generator: torch.Generator | None = None) -> torch.Tensor:
    u = torch.rand(like.shape, dtype=torch.float32, device=like.device, generator=generator)
    return u.clamp(eps, 1.0 - eps).to(like.dtype)


def soft_sample(
    logits: torch.Tensor,
    temperature: float,
    estimator: str = "logistic",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw a relaxed gate in (0, 1) for every logit.

    * ``logistic``: Gumbel-Sigmoid of the paper, sigmoid((M + L) / tau) with L the
      difference of two Gumbels (logistic noise): P(on) = sigmoid(M).
    * ``official``: the released code's single left-tailed Gumbel, log(Exp(1)) noise:
      P(on) = exp(-exp(-M)), 0.37 at M = 0.
    * ``hard_concrete``: Louizos et al. L0 gate, stretched to (-0.1, 1.1) and clipped.
    * ``sigmoid``: sigmoid(M), deterministic and without temperature (the continuous diagnostic).
    """
    if estimator == "logistic":
        u = _uniform(logits, generator=generator)
        noise = torch.log(u) - torch.log1p(-u)
        return torch.sigmoid((logits + noise) / temperature)
    if estimator == "official":
        u = _uniform(logits, generator=generator)
        # -log(u) ~ Exp(1), so log(-log(u)) is log(Exponential(1)): a left-tailed Gumbel.
        noise = torch.log(-torch.log(u))
        return torch.sigmoid((logits + noise) / temperature)
    if estimator == "hard_concrete":
        u = _uniform(logits, generator=generator)
        s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + logits) / temperature)
        return (s * 1.2 - 0.1).clamp(0.0, 1.0)
    if estimator == "sigmoid":
        return torch.sigmoid(logits)
    raise ValueError(f"estimator: expected one of {ESTIMATORS}, got {estimator!r}")


def straight_through(soft: torch.Tensor) -> torch.Tensor:
    """Hard 0/1 gate in the forward pass, gradient of the soft gate in the backward pass."""
    hard = (soft >= 0.5).to(soft.dtype)
    return hard - soft.detach() + soft


def deterministic_mask(logits: torch.Tensor) -> torch.Tensor:
    """The inference mask: head on iff logit >= 0."""
    return (logits >= 0).to(torch.float32)
