"""Test helpers for the CLI's configuration: a parse-only parser and ``--print_config`` as a user runs it."""
from __future__ import annotations

from pathlib import Path

import lightning.pytorch as L
import yaml
from lightning.pytorch.cli import LightningArgumentParser

from ahamask_lightning.cli.lightning import AHAMaskCLI

REPO = Path(__file__).resolve().parents[1]


class ParseOnlyCLI(AHAMaskCLI):
    """The CLI's parser, with instantiation (and its output-directory probes) switched off."""

    def before_instantiate_classes(self) -> None:
        pass

    def instantiate_classes(self) -> None:
        pass


def parse_only_parser(config: Path) -> LightningArgumentParser:
    """The CLI's parser, set up from one experiment YAML, raising instead of exiting on errors."""
    return ParseOnlyCLI(L.LightningModule, L.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                        auto_configure_optimizers=False, run=False, args=["--config", str(config)],
                        parser_kwargs={"exit_on_error": False}).parser


def resolved_config(argv: list[str]) -> dict:
    """What ``ahamask ARGV --print_config`` prints (YAML includes and overrides resolved), as a dict:
    the console script's ``main`` run in this process from the repository root (it prints and exits
    0 while parsing, before any model is built)."""
    import contextlib
    import io

    from ahamask_lightning.cli.main import main

    printed = io.StringIO()
    with contextlib.chdir(REPO), contextlib.redirect_stdout(printed):
        try:
            main([*argv, "--print_config"])
        except SystemExit as done:
            assert done.code in (0, None), printed.getvalue()[-2000:]
        else:
            raise AssertionError("--print_config did not exit")
    return yaml.safe_load(printed.getvalue())
