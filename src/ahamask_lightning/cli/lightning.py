"""LightningCLI for ``ahamask fit|validate|test|predict``, through LightningCLI's public hooks only.

Before any model is built (``parse_arguments`` and ``before_instantiate_classes``) the config is
checked and such errors come out as one line naming the key: unknown keys, wrong types, unknown
classes, an unwritable output directory, missing manifests, a missing, truncated or unsafe
``--ckpt_path``, an accelerator this machine lacks, a ``devices`` value Lightning would refuse.

Reliability (``fit``, see ``run_files.py``): one fit at a time per ``default_root_dir`` (a lock;
a second one stops in one line), and a new fit never writes over an earlier one's checkpoints
(it stops in one line: resume with ``--ckpt_path last`` or choose another folder); checkpoints
are written atomically (``AtomicCheckpointIO``); every ``ModelCheckpoint`` without a ``dirpath``
writes to ``<default_root_dir>/checkpoints`` (not the logger's per-run version folder), so that
``--ckpt_path last`` finds the previous run's checkpoints (the newest one that loads); without
any ``ModelCheckpoint`` one is added (every 100 steps, ``last.ckpt``). ``FaultCheckpoint``
(``interrupted.ckpt`` on SIGTERM, SIGINT or an error), ``RNGStateCheckpoint`` and ``RunReport``
are added. Checkpoints are always read with ``weights_only=True``. A fit stopped by SIGTERM /
SIGINT exits with 143 / 130 and one line naming the checkpoint to resume from; a full disk stops
it with one line naming the newest checkpoint.

Console (``progress.py``): the model summary without unmeasured FLOPs; a progress bar in a terminal
and one progress line every few steps otherwise.
"""
from __future__ import annotations

import os
import pickle
import sys
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from lightning.pytorch.callbacks import ModelSummary as LightningModelSummary
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

# importing accelerators registers --trainer.accelerator npu
from ..accelerators import check_devices, check_fit_precision, check_trainer_config
from ..analysis.report import metric_lines
from ..callbacks import check_sparsity_settings
from ..module import NO_MASK_HINT, AHAMaskModule, NoMaskToEvaluateError, NonFiniteLossError
from ..progress import LineProgress, MaskModelSummary, quiet_library_noise
from ..reliability import FaultCheckpoint, RNGStateCheckpoint, RunReport, is_disk_full
from .errors import ONE_LINE_ERRORS, error_line, full_traceback_wanted
from .parser import OneLineErrorParser
from .run_files import (
    AtomicCheckpointIO,
    FitLock,
    check_checkpoint,
    newest_loadable,
    refuse_earlier_fit,
    resolve_last,
    unpickling_reason,
)

DEFAULT_EVERY_N_STEPS = 100
CKPT_KEYWORDS = ("last", "best", "hpc")


class FitSession:
    """What ``run_lightning`` needs once LightningCLI has returned or raised: the trainer (for the
    fault callback's saved checkpoint), the folder lock, and the checkpoint folders."""

    def __init__(self) -> None:
        self.trainer: L.Trainer | None = None
        self.lock: FitLock | None = None
        self.checkpoint_dirs: list[Path] = []

    def _fault_callback(self) -> FaultCheckpoint | None:
        callbacks = self.trainer.callbacks if self.trainer is not None else []
        return next((cb for cb in callbacks if isinstance(cb, FaultCheckpoint)), None)

    def fault(self) -> tuple[str, int, BaseException] | None:
        cb = self._fault_callback()
        return cb.saved if cb is not None else None

    def save_failure(self) -> str | None:
        """Why the fault callback's checkpoint could not be written, when it tried and failed."""
        cb = self._fault_callback()
        if cb is None or cb.failed is None:
            return None
        return f"saving {cb.ckpt_path} failed: {cb.failed}"

    def no_checkpoint(self) -> str:
        failure = self.save_failure()
        return "no checkpoint written" + (f" ({failure})" if failure else "")

    def close(self) -> None:
        if self.lock is not None:
            self.lock.release()


EVAL_STAGES = {"test": "test", "validate": "val"}  # subcommand -> the stage its metric keys carry


