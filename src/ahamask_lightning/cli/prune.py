"""``ahamask prune``: what physical pruning removes, or a pruned model written to disk.

    ahamask prune --model voxtral-mini-3b --mask MASK [--summary]          # full-size, meta device
    ahamask prune --model tiny [--weights DIR] --mask MASK --out DIR        # real weights, saved
    ahamask prune --config EXPERIMENT.yaml --mask MASK --out DIR

A full-size model name builds the structure on the meta device (no weights, no memory) and
prints the report: per layer the query heads and KV groups removed, the KV groups a
grouped-query model keeps because some of their heads are on, the attention parameters saved.
``--model tiny`` or ``--config`` builds the adapter with its weights; ``--out DIR`` then writes
the pruned model (see ``ahamask_lightning.pruned_model`` for the format and why it is not
``save_pretrained``), which ``load_pruned(DIR)`` reads back.
"""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="a full-size model name (see `ahamask model heads`), or 'tiny' (TinyLALM)")
    parser.add_argument("--weights", help="with --model tiny or --config: the checkpoint directory to load")
    parser.add_argument("--config", help="experiment YAML: build the adapter its model.init_args.model describes")
    parser.add_argument("--mask", required=True, action="append",
                        help="mask file (.safetensors) of that model (one: a pruned model holds one mask)")
    parser.add_argument("--out", help="write the pruned model to this directory (not with a full-size meta model)")
    parser.add_argument("--summary", action="store_true", help="print the totals only, not every layer")


def _print(title: str, lines: list[str], n_layers: int, summary: bool) -> None:
    print(title)
    for line in lines[n_layers:] if summary else lines:
        print("  " + line)


def run(args: argparse.Namespace) -> int:
    from ..masking import load_mask
    from ..models.full_size import FULL_SIZE

    if len(args.mask) > 1:  # silently taking the last one would prune by a mask the user may not mean
        raise ValueError(f"--mask: given {len(args.mask)} times; a pruned model holds one mask: run "
                         "`ahamask prune` once per mask (`ahamask infer --prune` takes several)")
    mask_file = args.mask[0]

    if args.config is None and args.model in FULL_SIZE:
        if args.out or args.weights:
            raise ValueError(f"--out/--weights: {args.model} is built on the meta device (no weights); "
                             "use --config EXPERIMENT.yaml to prune and save real weights")
        from ..masking.prune import prune_heads

        _, attentions, cfg = FULL_SIZE[args.model]()
        mask = load_mask(mask_file, shape=(len(attentions), cfg.num_attention_heads)).mask
        _print(f"{args.model} pruned by {mask_file}:", prune_heads(attentions, mask).lines(), len(attentions),
               args.summary)
        return 0
    if args.config is None and args.model != "tiny":
        raise ValueError(f"--model: unknown model {args.model!r}, expected 'tiny' or one of {', '.join(FULL_SIZE)} "
                         "(or --config EXPERIMENT.yaml)")
    from ..masking.prune import prune_adapter
    from ..pruned_model import check_out_dir, save_pruned
    from ..serving import build_adapter, model_spec

    if args.out:
        check_out_dir(args.out)  # before any model loads
    spec = model_spec(args.model, args.weights, args.config)
    adapter = build_adapter(spec)
    mask = load_mask(mask_file, shape=(adapter.num_layers, adapter.num_heads)).mask
    report = save_pruned(adapter, spec, mask, args.out) if args.out else prune_adapter(adapter, mask)
    _print(f"{adapter.model_id} pruned by {mask_file}:", report.lines(), adapter.num_layers, args.summary)
    if args.out:
        print(f"wrote {args.out} (load with ahamask_lightning.pruned_model.load_pruned)")
    return 0
