"""``ahamask model heads --model NAME`` and ``ahamask model check-checkpoint --model NAME --ckpt FILE``."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="model_cmd", required=True)
    from ..models.full_size import FULL_SIZE

    p = sub.add_parser("heads", help="gated heads of a full-size model, built on the meta device")
    p.add_argument("--model", required=True, help=f"one of {', '.join(FULL_SIZE)}")
    p = sub.add_parser("check-checkpoint", help="validate a released checkpoint's keys and shapes")
    p.add_argument("--model", required=True, help="salmonn-13b or salmonn-7b")
    p.add_argument("--ckpt", required=True)


def run(args: argparse.Namespace) -> int:
    if args.model_cmd == "heads":
        from ..models.full_size import gated_heads

        h = gated_heads(args.model)
        gqa = f", {h['kv_heads']} KV heads (GQA: gated per query head)" if h["kv_heads"] != h["heads"] else ""
        print(f"{args.model}: {h['layers']} layers x {h['heads']} query heads = {h['gated']} gated heads{gqa}")
        return 0
    from ..models.salmonn.cli import run as check

    return check(args)
