"""Physically remove the attention heads a binary AHAMask switches off.

The gate (``gate.py``) multiplies the off heads' attention outputs by zero; pruning makes
that permanent and smaller: for each gated layer it drops the off query heads' rows of
``q_proj`` and their input columns of ``o_proj``, and drops a KV group's rows of ``k_proj``
and ``v_proj`` **only when every query head of that group is off**. The pruned model computes
exactly what the gated model computes (tested on eager and sdpa, forward and cached
``generate``); only the weights of the attention blocks change.

Rules, per layer (``H`` query heads, ``K`` KV heads, groups of ``g = H / K`` query heads; head
``j`` reads KV head ``j // g``):

* A KV group whose query heads are all off is removed with its query heads.
* A KV group with at least one query head on is **kept**: its k/v rows stay. transformers'
  attention kernels map query heads to KV heads by one group size per layer
  (``num_key_value_groups``), so every kept group keeps the same number ``g'`` of query heads,
  the largest number of on heads in any kept group. A kept group with fewer on heads keeps
  some of its off heads as *padding*: their ``q_proj`` rows stay and their ``o_proj`` input
  columns are set to zero, which is the gate's own arithmetic. The report names these groups
  and heads. (With ``K == H``, plain multi-head attention, no padding ever occurs.)
* A layer with every head off keeps one query head (head 0) and its KV group, with that head's
  ``o_proj`` columns zeroed: the attention adds only ``o_proj``'s bias (none in these models),
  exactly as the gated layer does, and no kernel ever sees a zero-size projection.

``head_dim`` and the layer's other weights are untouched. Each module's head counts are
updated where transformers reads them at forward time (``num_key_value_groups``, and
``num_heads`` / ``num_key_value_heads`` on classes that keep them); the model's shared
``config`` is left as it was, since layers may now differ, so ``save_pretrained`` would write
weights its config does not describe: ``ahamask_lightning.pruned_model`` saves and loads pruned
models instead. :func:`pruned_copies` and :func:`use_blocks` prune copies of the attention blocks
and swap them in for a while (``ahamask infer --prune``, ``AHAMaskModule(prune=True)``), leaving
the gated model as it was.
Projections wrapped by peft LoRA (SALMONN's and Granite Speech's q/v) are pruned in their base
weights and in the LoRA factors alike.

By hand because the libraries stop short: transformers 5 no longer has ``prune_heads`` (it served
BERT-style encoders without grouped KV), and ``torch.nn.utils.prune`` masks weights rather than
removing them, which saves no computation.
"""
from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from .gate import find_o_proj


@dataclass
class LayerPruning:
    """What pruning did to one layer. Head and group indices are those of the unpruned layer."""

    layer: int
    heads: int                      # query heads before
    kv_heads: int                   # KV heads before
    kept_heads: list[int]           # query heads kept, in their new order
    kept_groups: list[int]          # KV groups kept
    padding_heads: list[int] = field(default_factory=list)  # off heads kept (o_proj columns zeroed)
    partial_groups: list[int] = field(default_factory=list)  # kept groups that still had off heads
    all_off: bool = False
    params_removed: int = 0

    @property
    def removed_heads(self) -> int:
        return self.heads - len(self.kept_heads)

    @property
    def removed_kv_groups(self) -> int:
        return self.kv_heads - len(self.kept_groups)

    @property
    def grouped(self) -> bool:
        return self.kv_heads != self.heads

    def describe(self) -> str:
        text = (f"layer {self.layer}: removed {self.removed_heads} of {self.heads} query heads, "
                f"{self.removed_kv_groups} of {self.kv_heads} KV groups")
        if self.all_off:
            return text + " (every head off: head 0 kept with zeroed o_proj columns, the layer adds nothing)"
        if self.grouped and self.partial_groups:
            text += (f"; kept KV group{'s' if len(self.partial_groups) > 1 else ''} "
                     f"{', '.join(map(str, self.partial_groups))} because some of {'their' if len(self.partial_groups) > 1 else 'its'} "
                     "query heads are on")
        if self.padding_heads:
            text += (f"; off heads {', '.join(map(str, self.padding_heads))} kept with zeroed o_proj columns "
                     f"so that every kept group has {len(self.kept_heads) // len(self.kept_groups)} query heads")
        return text


