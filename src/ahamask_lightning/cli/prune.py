"""``ahamask prune --model NAME --mask MASK``: what physical pruning removes from a full-size model.

The model is built on the meta device (no weights, no memory), pruned with
``masking.prune.prune_heads`` and the report printed: per layer the query heads and KV groups
removed, the KV groups a grouped-query model keeps because some of their heads are on, and the
attention parameters saved. To prune real weights, call ``prune_adapter(adapter, mask)``.
"""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="a full-size model name (see `ahamask model heads`)")
    parser.add_argument("--mask", required=True, help="mask file (.safetensors) of that model")
    parser.add_argument("--summary", action="store_true", help="print the totals only, not every layer")


def run(args: argparse.Namespace) -> int:
    from ..masking import load_mask
    from ..masking.prune import prune_heads
    from ..models.full_size import FULL_SIZE

    if args.model not in FULL_SIZE:
        raise ValueError(f"--model: unknown model {args.model!r}, expected one of {', '.join(FULL_SIZE)}")
    _, attentions, cfg = FULL_SIZE[args.model]()
    mask = load_mask(args.mask, shape=(len(attentions), cfg.num_attention_heads)).mask
    lines = prune_heads(attentions, mask).lines()
    n_layers = len(attentions)
    print(f"{args.model} pruned by {args.mask}:")
    for line in lines[n_layers:] if args.summary else lines:
        print("  " + line)
    return 0
