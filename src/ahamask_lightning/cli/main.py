"""The ``ahamask`` console script: one registry (:data:`COMMANDS`) both dispatches the subcommands
and writes ``ahamask --help``; every subcommand's own ``--help`` ends with its example.

``fit``, ``validate``, ``test`` and ``predict`` run LightningCLI (``cli/lightning.py``); the tools
are modules with ``add_arguments(parser)`` and ``run(args) -> int``, imported only when used.
Errors of input, configuration, files and devices come out as one line (``cli/errors.py``).
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from dataclasses import dataclass

from jsonargparse import DefaultHelpFormatter


@dataclass(frozen=True)
class Command:
    name: str
    description: str  # one line, shown by ``ahamask --help``
    example: str  # the last line of ``ahamask NAME --help``
    module: str | None = None  # a tool module; None: a LightningCLI subcommand


TINY = "experiments/gr_tiny.yaml"
TINY_MASK = "runs/tiny/gr/lightning_logs/version_0/mask.safetensors"
COMMANDS: tuple[Command, ...] = (
    Command("fit", "train a head mask on a frozen audio LLM from an experiment YAML",
            f"ahamask fit --config {TINY}   # its data: make tiny-data"),
    Command("validate", "score a model or mask on the validation manifests",
            f"ahamask validate --config {TINY} --model.init_args.mask {TINY_MASK}"),
    Command("test", "score a mask on the test manifests (test_metrics.json, predictions.jsonl)",
            f"ahamask test --config {TINY} --model.init_args.mask {TINY_MASK}"),
    Command("predict", "write the model's outputs for the predict manifests",
            f"ahamask predict --config {TINY} --model.init_args.mask {TINY_MASK}"),
    Command("infer", "apply one or more masks to audio files and print each clip's output",
            "ahamask infer --model tiny --mask gr.safetensors --mask all-on --audio a.wav b.wav",
            "ahamask_lightning.cli.infer"),
    Command("mask", "inspect, compare, combine, randomise or import mask files",
            f"ahamask mask info {TINY_MASK}", "ahamask_lightning.cli.mask"),
    Command("data", "synthesise SynthSpeech, write manifests for a published corpus, or pack them as Shar shards",
            "ahamask data prepare librispeech --root /data/LibriSpeech --out data/librispeech",
            "ahamask_lightning.cli.data"),
    Command("model", "gated heads of a full-size model, or check a released checkpoint",
            "ahamask model heads --model salmonn-13b", "ahamask_lightning.cli.model"),
    Command("report", "test results of run folders as a Markdown or CSV table",
            "ahamask report runs/demo/test --format csv", "ahamask_lightning.cli.report"),
    Command("prune", "remove the heads a mask switches off: what it saves, or the pruned model (--out)",
            "ahamask prune --model salmonn-13b --mask masks/salmonn-13b/aac_audiocaps.safetensors --summary",
            "ahamask_lightning.cli.prune"),
)
REGISTRY = {c.name: c for c in COMMANDS}


class ExampleHelpFormatter(argparse.RawDescriptionHelpFormatter, DefaultHelpFormatter):
    """jsonargparse's help formatter that keeps the epilog's example on its own line, unwrapped."""


def epilog(command: Command) -> str:
    return f"example:\n  {command.example}"


def top_level_help() -> str:
    width = max(len(c.name) for c in COMMANDS) + 2
    lines = ["usage: ahamask COMMAND [options]       (ahamask COMMAND --help: its options and an example)", "",
             "AHAMask: learned binary masks over the attention heads of a frozen audio LLM.", "",
             "training and evaluation (LightningCLI: --config YAML, --trainer.*, --model.*, --data.*):"]
    lines += [f"  {c.name:<{width}}{c.description}" for c in COMMANDS if c.module is None]
    lines += ["", "tools:"]
    lines += [f"  {c.name:<{width}}{c.description}" for c in COMMANDS if c.module is not None]
    lines += ["", "examples:"] + [f"  {c.example}" for c in COMMANDS if c.name in ("fit", "test", "infer", "mask")]
    return "\n".join(lines)


def lightning_parser_kwargs() -> dict:
    """LightningCLI's ``parser_kwargs``: per subcommand our description and example; the formatter
    also for the main parser, whose formatter jsonargparse passes on to the subcommands' help."""
    kwargs: dict = {"formatter_class": ExampleHelpFormatter}
    kwargs.update({c.name: {"description": c.description, "epilog": epilog(c), "formatter_class": ExampleHelpFormatter}
                   for c in COMMANDS if c.module is None})
    return kwargs


def tool_parser(command: Command) -> argparse.ArgumentParser:
    """The tool's parser, its options added by its module (which may set a longer description)."""
    module = importlib.import_module(command.module)
    parser = argparse.ArgumentParser(prog=f"ahamask {command.name}", description=command.description,
                                     epilog=epilog(command), formatter_class=argparse.RawDescriptionHelpFormatter)
    module.add_arguments(parser)
    return parser


def _fail(message: str) -> int:
    print(f"ahamask: error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(top_level_help())
        return 0
    name = argv[0]
    command = REGISTRY.get(name)
    if command is None:
        return _fail(f"unknown command {name!r}: expected one of {', '.join(REGISTRY)} (ahamask --help)")
    if command.module is None:
        from .lightning import run_lightning

        return run_lightning(argv, parser_kwargs=lightning_parser_kwargs())
    from .errors import ONE_LINE_ERRORS, error_line, full_traceback_wanted

    try:
        parser = tool_parser(command)
    except ModuleNotFoundError as exc:
        if exc.name and command.module.startswith(exc.name):
            return _fail(f"{name}: not available in this installation (module {command.module} is missing)")
        raise
    try:
        module = importlib.import_module(command.module)
        code = module.run(parser.parse_args(argv[1:]))
        sys.stdout.flush()  # a closed pipe shows here, where it is handled, rather than at exit
        return code
    except BrokenPipeError:  # `ahamask ... | head`: the reader has gone, nothing is wrong to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit's flush would fail again
        return 141
    except ONE_LINE_ERRORS as exc:
        if full_traceback_wanted():
            raise
        return _fail(error_line(exc))


if __name__ == "__main__":
    sys.exit(main())
