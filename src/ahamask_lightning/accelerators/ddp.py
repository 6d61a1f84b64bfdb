"""DDP and FSDP set up for AHAMask, where a frozen multi-billion-parameter LALM carries one trainable
tensor (the n x h mask logits).

* ``MaskDDPStrategy``: plain DDP, except that DDP's start-up sync of the whole model and its
  per-step buffer broadcast are off (its public ``init_sync=False`` and ``broadcast_buffers=False``)
  and only the trainable mask logits are broadcast from rank 0 at set-up. Every rank loads the
  frozen weights from the same files (or, for random test models, from the same seed), so
  broadcasting 26 GB of SALMONN-13B from rank 0 buys nothing; the mask gradient is still
  all-reduced, so the masks stay identical. This holds in ``fit`` only: ``validate``/``test``/
  ``predict`` build no DDP wrapper, and Lightning's ``DDPStrategy.setup`` then broadcasts every
  parameter and buffer from rank 0 itself (no public switch turns that off), so an evaluation on
  several devices still pays that start-up broadcast.
* ``MaskFSDPStrategy``: FSDP that shards each LLM decoder layer (auto-wrap) and keeps the head mask
  in its own un-sharded unit, so the trainable logits are whole on every rank (mask files and the
  logged active-head count read them outside forward) while their gradient is all-reduced.
  FSDP flattens each unit into one tensor, so a unit must hold one dtype, and SALMONN holds two: an
  fp16 LLM with peft's fp32 LoRA in its q/v projections, and fp32 Whisper/BEATs/connector beside
  the fp16 embeddings and lm_head. The wrap plan is therefore computed from the model at set-up
  (:func:`wrap_plan`): in the root unit and in each decoder-layer unit, every maximal submodule
  whose parameters all share a dtype other than the unit's main one (the one holding the most bytes)
  becomes its own unit -- each LoRA ``lora_A``/``lora_B`` Linear in a layer; at SALMONN's root the
  fp16 part of the LLM outside its layers (embeddings, norm, lm_head), since the fp32 encoders weigh
  more. These dtype units are un-sharded, like the mask: they are the small part (SALMONN-13B's
  is 0.66 GB of 26 GB), and the adapters reach into them without calling their ``forward``
  (``beats.extract_features``; the LLM is called past its peft wrapper), while a sharded unit
  gathers its weights only when its ``forward`` runs. Parameters that a module holds itself stay
  in that module's unit, so a module holding parameters of two dtypes (or of another dtype than
  the rest of its unit, where no choice of the unit's main dtype separates them) stops set-up in
  one line naming the module and its dtypes.
"""
from __future__ import annotations

import importlib
from collections import Counter
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


def no_shard() -> dict[str, Any]:
    """FSDP keyword overrides of an un-sharded unit (the head mask, the dtype units)."""
    from torch.distributed.fsdp import ShardingStrategy

    return {"sharding_strategy": ShardingStrategy.NO_SHARD}


def mask_wrap_rule(layer_classes: Sequence[str] = DEFAULT_LAYER_CLASSES,
                   model: nn.Module | None = None) -> Callable[[nn.Module], bool | dict]:
    """Which FSDP unit a module becomes: a decoder layer its own sharded unit (True), the HeadMask an
    un-sharded one (its sharding strategy), anything else none (False). Given the ``model`` to be
    wrapped, the rule is that model's :func:`wrap_plan`, which adds the units that give every unit
    one dtype; without it, the rule holds for a model of one dtype only."""
    if model is not None:
        plan = wrap_plan(model, layer_classes)
        return lambda module: plan.get(module, False)

    from ..masking import HeadMask

    layers = import_classes(layer_classes)

    def rule(module: nn.Module) -> bool | dict[str, Any]:
        if isinstance(module, HeadMask):
            return no_shard()
        return isinstance(module, layers)

    return rule


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _has_forward(module: nn.Module) -> bool:
    """False for containers (ModuleDict, ModuleList, ...): their children are called, never they."""
    return type(module).forward is not nn.Module.forward


