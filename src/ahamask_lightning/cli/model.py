"""``ahamask model heads --model NAME`` and ``ahamask model check-checkpoint --model NAME --ckpt FILE``."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="model_cmd", required=True)
    from ..models.full_size import FULL_SIZE

    what = "gated heads of a full-size model, built on the meta device (no weights needed)"
    p = sub.add_parser("heads", help=what, description=what[0].upper() + what[1:] + ".")
    p.add_argument("--model", required=True, help=f"one of {', '.join(FULL_SIZE)}")
    what = "validate a released SALMONN checkpoint's keys and shapes against the model (no other weights needed)"
    p = sub.add_parser("check-checkpoint", help=what, description=what[0].upper() + what[1:] + ".")
    p.add_argument("--model", required=True, help="salmonn-13b or salmonn-7b")
    p.add_argument("--ckpt", required=True, help="the released checkpoint file (salmonn_v1.pth)")


def run(args: argparse.Namespace) -> int:
    if args.model_cmd == "heads":
        from ..models.full_size import gated_heads

        h = gated_heads(args.model)
        gqa = f", {h['kv_heads']} KV heads (GQA: gated per query head)" if h["kv_heads"] != h["heads"] else ""
        print(f"{args.model}: {h['layers']} layers x {h['heads']} query heads = {h['gated']} gated heads{gqa}")
        return 0
    from ..models.salmonn.cli import run as check

    return check(args)
