"""The small interface every LALM family implements so the LightningModule can gate and train it.

An adapter owns one frozen audio LLM (real transformers classes, or SALMONN's parts) and
knows four things: which attention blocks of the *LLM backbone* carry the heads to gate,
how to turn waveforms + an optional instruction + an optional target into tensors
(``collate``), the cross-entropy on target tokens (``loss``) and how to generate text
(``generate``). Everything else (the mask, the gate, schedules, metrics) lives outside.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class LALMAdapter(nn.Module):
    """Base class of the adapters. Subclasses set ``model_id``, ``num_heads`` and ``head_dim``."""

    model_id: str = "unknown"
    sample_rate: int = 16000
    min_seconds: float = 1.0
    max_seconds: float = 30.0

    # --- what the gate needs -------------------------------------------------
    def gated_attentions(self) -> Sequence[nn.Module]:
        """The LLM's attention blocks (each owning ``o_proj``), in layer order."""
        raise NotImplementedError

    @property
    def num_layers(self) -> int:
        return len(self.gated_attentions())

    num_heads: int
    head_dim: int

    # --- data -----------------------------------------------------------------
    def collate(
        self,
        audios: Sequence[torch.Tensor],
        instructions: Sequence[str | None],
        targets: Sequence[str] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Waveforms at ``sample_rate`` + prompts (+ targets for training) -> model tensors.

        ``targets=None`` builds generation inputs (prompt only, left-padded).
        Runs in dataloader workers: CPU only, no model weights touched.
        """
        raise NotImplementedError

    # --- compute ------------------------------------------------------------
    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean next-token cross-entropy over the target tokens of the batch."""
        raise NotImplementedError

    def generate(self, batch: dict[str, torch.Tensor], **generation: object) -> list[str]:
        raise NotImplementedError

    default_generation: dict = {"max_new_tokens": 100, "num_beams": 1, "do_sample": False}

    # --- identity -------------------------------------------------------------
    def describe(self) -> dict[str, object]:
        """What a checkpoint or mask file records about the model it belongs to."""
        return {"model_id": self.model_id, "layers": self.num_layers, "heads": self.num_heads}

    def freeze(self) -> "LALMAdapter":
        """Freeze every weight and switch off dropout: AHAMask trains the mask only."""
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()
        return self

    def train(self, mode: bool = True) -> "LALMAdapter":
        # The frozen LALM stays in eval mode (no dropout) even while the mask trains.
        return super().train(False)


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy where ``labels`` is -100 outside the targets.

    ``logits`` may already be restricted to the label positions' predecessors; here the
    standard shift is applied: position t predicts label t + 1.
    """
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:]
    return nn.functional.cross_entropy(
        shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1), ignore_index=-100
    )


def weights_dir(pretrained: str | None, env_var: str, family: str) -> str:
    """The local checkpoint directory of a real model, from the YAML or ``$env_var``; one clear error if absent."""
    import os
    from pathlib import Path

    path = pretrained or os.environ.get(env_var)
    if not path or not Path(path).is_dir():
        raise FileNotFoundError(
            f"{family} weights not found: pretrained={path!r} is not a directory "
            f"(set model.init_args.model.init_args.pretrained or ${env_var})")
    return path