class AHAMaskCLI(LightningCLI):
    def __init__(self, *args: Any, session: FitSession | None = None, **kwargs: Any) -> None:
        self.session = session if session is not None else FitSession()
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # The model hands the datamodule its batch builder once both exist (ahamask_lightning.data.collate).
        parser.link_arguments("model", "data.init_args.collate_fn", compute_fn=lambda model: model.collate(),
                              apply_on="instantiate")

    def _subcommand_config(self):
        sub = self.config.get("subcommand")
        return sub, (self.config[sub] if sub else self.config)

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        super().parse_arguments(parser, args)
        # LightningCLI reads --ckpt_path (its hyperparameters) right after parsing, before any model
        # exists: resolve ``last`` and refuse a missing, unreadable or unsafe file first, in one line.
        sub, cfg = self._subcommand_config()
        if not sub:
            return
        ckpt = cfg.get("ckpt_path")
        if ckpt == "last" and sub == "fit":
            ckpt = cfg["ckpt_path"] = resolve_last(checkpoint_dirs(cfg))
        if ckpt and str(ckpt) not in CKPT_KEYWORDS:
            check_checkpoint(Path(ckpt))

    def before_instantiate_classes(self) -> None:
        sub, cfg = self._subcommand_config()
        trainer = cfg.get("trainer") or {}
        root = trainer.get("default_root_dir") or "."
        _check_writable(Path(root), "trainer.default_root_dir")
        model_args = (cfg.get("model") or {}).get("init_args") or {}
        if model_args.get("results_dir"):
            _check_writable(Path(model_args["results_dir"]), "model.init_args.results_dir")
        for callback in _as_list(trainer.get("callbacks")):
            if str(callback.get("class_path", "")).endswith(".SparsityPenalty"):
                lam = (callback.get("init_args") or {}).get("lam")
                check_sparsity_settings(lam, model_args.get("sparsity_lambda"))
        check_trainer_config(trainer)  # NPU without torch_npu: one line, before any weights load
        check_devices(trainer)  # accelerator this machine lacks, devices Lightning would refuse
        if not sub:  # a parse-only or run=False use of the class: nothing runs
            return
        _check_manifests((cfg.get("data") or {}).get("init_args") or {}, sub)
        if sub in EVAL_STAGES and model_args.get("use_mask") is True and not model_args.get("mask") \
                and not cfg.get("ckpt_path"):
            # before any weights load; the module checks again (Python use)
            raise NoMaskToEvaluateError(f"model.init_args.mask: `{sub}` with the mask on needs one; {NO_MASK_HINT}")
        if "weights_only" in cfg:
            if cfg.get("weights_only") is False:
                raise ValueError("weights_only: false is refused: checkpoints are read with weights_only=True "
                                 "(they hold tensors and plain values only)")
            cfg["weights_only"] = True
        if sub in EVAL_STAGES and not any(a.split("=", 1)[0] == "--verbose" for a in sys.argv[1:]):
            cfg["verbose"] = False  # Lightning's table repeats each set's metrics under every DataLoader
        if sub == "fit":
            check_fit_precision(trainer)
            self.session.checkpoint_dirs = checkpoint_dirs(cfg)
            folders = [("trainer.default_root_dir", Path(root))]
            folders += [("ModelCheckpoint.dirpath", d) for d in self.session.checkpoint_dirs[1:]]
            self.session.lock = FitLock(folders)
            self.session.lock.acquire()
            if not cfg.get("ckpt_path") and trainer.get("enable_checkpointing", True) is not False:
                refuse_earlier_fit("trainer.default_root_dir", Path(root), self.session.checkpoint_dirs)

    def after_test(self) -> None:
        self._print_metrics("test")

    def after_validate(self) -> None:
        self._print_metrics("validate")

    def after_predict(self) -> None:
        module = self.trainer.lightning_module
        if self.trainer.is_global_zero and isinstance(module, AHAMaskModule):
            path = module.results_dir() / "predictions.jsonl"
            print(f"predict: {sum(1 for _ in path.open())} predictions written to {path}")

    def _print_metrics(self, sub: str) -> None:
        """Each metric once, named by its set (``asr/wer (ood)``), where Lightning's table was off."""
        if self.config_init[sub].get("verbose") or not self.trainer.is_global_zero:
            return
        lines = metric_lines(self.trainer.callback_metrics, EVAL_STAGES[sub])
        module = self.trainer.lightning_module
        where = f" ({module.results_dir() / 'test_metrics.json'})" if sub == "test" and isinstance(
            module, AHAMaskModule) else ""
        if lines:
            print(f"{sub} results{where}:", *lines, sep="\n")

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        config = self.config_init[self.subcommand] if self.subcommand else self.config_init
        trainer_config = {**(config.get("trainer") or {}), **kwargs}
        kwargs.update(_trainer_additions(trainer_config, fit=self.subcommand == "fit"))
        trainer = super().instantiate_trainer(**kwargs)
        self.session.trainer = trainer
        return trainer


