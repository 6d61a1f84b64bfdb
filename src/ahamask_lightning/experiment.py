"""The paper's four test conditions, run through the same ``ahamask`` CLI a user would type.

    with instruction   ungated model, the task's paper instruction
    no instruction     ungated model, no instruction
    random mask        a random mask with the AHAMask's number of active heads, no instruction
    AHAMask            the learned mask, no instruction
"""
from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from .cli.main import main as ahamask
from .cli.run_files import earlier_fit_files

CONDITIONS = ("with instruction", "no instruction", "random mask", "AHAMask")


@dataclass
class Condition:
    name: str
    prompt: str
    use_mask: bool
    mask: str | None = None

    def args(self) -> list[str]:
        out = ["--model.init_args.prompt", self.prompt, "--model.init_args.use_mask", str(self.use_mask).lower()]
        if self.mask:
            out += ["--model.init_args.mask", self.mask]
        return out


def run_cli(argv: list[str]) -> None:
    code = ahamask(argv)
    if code:
        raise RuntimeError(f"`ahamask {' '.join(argv)}` exited with {code}")


def fit_mask(config: str, out_dir: Path, extra: list[str] = ()) -> Path:
    """Train a mask with ``ahamask fit``; returns the mask file the MaskMonitor wrote.

    ``out_dir`` belongs to this fit: a driver run again (``make demo``, ``reproduce``) trains again,
    so an earlier run of it there (its ``checkpoints`` and ``fit`` folders) is removed first, with a
    line saying so; ``ahamask fit`` itself refuses to write over an earlier fit.
    """
    if earlier_fit_files([out_dir / "checkpoints"]):
        print(f"ahamask: {out_dir}: replacing the earlier run of this fit", file=sys.stderr)
        shutil.rmtree(out_dir / "checkpoints")
        shutil.rmtree(out_dir / "fit", ignore_errors=True)
    run_cli(["fit", "--config", config, "--trainer.default_root_dir", str(out_dir),
             "--trainer.logger.class_path", "lightning.pytorch.loggers.TensorBoardLogger",
             "--trainer.logger.init_args.save_dir", str(out_dir), "--trainer.logger.init_args.name", "",
             "--trainer.logger.init_args.version", "fit", *extra])
    mask = out_dir / "fit" / "mask.safetensors"
    if not mask.is_file():
        raise FileNotFoundError(f"{mask}: fit finished without writing its mask")
    return mask


def random_like(mask: Path, out: Path, seed: int = 0) -> Path:
    run_cli(["mask", "random", "--like", str(mask), "--seed", str(seed), "-o", str(out)])
    return out


def test_condition(config: str, cond: Condition, out_dir: Path, extra: list[str] = ()) -> dict:
    """``ahamask test`` under one condition; returns the metrics it wrote."""
    out_dir.mkdir(parents=True, exist_ok=True)
    run_cli(["test", "--config", config, *cond.args(), "--model.init_args.results_dir", str(out_dir),
             "--trainer.logger", "false", *extra])
    return json.loads((out_dir / "test_metrics.json").read_text())


def conditions(mask: Path, random_mask: Path) -> list[Condition]:
    return [Condition("with instruction", "task", False), Condition("no instruction", "none", False),
            Condition("random mask", "none", True, str(random_mask)), Condition("AHAMask", "none", True, str(mask))]
