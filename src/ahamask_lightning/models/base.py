"""The small interface every LALM family implements so the LightningModule can gate and train it.

An adapter owns one frozen audio LLM (real transformers classes, or SALMONN's parts) and
knows four things: which attention blocks of the *LLM backbone* carry the heads to gate,
how to turn waveforms + an optional instruction + an optional target into tensors
(``collate``), the cross-entropy on target tokens (``loss``) and how to generate text
(``generate``). Everything else (the mask, the gate, schedules, metrics) lives outside.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer


class LALMAdapter(nn.Module):
    """Base class of the adapters. Subclasses set ``model_id``, ``num_heads`` and ``head_dim``."""

    model_id: str = "unknown"
    sample_rate: int = 16000
    min_seconds: float = 1.0
    max_seconds: float = 30.0
    # recompute the LLM layers in backward (enable_llm_checkpointing); adapters that offer it set it
    gradient_checkpointing: bool = False

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
    """Next-token cross-entropy over full ``[B, S, V]`` logits, ``labels`` -100 outside the targets.

    The reference the training path is checked against (and what a user of ``model(...).logits``
    would write); the adapters train with :func:`target_only_loss`, which never builds these logits.
    """
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:]
    return nn.functional.cross_entropy(
        shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1), ignore_index=-100
    )


def target_positions(labels: torch.Tensor) -> torch.Tensor:
    """``[B, S]`` bool: the positions whose *next* token is a target (label != -100).

    In row-major order these are exactly the predictions :func:`causal_lm_loss` scores, so
    ``hidden[keep]`` lines up with :func:`target_labels`.
    """
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != -100
    return keep


def target_labels(labels: torch.Tensor) -> torch.Tensor:
    """The target token ids, flattened in the order of ``hidden[target_positions(labels)]``."""
    nxt = labels[:, 1:]
    return nxt[nxt != -100]


def loss_on_target_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of ``[N, V]`` logits computed at the :func:`target_positions` only.

    The float cast touches N x V values (the targets), not the B x S x V of the full sequence.
    """
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                                       target_labels(labels).to(logits.device))


def target_only_loss(hidden_states: torch.Tensor, lm_head: nn.Module, labels: torch.Tensor) -> torch.Tensor:
    """The same value as ``causal_lm_loss(lm_head(hidden_states), labels)``, with lm_head applied
    only at the positions that predict a target: the vocabulary-sized matmul, its float copy and
    their backward shrink from every position of the batch to the target tokens."""
    keep = target_positions(labels).to(hidden_states.device)
    return loss_on_target_logits(lm_head(hidden_states[keep]), labels)


def accepts_logits_to_keep(model: nn.Module) -> bool:
    """Whether a transformers causal LM's ``forward`` takes ``logits_to_keep`` (a 2-D bool mask
    there selects positions and flattens them: ``transformers.modeling_utils.slice_logits_to_keep``)."""
    import inspect

    return "logits_to_keep" in inspect.signature(model.forward).parameters


@contextmanager
def last_position_logits(lm_head: nn.Module) -> Iterator[None]:
    """Inside the block, ``lm_head`` sees only the last position of a multi-position input.

    For ``generate`` on models whose ``forward`` lacks ``logits_to_keep`` (Qwen2-Audio, the
    Qwen2.5-Omni thinker): transformers then projects every prompt position onto the vocabulary
    in the prefill although greedy and beam search read ``logits[:, -1]`` only. Decoding steps
    have one position and pass unchanged. Not for assisted decoding, which scores several.
    """
    def keep_last(module: nn.Module, args: tuple) -> tuple | None:
        x = args[0]
        return (x[:, -1:],) + tuple(args[1:]) if x.dim() == 3 and x.shape[1] > 1 else None

    handle = lm_head.register_forward_pre_hook(keep_last)
    try:
        yield
    finally:
        handle.remove()


def checkpointable_layers(decoder: nn.Module) -> list[nn.Module]:
    """The decoder's layers that transformers can checkpoint, found by class: FSDP's auto-wrap puts a
    wrapper in ``decoder.layers``."""
    return [m for m in decoder.modules() if isinstance(m, GradientCheckpointingLayer)]


def enable_llm_checkpointing(decoder: nn.Module) -> None:
    """Activation checkpointing of a transformers decoder's layers (``activation_checkpointing_enable``,
    non-reentrant: the mask's gradient reaches through frozen layers without inputs that need grad).

    transformers checkpoints a layer only when the layer module itself is in training mode; the
    frozen LALM stays in eval mode, so :func:`llm_checkpointing_active` sets that one flag on each
    layer for the loss's forward and leaves every module inside in eval mode (attention dropout and a
    LoRA's ``lora_dropout`` stay off). A layer class whose own forward drops out (a ``dropout`` or
    ``activation_dropout`` > 0 on the layer, as Whisper's decoder layers have) would then run
    another function: refused here. The gated LLMs (Llama, Qwen2, Mistral, Granite) have none.
    """
    for index, layer in enumerate(checkpointable_layers(decoder)):
        for name, value in vars(layer).items():
            if not name.startswith("_") and "dropout" in name and isinstance(value, float) and value > 0:
                raise ValueError(f"gradient_checkpointing: LLM layer {index} ({type(layer).__name__}) drops out "
                                 f"in its own forward ({name}={value}); checkpointing runs it in training mode "
                                 "(expected no layer-level dropout)")
    decoder.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})


@contextmanager
def llm_checkpointing_active(decoder: nn.Module, on: bool) -> Iterator[None]:
    """The decoder layer modules (only them, not what they hold) in training mode inside the block when
    ``on``: transformers then checkpoints them (see :func:`enable_llm_checkpointing`).

    The recomputation runs in the backward pass: the head gate must still hold the step's mask
    then (``AHAMaskModule.backward`` keeps it applied).
    """
    layers = checkpointable_layers(decoder) if on else []
    before = [layer.training for layer in layers]
    for layer in layers:
        layer.training = True  # not layer.train(): that would switch the dropouts inside on too
    try:
        yield
    finally:
        for layer, mode in zip(layers, before):
            layer.training = mode


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
