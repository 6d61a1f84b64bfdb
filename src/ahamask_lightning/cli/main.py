"""The ``ahamask`` console script: LightningCLI subcommands plus mask, data, model and report tools.

    ahamask fit|validate|test|predict --config CFG [...]
    ahamask mask info|jaccard|combine|random|import-official ...
    ahamask data synth|prepare ...
    ahamask model check-checkpoint --model NAME --ckpt FILE
    ahamask report RUN_DIR... [--format md|csv]
    ahamask prune --model NAME --mask MASK [--summary]
"""
from __future__ import annotations

import argparse
import importlib
import sys

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")
# command -> module with add_arguments(parser) and run(args) -> int
TOOLS = {
    "mask": "ahamask_lightning.cli.mask",
    "data": "ahamask_lightning.cli.data",
    "model": "ahamask_lightning.cli.model",
    "report": "ahamask_lightning.cli.report",
    "prune": "ahamask_lightning.cli.prune",
}


def _fail(message: str) -> int:
    print(f"ahamask: error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    command = argv[0]
    try:
        if command in LIGHTNING_COMMANDS:
            from .lightning import run_lightning

            return run_lightning(argv)
        if command not in TOOLS:
            return _fail(f"unknown command {command!r}: expected one of {', '.join(LIGHTNING_COMMANDS + tuple(TOOLS))}")
        module = importlib.import_module(TOOLS[command])
        parser = argparse.ArgumentParser(prog=f"ahamask {command}")
        module.add_arguments(parser)
        return module.run(parser.parse_args(argv[1:]))
    except (ValueError, FileNotFoundError, KeyError, PermissionError, RuntimeError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return _fail(msg)


if __name__ == "__main__":
    sys.exit(main())
