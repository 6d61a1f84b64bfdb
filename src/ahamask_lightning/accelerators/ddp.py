"""DDP and FSDP set up for AHAMask, where a frozen multi-billion-parameter LALM carries one trainable
tensor (the n x h mask logits).

* ``MaskDDPStrategy``: plain DDP, except that DDP's start-up sync of the whole model and its
  per-step buffer broadcast are off (its public ``init_sync=False`` and ``broadcast_buffers=False``)
  and only the trainable mask logits are broadcast from rank 0 at set-up. Every rank loads the
  frozen weights from the same files (or, for random test models, from the same seed), so
  broadcasting 26 GB of SALMONN-13B from rank 0 buys nothing; the mask gradient is still
  all-reduced, so the masks stay identical.
* ``MaskFSDPStrategy``: FSDP that shards each LLM decoder layer (auto-wrap) and keeps the head mask
  in its own un-sharded unit, so the trainable logits are whole on every rank (mask files and the
  logged active-head count read them outside forward) while their gradient is all-reduced.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy
from torch import nn

# The decoder layers of the LLM backbones every adapter gates (SALMONN, TinyLALM, Voxtral: Llama;
# Qwen2-Audio, Audio Flamingo 3: Qwen2; Qwen2.5-Omni's thinker; Granite Speech: Granite).
DEFAULT_LAYER_CLASSES = (
    "transformers.models.llama.modeling_llama.LlamaDecoderLayer",
    "transformers.models.qwen2.modeling_qwen2.Qwen2DecoderLayer",
    "transformers.models.qwen2_5_omni.modeling_qwen2_5_omni.Qwen2_5OmniDecoderLayer",
    "transformers.models.granite.modeling_granite.GraniteDecoderLayer",
)


def frozen_sync_off(ddp_kwargs: dict[str, Any]) -> dict[str, Any]:
    """DDP keyword arguments that leave the frozen LALM alone (see the module docstring); the
    caller's own values win."""
    return {"init_sync": False, "broadcast_buffers": False, **ddp_kwargs}


def broadcast_trainable(module: nn.Module) -> None:
    """Rank 0's trainable parameters (the mask logits) on every rank: the one start-up sync needed."""
    for param in module.parameters():
        if param.requires_grad:
            torch.distributed.broadcast(param.data, src=0)


class MaskDDPStrategy(DDPStrategy):
    """``DDPStrategy`` that does not broadcast or sync the frozen LALM (see the module docstring)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**frozen_sync_off(kwargs))

    def setup(self, trainer: Any) -> None:
        super().setup(trainer)
        broadcast_trainable(self.lightning_module)


def import_classes(paths: Sequence[str]) -> tuple[type, ...]:
    """Classes from ``module.Class`` paths. A path that does not import is an error, not skipped: a
    layer class left out silently would leave its layers unsharded, each a whole copy per device."""
    if not paths:
        raise ValueError("MaskFSDPStrategy.layer_classes: expected at least one decoder-layer class")
    out = []
    for path in paths:
        module, _, name = path.rpartition(".")
        try:
            out.append(getattr(importlib.import_module(module), name))
        except ImportError as err:
            raise ValueError(f"MaskFSDPStrategy.layer_classes: cannot import {module} ({err})") from None
        except AttributeError:
            raise ValueError(f"MaskFSDPStrategy.layer_classes: {module} has no class {name}") from None
    return tuple(out)


def mask_wrap_rule(layer_classes: Sequence[str] = DEFAULT_LAYER_CLASSES) -> Callable[[nn.Module], bool | dict]:
    """Which FSDP unit a module becomes: a decoder layer its own sharded unit (True), the HeadMask an
    un-sharded one (its sharding strategy), anything else none (False)."""
    from torch.distributed.fsdp import ShardingStrategy

    from ..masking import HeadMask

    layers = import_classes(layer_classes)

    def rule(module: nn.Module) -> bool | dict[str, Any]:
        if isinstance(module, HeadMask):
            return {"sharding_strategy": ShardingStrategy.NO_SHARD}
        return isinstance(module, layers)

    return rule


def check_wraps_layers(module: nn.Module, layer_classes: Sequence[str] = DEFAULT_LAYER_CLASSES) -> int:
    """How many decoder layers of ``module`` FSDP will shard one by one; none is an error: FSDP would
    gather the whole frozen model on every rank at every forward, which is what FSDP is there to avoid."""
    layers = import_classes(layer_classes)
    count = sum(isinstance(m, layers) for m in module.modules())
    if count == 0:
        names = sorted({type(m).__name__ for m in module.modules() if type(m).__name__.endswith("Layer")})
        raise ValueError("MaskFSDPStrategy.layer_classes: no module of the model is one of "
                         f"{[p.rpartition('.')[2] for p in layer_classes]}; its layer classes: {names}")
    return count


def mask_wrap_policy(layer_classes: Sequence[str] = DEFAULT_LAYER_CLASSES) -> Any:
    """FSDP ``CustomPolicy`` of :func:`mask_wrap_rule`."""
    from torch.distributed.fsdp.wrap import CustomPolicy

    return CustomPolicy(mask_wrap_rule(layer_classes))


class MaskFSDPStrategy(FSDPStrategy):
    """FSDP for a frozen LALM too large for one device (SALMONN-13B on < 40 GB devices).

    Args:
        layer_classes: import paths of the decoder-layer classes to shard one by one (default: those
            of every adapter's LLM); a model with none of them stops at set-up.
        **kwargs: any ``FSDPStrategy`` argument (sharding_strategy, cpu_offload, state_dict_type, ...).
    """

    def __init__(self, layer_classes: list[str] | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("use_orig_params", True)  # frozen and trainable tensors share the root unit
        self.layer_classes = tuple(layer_classes or DEFAULT_LAYER_CLASSES)
        super().__init__(auto_wrap_policy=mask_wrap_policy(self.layer_classes), **kwargs)

    def setup(self, trainer: Any) -> None:
        check_wraps_layers(self.lightning_module, self.layer_classes)  # before anything is sharded
        super().setup(trainer)