def _as_list(value: Any) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _trainer_additions(config: dict, fit: bool) -> dict[str, Any]:
    """Trainer arguments added to the config's: callbacks (see module docstring) and the atomic
    checkpoint writer, unless the config brings its own ``CheckpointIO``."""
    callbacks = _as_list(config.get("callbacks"))
    extra: list = []
    out: dict[str, Any] = {}
    if config.get("enable_model_summary") is not False and not any(
            isinstance(c, LightningModelSummary) for c in callbacks):
        extra.append(MaskModelSummary())
        out["enable_model_summary"] = False  # Lightning's default summary off: ours runs instead, unannounced
    if config.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in callbacks) \
            and not sys.stdout.isatty():
        extra.append(LineProgress())  # a terminal keeps Lightning's progress bar
    if fit:
        extra += _reliability_callbacks(config, callbacks)
    out["callbacks"] = callbacks + extra
    plugins = _as_list(config.get("plugins"))
    if not any(isinstance(p, CheckpointIO) for p in plugins):
        out["plugins"] = plugins + [AtomicCheckpointIO()]
    return out


def _reliability_callbacks(config: dict, callbacks: list) -> list:
    """What exact resume and fault reports need (see module docstring)."""
    extra: list = []
    if not any(isinstance(c, RNGStateCheckpoint) for c in callbacks):
        extra.append(RNGStateCheckpoint())
    if not any(isinstance(c, RunReport) for c in callbacks):
        extra.append(RunReport())
    if config.get("enable_checkpointing", True) is not False:
        ckpt_dir = os.path.realpath(Path(config.get("default_root_dir") or ".") / "checkpoints")
        models = [c for c in callbacks if isinstance(c, ModelCheckpoint)]
        for c in models:
            # On the built callback rather than in the parsed config: the saved config.yaml keeps
            # `dirpath: null`, so reused with another default_root_dir it checkpoints into that run's
            # folder (a filled-in path would send the new run to the old one's)
            if c.dirpath is None:
                c.dirpath = ckpt_dir
        if not models:
            extra.append(ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=DEFAULT_EVERY_N_STEPS, save_last=True))
        if not any(isinstance(c, FaultCheckpoint) for c in callbacks):
            first = models[0].dirpath if models else ckpt_dir
            extra.append(FaultCheckpoint(first))  # after the ModelCheckpoints: trainer.checkpoint_callback stays theirs
    return extra


def checkpoint_dirs(cfg) -> list[Path]:
    """``<default_root_dir>/checkpoints`` and every ModelCheckpoint ``dirpath`` of a parsed fit config."""
    trainer = cfg.get("trainer") or {}
    dirs = [Path(trainer.get("default_root_dir") or ".") / "checkpoints"]
    for cb in _as_list(trainer.get("callbacks")):
        class_path = str(cb.get("class_path", "")) if hasattr(cb, "get") else ""
        init = (cb.get("init_args") or {}) if hasattr(cb, "get") else {}
        if class_path.endswith("ModelCheckpoint") and init.get("dirpath"):
            dirs.append(Path(init["dirpath"]))
    return dirs


