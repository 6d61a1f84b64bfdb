"""The callbacks ``ahamask fit`` adds by itself (see ``cli/lightning.py``), for exact resume and
fault reports:

* :class:`RNGStateCheckpoint` carries the torch (CUDA, Ascend NPU) / numpy / Python RNG states in
  checkpoints, so a resumed fit draws the same Gumbel noise as an uninterrupted one.
* :class:`FaultCheckpoint` saves ``interrupted.ckpt`` when a fit stops on SIGTERM, SIGINT, too
  many non-finite losses or any other error after training has begun; not on a full disk, where
  a second write would fail too.
* :class:`RunReport` writes ``fit_report.json`` (steps, skipped non-finite losses, rejected
  samples by reason, the rejects files; atomically) and prints its one-line summary.
"""
from __future__ import annotations

import errno
import json
import random
import sys
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.trainer.states import TrainerFn

from .masking.io import atomic_write


def rng_state() -> dict[str, Any]:
    """The global torch (and CUDA or Ascend NPU), numpy and Python RNG states, as tensors and plain
    values (what ``torch.load(weights_only=True)`` reads)."""
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                       "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        # this process's device only: a DDP rank draws on its own cuda:local_rank, and rank 0 writes
        # the checkpoint for all, so rank 0's states of the other devices (which it never advanced)
        # would restart those ranks' noise; the ranks' own devices are in step, so one state fits all
        state["cuda_device"] = torch.cuda.get_rng_state()
    # Ascend: torch_npu (imported only when an NPU is asked for) adds torch.npu; the mask noise is
    # drawn on the NPU's own generator. This process's device only, as for CUDA.
    npu = getattr(torch, "npu", None) if "torch_npu" in sys.modules else None
    if npu is not None and npu.is_available() and npu.is_initialized():
        state["npu_device"] = npu.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    if "cuda_device" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda_device"])
    elif "cuda" in state and torch.cuda.is_available():  # checkpoints written before: every device's state
        torch.cuda.set_rng_state_all(state["cuda"])
    npu = getattr(torch, "npu", None) if "torch_npu" in sys.modules else None
    if "npu_device" in state and npu is not None and npu.is_available():
        npu.set_rng_state(state["npu_device"])


