"""``ahamask model check-checkpoint --model salmonn-13b --ckpt FILE``: keys and shapes of salmonn_v1.pth."""
from __future__ import annotations

import argparse
from pathlib import Path

from .checkpoint import MODEL_VARIANTS, check_checkpoint, read_checkpoint


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, choices=sorted(MODEL_VARIANTS),
                        help="model whose full-size structure the checkpoint must fit")
    parser.add_argument("--ckpt", required=True, help="SALMONN checkpoint (salmonn_v1.pth)")


def run(args: argparse.Namespace) -> int:
    """Print ``OK: N keys match`` or one line per problem; exit code 1 on problems. A file that is
    not there is an error of the command line, as in every other command."""
    if not Path(args.ckpt).is_file():
        raise FileNotFoundError(f"--ckpt {args.ckpt}: " + ("is a directory; expected the checkpoint file"
                                                           if Path(args.ckpt).is_dir() else "file not found"))
    problems = check_checkpoint(args.model, args.ckpt)
    if problems:
        for line in problems:
            print(f"{args.ckpt}: {line}")
        return 1
    print(f"OK: {len(read_checkpoint(args.ckpt))} keys match {args.model}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ahamask model check-checkpoint", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
