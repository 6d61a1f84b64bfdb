"""``ahamask infer``: apply one or more masks to audio clips and print what the model says.

    ahamask infer --model tiny --mask gr.safetensors --mask all-on --audio a.wav b.wav [--prune] [--out preds.jsonl]

One line per clip and mask on stdout (``clip  mask  text``) and one JSON record each in
``--out``. The work is done by :func:`ahamask_lightning.serving.infer`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_OUT = "predictions.jsonl"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (  # explicit line breaks: `ahamask` shows tool descriptions as written
        "Decode audio clips with head masks: one output per clip and mask.\n"
        "Several --mask without --prune run as one stream of batches in which every sample carries its\n"
        "own mask (mixed tasks in one generate call). With --prune, pruning being per mask, each mask\n"
        "gets its own physically pruned model, built in turn; the text is the gated model's.")
    parser.add_argument("audio", nargs="*", help="audio files (any format soundfile reads; resampled to the model's rate; "
                                                 "at most the model's audio window: TinyLALM 12 s, Qwen2-Audio 30 s)")
    parser.add_argument("--audio", nargs="+", dest="audio_files", default=[], metavar="AUDIO",
                        help="audio files, as an option (same as the positional ones)")
    parser.add_argument("--manifest", help='JSONL, one {"audio": PATH, "id"?: ..., "instruction"?: ...} per line')
    parser.add_argument("--mask", action="append", default=[], required=True,
                        help="mask file (.safetensors, logits [layers, heads]) or 'all-on'; repeat for several")
    parser.add_argument("--model", help="'tiny': the TinyLALM testbed (its folder: --weights, default "
                                        "checkpoints/tiny_lalm_8x16g); other models: --config EXPERIMENT.yaml")
    parser.add_argument("--weights", help="checkpoint directory of the model (TinyLALM: e.g. checkpoints/tiny_lalm)")
    parser.add_argument("--config", help="experiment YAML: the adapter is built as its model.init_args.model says")
    parser.add_argument("--prune", action="store_true",
                        help="decode with the physically pruned model, one pruned model per mask")
    parser.add_argument("--batch-size", type=int, default=8, help="samples per generate call (default 8)")
    parser.add_argument("--max-new-tokens", type=int, help="generation length (default: the model's)")
    parser.add_argument("--instruction", help="instruction text for every clip (default: none, as masks are trained)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"JSONL of the outputs (default {DEFAULT_OUT})")


def run(args: argparse.Namespace) -> int:
    import torch

    from ..serving import build_adapter, infer, load_clips, load_masks, model_spec, write_jsonl

    if args.model is None and args.config is None:
        raise ValueError("give --model tiny [--weights DIR] or --config EXPERIMENT.yaml")
    out_dir = Path(args.out).parent
    if not out_dir.is_dir():  # before any model loads
        raise FileNotFoundError(f"--out {args.out}: directory {out_dir} does not exist")
    if Path(args.out).is_dir():
        raise IsADirectoryError(f"--out {args.out}: is a directory; expected the JSONL file to write")
    audio = args.audio + args.audio_files
    missing = [f"{m}: mask file not found" for m in args.mask if m != "all-on" and not Path(m).is_file()]
    missing += [f"{a}: {'is a directory, expected an audio file' if Path(a).is_dir() else 'missing_file'}"
                for a in audio if not Path(a).is_file()]
    if args.manifest and not Path(args.manifest).is_file():
        missing.append(f"{args.manifest}: manifest file not found")
    if missing:  # every absent file at once, before any model loads
        raise FileNotFoundError("; ".join(missing))
    try:
        adapter = build_adapter(model_spec(args.model, args.weights, args.config))
    except FileNotFoundError as err:
        if args.weights is None and "weights not found" in str(err):
            raise FileNotFoundError(f"{err}; with ahamask infer: --weights DIR") from None
        raise
    masks = load_masks(args.mask, (adapter.num_layers, adapter.num_heads))
    clips = load_clips(audio, args.manifest, adapter, args.instruction)
    adapter.to(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    generation = {} if args.max_new_tokens is None else {"max_new_tokens": args.max_new_tokens}
    records = infer(adapter, masks, clips, prune=args.prune, batch_size=args.batch_size, generation=generation)
    for rec in records:
        print(f"{rec['clip']}  {rec['mask']}  {rec['text']}")
    write_jsonl(args.out, records)
    print(f"wrote {args.out}: {len(records)} outputs ({len(clips)} clips x {len(masks)} masks"
          f"{', pruned' if args.prune else ''})", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m ahamask_lightning.cli.infer``: the same command, with one-line errors as ``ahamask``."""
    parser = argparse.ArgumentParser(prog="ahamask infer")
    add_arguments(parser)
    try:
        return run(parser.parse_args(argv))
    except (ValueError, FileNotFoundError, KeyError, PermissionError, RuntimeError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"ahamask: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