@dataclass
class PruneReport:
    layers: list[LayerPruning]
    params_before: int
    params_after: int

    @property
    def removed_heads(self) -> int:
        return sum(r.removed_heads for r in self.layers)

    @property
    def removed_kv_groups(self) -> int:
        return sum(r.removed_kv_groups for r in self.layers)

    def lines(self) -> list[str]:
        heads = sum(r.heads for r in self.layers)
        kv = sum(r.kv_heads for r in self.layers)
        removed = self.params_before - self.params_after
        out = [r.describe() for r in self.layers]
        out.append(f"total: removed {self.removed_heads} of {heads} query heads and {self.removed_kv_groups} of "
                   f"{kv} KV groups; attention parameters {self.params_before:,} -> {self.params_after:,} "
                   f"(-{removed:,}, {100 * removed / max(self.params_before, 1):.1f} %)")
        partial = sum(len(r.partial_groups) for r in self.layers if r.grouped and not r.all_off)
        if partial:
            out.append(f"{partial} KV groups were kept only because some of their query heads are on "
                       "(grouped-query attention removes whole KV groups only)")
        return out

    def __str__(self) -> str:
        return "\n".join(self.lines())


# --- weight surgery on nn.Linear and peft LoRA-wrapped Linear -----------------------------
def _base_linear(module: nn.Module) -> nn.Linear:
    base = getattr(module, "base_layer", module)
    if not isinstance(base, nn.Linear):
        raise TypeError(f"cannot prune a {type(module).__name__}: expected nn.Linear or a peft LoRA Linear")
    if getattr(module, "use_dora", {}) and any(module.use_dora.values()):
        raise TypeError("cannot prune a DoRA-wrapped projection (its magnitude vector is per output row of the "
                        "merged weight); merge the adapter first")
    return base


