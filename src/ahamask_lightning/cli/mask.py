"""``ahamask mask info | jaccard | combine | random | import-official``."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..analysis.masks import combine, jaccard_matrix, mask_to_logits, random_mask
from ..masking import import_official, load_mask, save_mask


def mask_labels(paths: list[str]) -> list[str]:
    """Short row labels: file names without ``.safetensors``, with as many parent folders as it takes
    to tell apart files of the same name (``fit`` writes every mask as ``mask.safetensors``)."""
    parts = [Path(p).with_suffix("").parts if p.endswith(".safetensors") else Path(p).parts for p in paths]
    depth = 1
    while depth < max(len(x) for x in parts) and len({x[-depth:] for x in parts}) < len(parts):
        depth += 1
    return ["/".join(x[-depth:]) for x in parts]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="mask_cmd", required=True)

    def command(name: str, text: str, example: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=text, description=text, epilog=f"example:\n  {example}",
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    released = "masks/salmonn-13b"
    p = command("info", "shape, active heads (in all and per layer) and metadata of a mask file",
                f"ahamask mask info {released}/asr_librispeech.safetensors")
    p.add_argument("mask", help="a mask .safetensors file")
    p = command("jaccard", "pairwise Jaccard similarity of the active heads of masks of one model",
                f"ahamask mask jaccard {released}/*.safetensors --plot jaccard.png")
    p.add_argument("masks", nargs="+", help="mask .safetensors files of the same shape")
    p.add_argument("--plot", help="also write the matrix as a heat map image (.png unless another suffix is given)")
    p = command("combine", "the heads on in every mask (and) or in any of them (or), as a new mask file",
                f"ahamask mask combine --op and {released}/asr_librispeech.safetensors "
                f"{released}/gender_librispeech.safetensors -o asr_and_gr.safetensors")
    p.add_argument("--op", choices=["and", "or"], required=True, help="and: intersection; or: union")
    p.add_argument("masks", nargs="+", help="mask .safetensors files of the same shape")
    p.add_argument("-o", "--out", required=True, help="the mask file to write")
    p = command("random", "a random mask of the same shape and number of active heads (the paper's baseline)",
                f"ahamask mask random --like {released}/gender_librispeech.safetensors --seed 0 -o random_gr.safetensors")
    p.add_argument("--like", required=True, help="mask whose shape and active-head count to match")
    p.add_argument("--seed", type=int, default=0, help="random seed, recorded in the file (default: 0)")
    p.add_argument("--active", type=int, help="number of active heads (default: as --like)")
    p.add_argument("-o", "--out", required=True, help="the mask file to write")
    p = command("import-official", "convert a checkpoint of the released AHAMask training code (.pth) to a mask file",
                "ahamask mask import-official gender_librispeech.pth --layers 40 --heads 40 -o gr.safetensors")
    p.add_argument("pth", help="the released checkpoint (its mask logits, with one extra FFN slot per layer)")
    p.add_argument("--layers", type=int, required=True, help="LLM layers of the model (SALMONN-13B: 40)")
    p.add_argument("--heads", type=int, required=True, help="attention heads per layer (SALMONN-13B: 40)")
    p.add_argument("-o", "--out", required=True, help="the mask file to write")


def run(args: argparse.Namespace) -> int:
    cmd = args.mask_cmd
    if cmd == "info":
        mf = load_mask(args.mask)
        layers, heads = mf.shape
        print(f"{args.mask}: {layers} layers x {heads} heads, {mf.active()} of {layers * heads} heads active "
              f"({100 * mf.active() / (layers * heads):.1f} %)")
        for key in sorted(mf.metadata):
            print(f"  {key}: {mf.metadata[key]}")
        per_layer = mf.mask.sum(1).int().tolist()
        print("  active per layer: " + " ".join(str(v) for v in per_layer))
        return 0
    if cmd == "jaccard":
        files = [load_mask(m) for m in args.masks]
        shapes = {f.shape for f in files}
        if len(shapes) > 1:
            raise ValueError(f"masks have different shapes {sorted(shapes)}: Jaccard needs one model")
        mat = jaccard_matrix([f.mask for f in files])
        names = mask_labels(args.masks)
        width = max(8, *(len(n) for n in names))
        print(" " * width + " " + " ".join(f"{n[:width]:>{width}}" for n in names))
        for name, row in zip(names, mat.tolist()):
            print(f"{name:<{width}} " + " ".join(f"{v:>{width}.3f}" for v in row))
        if args.plot:
            from ..analysis.figures import jaccard_heatmap

            plot = Path(args.plot) if Path(args.plot).suffix else Path(args.plot).with_suffix(".png")
            if plot.is_dir():
                raise ValueError(f"--plot {args.plot}: is a directory; expected an image file (.png, .pdf, .svg)")
            jaccard_heatmap(mat, names, str(plot))  # matplotlib picks the format from the suffix
            print(f"wrote {plot}")
        return 0
    if cmd == "combine":
        files = [load_mask(m) for m in args.masks]
        for f, name in zip(files[1:], args.masks[1:]):
            if f.shape != files[0].shape:
                raise ValueError(f"{name}: shape {f.shape} differs from {args.masks[0]} {files[0].shape}")
        out = combine([f.mask for f in files], args.op)
        save_mask(args.out, mask_to_logits(out), op=args.op, sources=",".join(args.masks),
                  model_id=files[0].metadata.get("model_id"))
        print(f"wrote {args.out}: {int(out.sum())} of {out.numel()} heads active")
        return 0
    if cmd == "random":
        like = load_mask(args.like)
        active = like.active() if args.active is None else args.active
        out = random_mask(like.shape, active, args.seed)
        save_mask(args.out, mask_to_logits(out), random_seed=args.seed, like=args.like,
                  model_id=like.metadata.get("model_id"))
        print(f"wrote {args.out}: {active} of {out.numel()} heads active (seed {args.seed})")
        return 0
    if cmd == "import-official":
        mf = import_official(args.pth, args.layers, args.heads)
        save_mask(args.out, mf.logits, **mf.metadata)
        print(f"wrote {args.out}: {args.layers} x {args.heads}, {mf.active()} heads active")
        return 0
    raise AssertionError(cmd)
