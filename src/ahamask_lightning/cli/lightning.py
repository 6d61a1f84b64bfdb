"""LightningCLI for ``ahamask fit|validate|test|predict``.

The config is parsed and checked (unknown keys, wrong types, unknown classes, unwritable
output directory, missing manifests, a missing or unsafe ``--ckpt_path``) before any model is
built, and such errors come out as one line.

Reliability (``fit``): every ``ModelCheckpoint`` without a ``dirpath`` writes to
``<default_root_dir>/checkpoints`` (not the logger's per-run version folder), so that
``--ckpt_path last`` finds the previous run's checkpoints; without any ``ModelCheckpoint`` one is
added (every 100 steps, ``last.ckpt``). ``FaultCheckpoint`` (``interrupted.ckpt`` on SIGTERM,
SIGINT or an error), ``RNGStateCheckpoint`` and ``RunReport`` are added. Checkpoints are always
read with ``weights_only=True``. A fit stopped by SIGTERM / SIGINT exits with 143 / 130 and one
line naming the checkpoint to resume from.
"""
from __future__ import annotations

import os
import pickle
import sys
import tempfile
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.exceptions import SIGTERMException

from ..accelerators import check_trainer_config  # registers --trainer.accelerator npu
from ..callbacks import FaultCheckpoint, RNGStateCheckpoint, RunReport
from ..module import NonFiniteLossError

DEFAULT_EVERY_N_STEPS = 100
CKPT_KEYWORDS = ("last", "best", "hpc")


class FitStopped(Exception):
    """A fit that stopped on a signal or a fault: one line for stderr and the exit status."""

    def __init__(self, line: str, code: int) -> None:
        super().__init__(line)
        self.line, self.code = line, code


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
        if self.subcommand:  # a command about to run (not a parse-only or run=False use of the class)
            _check_manifests((cfg.get("data") or {}).get("init_args") or {})
            if "weights_only" in cfg:
                if cfg.get("weights_only") is False:
                    raise ValueError("weights_only: false is refused: checkpoints are read with weights_only=True "
                                     "(they hold tensors and plain values only)")
                cfg["weights_only"] = True

    def _parse_ckpt_path(self) -> None:
        # LightningCLI reads the checkpoint here (its hyperparameters), before any model exists:
        # resolve ``last`` and refuse a missing, unreadable or unsafe file first, in one line.
        sub = self.config.get("subcommand")
        if sub:
            cfg = self.config[sub]
            ckpt = cfg.get("ckpt_path")
            if ckpt == "last" and sub == "fit":
                ckpt = cfg["ckpt_path"] = _resolve_last(cfg)
            if ckpt and str(ckpt) not in CKPT_KEYWORDS:
                _check_checkpoint(Path(ckpt))
        super()._parse_ckpt_path()

    def _instantiate_trainer(self, config: dict, callbacks: list) -> L.Trainer:
        if self.subcommand == "fit":
            config = dict(config)
            config["callbacks"] = _reliability_callbacks(config)
        return super()._instantiate_trainer(config, callbacks)

    def _run_subcommand(self, subcommand: str) -> None:
        try:
            super()._run_subcommand(subcommand)
        except (SystemExit, KeyboardInterrupt) as exc:
            fault = self._fault()
            cause = fault[2] if fault is not None else exc
            if not isinstance(cause, (SIGTERMException, KeyboardInterrupt)):
                raise
            name, code = ("SIGTERM", 143) if isinstance(cause, SIGTERMException) else ("SIGINT", 130)
            where = (f"at step {fault[1]}; checkpoint saved: {fault[0]} (resume with --ckpt_path last)"
                     if fault is not None else "before training began; no checkpoint written")
            raise FitStopped(f"fit stopped by {name} {where}", code) from exc
        except NonFiniteLossError as exc:
            fault = self._fault()
            saved = (f"; checkpoint saved: {fault[0]} (resume with --ckpt_path last)" if fault is not None
                     else "; no checkpoint written")
            raise FitStopped(f"error: {exc}{saved}", 2) from exc
        except Exception:
            fault = self._fault()
            if fault is not None:  # an unexpected error keeps its traceback; say where the state went
                print(f"ahamask: checkpoint saved: {fault[0]} at step {fault[1]} (resume with --ckpt_path last)",
                      file=sys.stderr)
            raise

    def _fault(self):
        trainer = getattr(self, "trainer", None)
        for cb in getattr(trainer, "callbacks", []) if trainer is not None else []:
            if isinstance(cb, FaultCheckpoint) and cb.saved is not None:
                return cb.saved
        return None