def dtype_units(unit: nn.Module, nested: set[nn.Module], names: dict[nn.Module, str] | None = None) -> list[nn.Module]:
    """The submodules of the FSDP unit ``unit`` to make units of their own so that it holds one dtype.

    The unit's parameters are those of ``unit`` and its submodules outside the ``nested`` units. Its
    main dtype is the one holding the most bytes (or the next, where that one cannot be separated);
    every maximal submodule whose parameters all have one other dtype is returned (a container
    without ``forward``, such as peft's ``lora_A`` ModuleDict, gives its children instead). A
    parameter of another dtype held directly by a module of a mixed subtree (or by ``unit``)
    cannot be split off: ``ValueError`` in one line naming the module and the dtypes.
    """
    names = names if names is not None else {m: n for n, m in unit.named_modules()}
    sizes: dict[nn.Module, Counter] = {}

    def size(module: nn.Module) -> Counter:  # dtype -> bytes of the module's parameters in this unit
        if module not in sizes:
            count: Counter = Counter()
            for param in module.parameters(recurse=False):
                count[param.dtype] += param.numel() * param.element_size()
            for child in module.children():
                if child not in nested:
                    count.update(size(child))
            sizes[module] = count
        return sizes[module]

    total = size(unit)
    if len(total) < 2:
        return []
    first_stuck = None
    for keep in sorted(total, key=lambda d: (-total[d], str(d))):
        found: list[nn.Module] = []
        stuck: list[nn.Module] = []

        def walk(module: nn.Module, keep: torch.dtype = keep, found: list = found, stuck: list = stuck) -> None:
            if {p.dtype for p in module.parameters(recurse=False)} - {keep}:
                stuck.append(module)
                return
            for child in module.children():
                if child in nested or child in found:
                    continue
                dtypes = set(size(child))
                if not dtypes or dtypes == {keep}:
                    continue
                if len(dtypes) == 1 and (_has_forward(child) or any(True for _ in child.parameters(recurse=False))):
                    found.append(child)
                else:
                    walk(child)

        walk(unit)
        if not stuck:
            return found
        if first_stuck is None:
            first_stuck = stuck[0]

    module = first_stuck
    own = ", ".join(f"{n} {_dtype_name(p.dtype)}" for n, p in module.named_parameters(recurse=False))
    where = names.get(module) or type(module).__name__
    unit_name = names.get(unit) or type(unit).__name__
    raise ValueError(
        f"MaskFSDPStrategy: {where} ({type(module).__name__}) holds parameters of its own ({own}) that cannot be "
        f"separated from the {'/'.join(sorted(_dtype_name(d) for d in total))} parameters of its FSDP unit "
        f"({unit_name}), and FSDP flattens each unit into one dtype: cast them to one dtype")


def wrap_plan(model: nn.Module, layer_classes: Sequence[str] = DEFAULT_LAYER_CLASSES) -> dict[nn.Module, bool | dict]:
    """Every FSDP unit of ``model``, each of one dtype: ``{module: True (sharded like the root) or
    FSDP keyword overrides}``. The units of :func:`mask_wrap_rule` (the decoder layers, the head
    mask), plus, in the root unit and in each of those, the :func:`dtype_units` of another dtype,
    un-sharded (see the module docstring)."""
    base = mask_wrap_rule(layer_classes)
    plan = {m: unit for m in model.modules() if (unit := base(m))}
    nested = set(plan)
    names = {m: n for n, m in model.named_modules()}
    for unit in [model, *(m for m in nested if m is not model)]:
        for part in dtype_units(unit, nested - {unit}, names):
            plan[part] = no_shard()
    return plan


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


def mask_wrap_policy(layer_classes: Sequence[str] = DEFAULT_LAYER_CLASSES, model: nn.Module | None = None) -> Any:
    """FSDP ``CustomPolicy`` of :func:`mask_wrap_rule` (of ``model``'s :func:`wrap_plan` when given)."""
    from torch.distributed.fsdp.wrap import CustomPolicy

    return CustomPolicy(mask_wrap_rule(layer_classes, model))


class MaskFSDPStrategy(FSDPStrategy):
    """FSDP for a frozen LALM too large for one device (SALMONN-13B on < 40 GB devices).

    Units (set at set-up from the model, :meth:`use_model_wrap_policy`): each decoder layer, sharded;
    the head mask, un-sharded; and, where the root or a layer holds two dtypes (SALMONN: fp32 LoRA
    in fp16 layers, fp16 embeddings/lm_head beside fp32 encoders), each part of the other dtype,
    un-sharded (see the module docstring).

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
        self.use_model_wrap_policy()
        super().setup(trainer)

    def use_model_wrap_policy(self) -> None:
        """Make the auto-wrap policy that of the model's :func:`wrap_plan`, so that each FSDP unit holds
        one dtype; a module that cannot be given that stops here, before anything is sharded. The
        plan is made from the model as the precision plugin leaves it (32-true, 16-true and bf16-true
        cast it whole, the mixed precisions leave it; Lightning's own conversion after this one then
        changes nothing). A model already
        holding FSDP units is left alone, as Lightning does (it ignores the policy then)."""
        from torch.distributed.fsdp import FullyShardedDataParallel

        if any(isinstance(m, FullyShardedDataParallel) for m in self.model.modules()):
            return
        self.model = self.precision_plugin.convert_module(self.model)
        self.kwargs["auto_wrap_policy"] = mask_wrap_policy(self.layer_classes, self.model)