def _set(linear: nn.Linear, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    linear.weight = nn.Parameter(weight.contiguous(), requires_grad=linear.weight.requires_grad)
    if linear.bias is not None:
        linear.bias = nn.Parameter(bias.contiguous(), requires_grad=linear.bias.requires_grad)
    linear.out_features, linear.in_features = linear.weight.shape


def _keep_rows(module: nn.Module, rows: torch.Tensor) -> None:
    """Keep output features ``rows`` of a Linear (and of every LoRA B factor wrapping it)."""
    base = _base_linear(module)
    idx = rows.to(base.weight.device)
    _set(base, base.weight.index_select(0, idx), None if base.bias is None else base.bias.index_select(0, idx))
    for lora_b in getattr(module, "lora_B", {}).values():
        _set(lora_b, lora_b.weight.index_select(0, rows.to(lora_b.weight.device)),
             None if lora_b.bias is None else lora_b.bias.index_select(0, rows.to(lora_b.bias.device)))
    if module is not base:
        module.out_features = base.out_features


def _keep_columns(module: nn.Module, cols: torch.Tensor, zero: torch.Tensor | None = None) -> None:
    """Keep input features ``cols`` of a Linear (and of its LoRA A factors); zero the new columns ``zero``."""
    base = _base_linear(module)
    weight = base.weight.index_select(1, cols.to(base.weight.device))
    if zero is not None and zero.numel():
        weight[:, zero.to(weight.device)] = 0
    _set(base, weight, base.bias)
    for lora_a in getattr(module, "lora_A", {}).values():
        w = lora_a.weight.index_select(1, cols.to(lora_a.weight.device))
        if zero is not None and zero.numel():
            w[:, zero.to(w.device)] = 0
        _set(lora_a, w, lora_a.bias)
    if module is not base:
        module.in_features = base.in_features


def _head_rows(heads: Sequence[int], head_dim: int) -> torch.Tensor:
    return (torch.as_tensor(list(heads), dtype=torch.long)[:, None] * head_dim
            + torch.arange(head_dim)[None]).flatten()


def _count(modules: Sequence[nn.Module]) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


# --- planning and pruning -----------------------------------------------------------------
def plan_layer(on: Sequence[bool], kv_heads: int, layer: int = 0) -> LayerPruning:
    """Which query heads and KV groups of one layer survive (see the module doc for the rules)."""
    heads = len(on)
    if heads % kv_heads:
        raise ValueError(f"layer {layer}: {heads} query heads do not split into {kv_heads} KV groups")
    g = heads // kv_heads
    groups = [[j for j in range(k * g, (k + 1) * g)] for k in range(kv_heads)]
    active = [[j for j in grp if on[j]] for grp in groups]
    kept_groups = [k for k in range(kv_heads) if active[k]]
    if not kept_groups:
        return LayerPruning(layer, heads, kv_heads, kept_heads=[0], kept_groups=[0], padding_heads=[0],
                            all_off=True)
    width = max(len(active[k]) for k in kept_groups)
    kept, padding = [], []
    for k in kept_groups:
        pad = [j for j in groups[k] if not on[j]][: width - len(active[k])]
        kept += sorted(active[k] + pad)
        padding += pad
    partial = [k for k in kept_groups if len(active[k]) < g]
    return LayerPruning(layer, heads, kv_heads, kept_heads=kept, kept_groups=kept_groups, padding_heads=padding,
                        partial_groups=partial)


def _projections(attn: nn.Module) -> tuple[nn.Module, nn.Module, nn.Module, nn.Module]:
    try:
        return attn.q_proj, attn.k_proj, attn.v_proj, find_o_proj(attn)
    except AttributeError as err:
        raise TypeError(f"{type(attn).__name__}: pruning needs q_proj, k_proj, v_proj and o_proj") from err


def prune_layer(attn: nn.Module, on: Sequence[bool], layer: int = 0) -> LayerPruning:
    """Prune one attention block in place to the heads ``on`` (one bool per query head)."""
    q, k, v, o = _projections(attn)
    head_dim = attn.head_dim
    heads = _base_linear(q).out_features // head_dim
    kv_heads = _base_linear(k).out_features // head_dim
    if len(on) != heads:
        raise ValueError(f"layer {layer}: mask has {len(on)} heads, the attention block has {heads}")
    plan = plan_layer(list(on), kv_heads, layer)
    before = _count([attn])
    if plan.removed_heads or plan.padding_heads:
        rows = _head_rows(plan.kept_heads, head_dim)
        zero = _head_rows([plan.kept_heads.index(j) for j in plan.padding_heads], head_dim)
        _keep_rows(q, rows)
        _keep_columns(o, rows, zero)
        if plan.removed_kv_groups:
            kv_rows = _head_rows(plan.kept_groups, head_dim)
            _keep_rows(k, kv_rows)
            _keep_rows(v, kv_rows)
    new_heads, new_kv = len(plan.kept_heads), len(plan.kept_groups)
    attn.num_key_value_groups = new_heads // new_kv
    for name, value in (("num_heads", new_heads), ("num_attention_heads", new_heads),
                        ("num_key_value_heads", new_kv)):
        if isinstance(getattr(attn, name, None), int):
            setattr(attn, name, value)
    attn.pruned_heads = {"kept_heads": plan.kept_heads, "kept_kv_groups": plan.kept_groups,
                         "padding_heads": plan.padding_heads}
    plan.params_removed = before - _count([attn])
    return plan


def prune_heads(attentions: Sequence[nn.Module], mask: torch.Tensor) -> PruneReport:
    """Prune every attention block to the heads ``mask`` (``[layers, heads]``, on iff > 0.5) keeps.

    The blocks are changed in place; the report says per layer what was removed and, for
    grouped-query models, which KV groups had to stay because some of their heads are on.
    """
    mask = torch.as_tensor(mask)
    if mask.dim() != 2 or mask.shape[0] != len(attentions):
        raise ValueError(f"mask shape {tuple(mask.shape)} does not fit {len(attentions)} attention layers")
    on = (mask.detach().float() > 0.5).cpu()
    before = _count(attentions)
    with torch.no_grad():
        layers = [prune_layer(attn, on[i].tolist(), i) for i, attn in enumerate(attentions)]
    return PruneReport(layers, before, _count(attentions))


def prune_adapter(adapter: nn.Module, mask: torch.Tensor) -> PruneReport:
    """Prune the LLM of an LALM adapter (its ``gated_attentions()``) to ``mask``.

    The adapter keeps its ``num_heads`` (mask files still describe the unpruned layout); a head
    gate no longer fits the pruned ``o_proj`` widths, so do not install one afterwards
    (``HeadGate`` refuses the widths at forward time).
    """
    return prune_heads(adapter.gated_attentions(), mask)


# --- pruned copies that can be swapped in and out (inference beside a gated model) ----------
def pruned_copies(adapter: nn.Module, mask: torch.Tensor) -> tuple[list[nn.Module], PruneReport]:
    """Pruned copies of the adapter's attention blocks; the adapter itself is left as it is.

    Each block is deep-copied and pruned one at a time, so the extra memory is the pruned
    attention weights plus one unpruned block. Swap the copies in with :func:`use_blocks`.
    """
    blocks = [copy.deepcopy(attn) for attn in adapter.gated_attentions()]
    return blocks, prune_heads(blocks, mask)


def _block_slots(adapter: nn.Module) -> list[tuple[nn.Module, str]]:
    """(parent module, attribute name) of each gated attention block, in layer order."""
    where = {id(module): name for name, module in adapter.named_modules()}
    slots = []
    for attn in adapter.gated_attentions():
        name = where.get(id(attn))
        if not name:
            raise TypeError(f"{type(attn).__name__}: the attention block is not a submodule of the adapter")
        parent, _, attr = name.rpartition(".")
        slots.append((adapter.get_submodule(parent), attr))
    return slots


@contextmanager
def use_blocks(adapter: nn.Module, blocks: Sequence[nn.Module]) -> Iterator[None]:
    """Inside the block the adapter runs with ``blocks`` as its attention blocks; the originals come back after.

    The swap is an attribute assignment on each decoder layer (no weights are copied), so it
    costs nothing per batch. A head gate installed on the originals does not act on the copies
    while its mask is None (the copies carry its hook, which then does nothing).
    """
    slots = _block_slots(adapter)
    if len(blocks) != len(slots):
        raise ValueError(f"{len(blocks)} attention blocks for {len(slots)} layers")
    originals = [getattr(parent, attr) for parent, attr in slots]
    try:
        for (parent, attr), block in zip(slots, blocks):
            setattr(parent, attr, block)
        yield
    finally:
        for (parent, attr), block in zip(slots, originals):
            setattr(parent, attr, block)


class PrunedEval:
    """The pruned attention blocks of one evaluation mask, rebuilt only when the mask or the
    adapter's device or dtype changes.

    Not an ``nn.Module``: the copies are an inference cache, kept out of ``state_dict`` and
    checkpoints (so ``module.to(...)`` does not reach them: they are rebuilt where the adapter
    then is), built on whatever device the adapter is on when they are first needed.
    """

    def __init__(self, adapter: nn.Module) -> None:
        self.adapter = adapter
        self.mask: torch.Tensor | None = None
        self.placement: tuple[torch.device, torch.dtype] | None = None
        self.blocks: list[nn.Module] = []
        self.report: PruneReport | None = None

    def _placement(self) -> tuple[torch.device, torch.dtype]:
        weight = find_o_proj(next(iter(self.adapter.gated_attentions()))).weight
        return weight.device, weight.dtype

    @contextmanager
    def use(self, mask: torch.Tensor) -> Iterator[None]:
        mask = (mask.detach().float() > 0.5).float().cpu()
        placement = self._placement()
        if self.mask is None or not torch.equal(self.mask, mask) or placement != self.placement:
            self.blocks = []  # free the previous copies before building the next
            self.blocks, self.report = pruned_copies(self.adapter, mask)
            self.mask, self.placement = mask, placement
        with use_blocks(self.adapter, self.blocks):
            yield
