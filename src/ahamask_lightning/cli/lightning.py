"""LightningCLI for ``ahamask fit|validate|test|predict``.

The config is parsed and checked (unknown keys, wrong types, unknown classes, unwritable
output directory) before any model is built, and such errors come out as one line.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import lightning as L
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from ..accelerators import check_trainer_config  # registers --trainer.accelerator npu


class OneLineErrorParser(LightningArgumentParser):
    """Config errors as one line naming the key, instead of the usage text and a traceback."""

    def error(self, message: str, *args, **kwargs):
        text = " ".join(str(message).split())
        print(f"ahamask: config error: {text}", file=sys.stderr)
        sys.exit(2)


class AHAMaskCLI(LightningCLI):
    def before_instantiate_classes(self) -> None:
        cfg = self.config.get(self.config.subcommand) if self.subcommand else self.config
        root = cfg.get("trainer", {}).get("default_root_dir") or "."
        _check_writable(Path(root), "trainer.default_root_dir")
        model_args = (cfg.get("model") or {}).get("init_args") or {}
        if model_args.get("results_dir"):
            _check_writable(Path(model_args["results_dir"]), "model.init_args.results_dir")
        check_trainer_config(cfg.get("trainer"))  # NPU without torch_npu: one line, before any weights load


def _check_writable(path: Path, key: str) -> None:
    """Create the output directory and a probe file now, so a bad path fails before any loading."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".ahamask-write-check"):
            pass
    except OSError as exc:
        raise PermissionError(f"{key}: cannot write to {path} ({exc.strerror or exc})") from None


def run_lightning(argv: list[str]) -> int:
    sys.argv = [sys.argv[0]] + list(argv)  # LightningCLI reads sys.argv (args= with argv set only warns)
    AHAMaskCLI(
        L.LightningModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
        parser_class=OneLineErrorParser,
    )
    return 0