class RNGStateCheckpoint(L.Callback):
    """Saves the global RNG states in every checkpoint and restores them on resume.

    Lightning does not checkpoint RNG states. They are restored at the first training batch after
    the resume, not when the checkpoint is read, so that whatever runs in between (restoring the
    loops, starting a data loader that is not a ``CutLoader``) cannot move them.

    Validation during a fit leaves the RNG states as it found them. A periodic checkpoint is saved
    at the end of a training batch, before the validation that may follow it; anything that
    validation draws (decoding with sampling, a data loader seeded from the global RNG) would
    otherwise give the run after it other mask noise than a run resumed from that checkpoint.
    ``CutLoader`` itself draws nothing from the global RNG (its worker seed has its own generator).
    So how often a fit validates does not change the mask it trains.
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None
        self._before_validation: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return rng_state()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = dict(state_dict)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.FITTING:
            self._before_validation = rng_state()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        state, self._before_validation = self._before_validation, None
        if state is not None:
            set_rng_state(state)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        state, self._pending = self._pending, None
        if state:
            set_rng_state(state)


class FaultCheckpoint(Checkpoint):
    """Saves ``<dirpath>/interrupted.ckpt`` when a fit stops on an exception (SIGTERM, SIGINT, too
    many non-finite losses, any error) once training has begun in this process.

    Like Lightning's ``OnExceptionCheckpoint``, but (a) nothing is saved for an error before the
    first training batch (e.g. a checkpoint of another model refused while restoring), which would
    otherwise leave a fresh-state file newer than the real last checkpoint, and (b) it does not make
    every ``fit`` resume by itself: resuming is asked for with ``--ckpt_path last``, which the CLI
    resolves to the newest of ``last*.ckpt`` and ``interrupted.ckpt``. On a fit that ends normally
    the file is removed. ``saved`` holds ``(path, global_step, exception)`` of the last save,
    ``failed`` the error of a save that failed (the CLI's stop line names it).
    """

    FILENAME = "interrupted.ckpt"

    def __init__(self, dirpath: str) -> None:
        self.dirpath = str(dirpath)
        self._training = False
        self.saved: tuple[str, int, BaseException] | None = None
        self.failed: BaseException | None = None

    @property
    def ckpt_path(self) -> str:
        return str(Path(self.dirpath) / self.FILENAME)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._training = True

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not self._training or is_disk_full(exception):  # a second write would fail the same way
            return
        try:
            Path(self.dirpath).mkdir(parents=True, exist_ok=True)
            trainer.save_checkpoint(self.ckpt_path)
        except Exception as exc:  # noqa: BLE001 - never hide the error that stopped the fit behind this one
            self.failed = exc
            return
        self.saved = (self.ckpt_path, trainer.global_step, exception)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:  # called on a normal end only
        if stage == "fit" and trainer.is_global_zero:
            Path(self.ckpt_path).unlink(missing_ok=True)


class RunReport(L.Callback):
    """At the end of a fit: ``fit_report.json`` in the log dir with steps, skipped non-finite losses
    and rejected samples by stage and reason, and one summary line on stderr. When the fit stops on
    an error after training began, the file is written (status ``stopped``) but no line is printed:
    the error's own line is the one to read."""

    def __init__(self, filename: str = "fit_report.json") -> None:
        self.filename = filename
        self.report: dict[str, Any] | None = None
        self._training = False

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._training = True

    def _build(self, trainer: L.Trainer, pl_module: L.LightningModule, status: str) -> dict[str, Any]:
        dm = getattr(trainer, "datamodule", None)
        rejected: dict[str, dict[str, int]] = {}
        if dm is not None and hasattr(dm, "reject_summary"):
            for stage in ("train", "val"):
                counts = dm.reject_summary(stage)
                if counts:
                    rejected[stage] = counts
        rejects_path = getattr(dm, "rejects_path", None)
        files = []
        if rejects_path:
            stem = Path(rejects_path)
            files = sorted(str(p) for p in stem.parent.glob(f"{stem.stem}.*.r*w*{stem.suffix or '.jsonl'}"))
        return {"status": status, "global_step": int(trainer.global_step), "epoch": int(trainer.current_epoch),
                "nonfinite_skipped": int(getattr(pl_module, "nonfinite_total", 0)),
                "rejected": rejected, "rejected_total": sum(sum(c.values()) for c in rejected.values()),
                "rejects_files": files}

    def _write(self, trainer: L.Trainer, pl_module: L.LightningModule, status: str, say: bool = True) -> None:
        report = self._build(trainer, pl_module, status)
        self.report = report
        out = Path(trainer.log_dir or trainer.default_root_dir or ".")  # log_dir broadcasts: every rank asks
        if not trainer.is_global_zero:
            return
        out.mkdir(parents=True, exist_ok=True)
        text = json.dumps(report, indent=1) + "\n"
        atomic_write(out / self.filename, lambda tmp: Path(tmp).write_text(text))  # a full disk keeps the old file
        if not say:
            return
        rej = ", ".join(f"{stage}: " + ", ".join(f"{r}={n}" for r, n in counts.items())
                        for stage, counts in report["rejected"].items()) or "none"
        print(f"ahamask: fit {status} at step {report['global_step']}: {report['nonfinite_skipped']} non-finite "
              f"losses skipped; {report['rejected_total']} samples rejected ({rej}); report: {out / self.filename}",
              file=sys.stderr)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer, pl_module, "finished")

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not self._training:
            return
        try:
            self._write(trainer, pl_module, "stopped", say=False)
        except Exception as exc:  # noqa: BLE001 - the report must never hide the error that stopped the fit
            if not is_disk_full(exception):  # the disk-full line already says why nothing more was written
                print(f"ahamask: (fit report not written: {exc})", file=sys.stderr)


def is_disk_full(exc: BaseException | None) -> bool:
    """ENOSPC / EDQUOT, also when a library wraps it (safetensors: ``IoError(... StorageFull ...)``)."""
    for _ in range(8):
        if exc is None:
            return False
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(text in str(exc) for text in ("No space left on device", "StorageFull", "Disk quota exceeded")):
            return True
        exc = exc.__cause__ or exc.__context__
    return False