def _reliability_callbacks(config: dict) -> list:
    """The fit's callbacks plus what exact resume and fault reports need (see module docstring)."""
    given = config.get("callbacks") or []
    callbacks = list(given) if isinstance(given, list) else [given]
    extra: list = []
    if not any(isinstance(c, RNGStateCheckpoint) for c in callbacks):
        extra.append(RNGStateCheckpoint())
    if not any(isinstance(c, RunReport) for c in callbacks):
        extra.append(RunReport())
    if config.get("enable_checkpointing", True) is not False:
        ckpt_dir = os.path.realpath(Path(config.get("default_root_dir") or ".") / "checkpoints")
        models = [c for c in callbacks if isinstance(c, ModelCheckpoint)]
        for c in models:
            if c.dirpath is None:
                c.dirpath = ckpt_dir
        if not models:
            extra.append(ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=DEFAULT_EVERY_N_STEPS, save_last=True))
        if not any(isinstance(c, FaultCheckpoint) for c in callbacks):
            first = models[0].dirpath if models else ckpt_dir
            extra.append(FaultCheckpoint(first))  # after the ModelCheckpoints: trainer.checkpoint_callback stays theirs
    return callbacks + extra


def _resolve_last(cfg) -> str | None:
    """``--ckpt_path last`` for fit: the newest ``last*.ckpt`` / ``interrupted.ckpt`` in the
    checkpoint folders (``<default_root_dir>/checkpoints`` and any ModelCheckpoint ``dirpath``);
    None, with one warning line, when there is none yet (a first run: start from scratch)."""
    trainer = cfg.get("trainer") or {}
    dirs = [Path(trainer.get("default_root_dir") or ".") / "checkpoints"]
    for cb in trainer.get("callbacks") or []:
        class_path = str(cb.get("class_path", "")) if hasattr(cb, "get") else ""
        init = (cb.get("init_args") or {}) if hasattr(cb, "get") else {}
        if class_path.endswith("ModelCheckpoint") and init.get("dirpath"):
            dirs.append(Path(init["dirpath"]))
    found = [p for d in dirs if d.is_dir() for p in d.glob("*.ckpt")
             if p.stem == "last" or p.stem.startswith("last-v") or p.name == FaultCheckpoint.FILENAME]
    if not found:
        print(f"ahamask: ckpt_path=last: no checkpoint yet in {', '.join(map(str, dirs))}; starting from scratch",
              file=sys.stderr)
        return None
    return str(max(found, key=lambda p: p.stat().st_mtime_ns))


def _check_manifests(data_args: dict) -> None:
    """Every manifest the data module names must exist (one line naming it), before any model loads."""
    from ..data.manifest import as_list, check_manifest_file

    for key in ("train", "val", "test", "predict"):
        value = data_args.get(key)
        if value is None or not isinstance(value, (str, list, tuple, os.PathLike)):
            continue
        for path in as_list(value):
            try:
                check_manifest_file(path)
            except (FileNotFoundError, ValueError) as exc:
                raise type(exc)(f"data.init_args.{key}: {exc}") from None


def _check_checkpoint(path: Path) -> None:
    """``--ckpt_path`` must be a readable checkpoint of tensors and plain values (weights_only)."""
    if not path.is_file():
        raise FileNotFoundError(f"ckpt_path: {path}: checkpoint file not found")
    try:
        torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(f"ckpt_path: {path}: refused: {_unpickling_reason(exc)}") from None
    except Exception as exc:  # noqa: BLE001 - truncated or non-zip files
        raise ValueError(f"ckpt_path: {path}: not a readable checkpoint ({type(exc).__name__})") from None


def _unpickling_reason(exc: BaseException) -> str:
    text = str(exc)
    detail = next((line.strip() for line in text.splitlines() if "GLOBAL" in line or "Unsupported" in line), "")
    return ("it holds objects beyond tensors and plain values, which weights_only=True loading refuses"
            + (f" ({detail.rstrip('.')})" if detail else ""))


def _check_writable(path: Path, key: str) -> None:
    """Create the output directory and a probe file now, so a bad path fails before any loading."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".ahamask-write-check"):
            pass
    except OSError as exc:
        raise PermissionError(f"{key}: cannot write to {path} ({exc.strerror or exc})") from None


def _union_error_line(text: str) -> str | None:
    """jsonargparse wraps an adapter's own error (e.g. a missing weight path) in a many-line
    "Does not validate against any of the Union subtypes" message: keep the adapter's line."""
    if not text.startswith("Does not validate against any of the Union subtypes"):
        return None
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("- ") and not line[2:].startswith(("Expected a ", "Does not validate")):
            return line[2:].strip()
    return None


def run_lightning(argv: list[str]) -> int:
    sys.argv = [sys.argv[0]] + list(argv)  # LightningCLI reads sys.argv (args= with argv set only warns)
    try:
        AHAMaskCLI(
            L.LightningModule,
            L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,
            parser_class=OneLineErrorParser,
        )
    except FitStopped as stop:
        print(f"ahamask: {stop.line}", file=sys.stderr)
        return stop.code
    except ValueError as exc:
        line = _union_error_line(str(exc))
        if line is None:
            raise
        print(f"ahamask: error: {line}", file=sys.stderr)
        return 2
    except pickle.UnpicklingError as exc:  # a checkpoint reached by ckpt_path=last/best
        print(f"ahamask: error: checkpoint refused: {_unpickling_reason(exc)}", file=sys.stderr)
        return 2
    return 0