def _check_manifests(data_args: dict, subcommand: str) -> None:
    """Every manifest the subcommand reads (a list, or named sets ``{name: [...]}``) must exist: one
    line naming each missing or unreadable one with its key, before any model loads."""
    from ..data.datamodule import STAGE_MANIFESTS
    from ..data.manifest import as_list, check_manifest_file

    problems: list[tuple[type[Exception], str]] = []
    for key in STAGE_MANIFESTS.get(subcommand, ()):
        value = data_args.get(key)
        if hasattr(value, "items"):  # named evaluation sets
            groups = [(f"data.init_args.{key}.{name}", manifests) for name, manifests in value.items()]
        elif isinstance(value, (str, list, tuple, os.PathLike)):
            groups = [(f"data.init_args.{key}", value)]
        else:
            continue
        for where, manifests in groups:
            for path in as_list(manifests):
                try:
                    check_manifest_file(path)
                except (FileNotFoundError, ValueError) as exc:
                    problems.append((type(exc), f"{where}: {exc}"))
    if problems:
        raise problems[0][0]("; ".join(text for _, text in problems))


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


def _stopped_line(session: FitSession, exc: BaseException) -> tuple[str, int] | None:
    """The one line and exit status of a fit that stopped on SIGTERM / SIGINT, else None."""
    fault = session.fault()
    cause = fault[2] if fault is not None else exc
    if not isinstance(cause, (SIGTERMException, KeyboardInterrupt)):
        return None
    name, code = ("SIGTERM", 143) if isinstance(cause, SIGTERMException) else ("SIGINT", 130)
    if fault is not None:
        where = f"at step {fault[1]}; checkpoint saved: {fault[0]} (resume with --ckpt_path last)"
    elif session.save_failure():
        where = f"at step {session.trainer.global_step}; {session.no_checkpoint()}"
    else:
        where = "before training began; no checkpoint written"
    return f"fit stopped by {name} {where}", code


def _disk_full_line(session: FitSession, exc: BaseException) -> str:
    step = f" at step {session.trainer.global_step}" if session.trainer is not None else ""
    try:
        newest, _ = newest_loadable(session.checkpoint_dirs)
    except ValueError:
        newest = None
    kept = (f"newest checkpoint that loads: {newest} (free some space, then resume with --ckpt_path last)"
            if newest is not None else "no checkpoint written yet")
    return f"disk full{step}: {error_line(exc).removeprefix('disk full: ')}; {kept}"


def run_lightning(argv: list[str], parser_kwargs: dict[str, Any] | None = None) -> int:
    caller_argv = sys.argv
    sys.argv = [sys.argv[0]] + list(argv)  # LightningCLI reads sys.argv (args= with argv set only warns)
    # The frozen LALM is in eval mode on purpose (LALMAdapter.train); the summary says so once.
    quiet_library_noise()
    session = FitSession()
    try:
        AHAMaskCLI(
            L.LightningModule,
            L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,
            parser_class=OneLineErrorParser,
            parser_kwargs=parser_kwargs,
            session=session,
        )
    except (SystemExit, KeyboardInterrupt) as exc:
        stopped = _stopped_line(session, exc)
        if stopped is None:
            raise
        print(f"ahamask: {stopped[0]}", file=sys.stderr)
        return stopped[1]
    except NonFiniteLossError as exc:
        fault = session.fault()
        saved = (f"; checkpoint saved: {fault[0]} (resume with --ckpt_path last)" if fault is not None
                 else f"; {session.no_checkpoint()}")
        print(f"ahamask: error: {exc}{saved}", file=sys.stderr)
        return 2
    except pickle.UnpicklingError as exc:  # a checkpoint reached by ckpt_path=last/best
        print(f"ahamask: error: checkpoint refused: {unpickling_reason(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:
        if is_disk_full(exc):
            print(f"ahamask: error: {_disk_full_line(session, exc)}", file=sys.stderr)
            return 2
        line = _union_error_line(str(exc)) if isinstance(exc, ValueError) else None
        if full_traceback_wanted() or (line is None and not isinstance(exc, ONE_LINE_ERRORS)):
            fault = session.fault()
            if fault is not None:  # an unexpected error keeps its traceback; say where the state went
                print(f"ahamask: checkpoint saved: {fault[0]} at step {fault[1]} (resume with --ckpt_path last)",
                      file=sys.stderr)
            raise
        fault = session.fault()
        saved = f"; checkpoint saved: {fault[0]} at step {fault[1]} (resume with --ckpt_path last)" if fault else ""
        print(f"ahamask: error: {line or error_line(exc)}{saved}", file=sys.stderr)
        return 2
    finally:
        session.close()
        sys.argv = caller_argv  # a caller running several commands in one process gets its own back
    return 0
