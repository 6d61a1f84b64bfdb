"""The files of a fit: atomic checkpoint writes, one fit at a time per output folder, and
``--ckpt_path last`` resolved to the newest checkpoint that loads.

* :class:`AtomicCheckpointIO`: Lightning's ``TorchCheckpointIO`` (checked: lightning 2.6) serialises
  to memory and then writes the bytes through ``fsspec`` straight onto the final path, so a full
  disk leaves a truncated ``last.ckpt``. This subclass writes a temporary file in the same folder,
  ``fsync``\\ s it and renames it over the target: the old file stays whole until the new one is.
* :class:`FitLock`: an exclusive ``filelock`` (an OS lock, released when the process dies, even by
  SIGKILL) on ``<default_root_dir>/.ahamask-fit.lock`` and on every explicit checkpoint folder, taken
  before any model is built; a second fit into the same folder stops with one line instead of
  overwriting the first one's checkpoints, ``mask-step{N}`` files and log version.
* :func:`refuse_earlier_fit` (with :func:`earlier_fit_files`): a new fit (no ``--ckpt_path``) into folders that already hold an earlier
  fit's checkpoints or ``mask-step{N}`` files stops with one line (resume it with ``--ckpt_path last``,
  or choose another folder): Lightning would version its ``.ckpt`` names but the mask files and
  ``--ckpt_path last`` would mix the two runs. The lock covers fits that overlap in time; this, fits
  that follow each other.
* :func:`resolve_last`: the newest ``last*.ckpt`` / ``interrupted.ckpt`` that ``torch.load``
  (``weights_only=True``) reads; unreadable (truncated) ones are skipped and named, and a checkpoint
  holding objects beyond tensors and plain values is refused.
"""
from __future__ import annotations

import io
import os
import pickle
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock, Timeout
from lightning.pytorch.plugins.io import TorchCheckpointIO

INTERRUPTED = "interrupted.ckpt"
LOCK_NAME = ".ahamask-fit.lock"


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose ``save_checkpoint`` never leaves a partial file (see module docstring)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):  # remote or custom storage: Lightning's own path
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(buffer.getbuffer())
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException as exc:
            Path(tmp).unlink(missing_ok=True)
            if isinstance(exc, OSError) and exc.filename is None:
                raise type(exc)(exc.errno, exc.strerror, str(target)) from exc
            raise


class FitBusyError(RuntimeError):
    """Another fit holds the output folder; the message is one line naming it."""


def _is_rank_zero() -> bool:
    # DDP launchers re-run ``ahamask fit`` for every rank: only the first process of the run locks.
    return all(os.environ.get(key, "0") == "0" for key in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


class FitLock:
    """Exclusive locks on the folders a fit writes to (see module docstring); :meth:`release` at the end."""

    def __init__(self, folders: Iterable[tuple[str, Path]]) -> None:
        self.folders = list(folders)
        self.locks: list[FileLock] = []

    def acquire(self) -> None:
        if not _is_rank_zero():
            return
        for key, folder in self.folders:
            folder.mkdir(parents=True, exist_ok=True)
            lock = FileLock(str(folder / LOCK_NAME), timeout=0)
            try:
                lock.acquire()
            except Timeout:
                self.release()
                raise FitBusyError(f"{key}: another ahamask fit is writing to {folder} now (lock "
                                   f"{folder / LOCK_NAME}); wait for it to end or choose another {key}") from None
            self.locks.append(lock)

    def release(self) -> None:
        while self.locks:
            self.locks.pop().release()


def earlier_fit_files(dirs: Iterable[Path]) -> list[Path]:
    """The checkpoints (``*.ckpt``) and mask files (``mask-step*.safetensors``) already in ``dirs``."""
    return sorted(p for d in dirs if d.is_dir() for p in d.iterdir()
                  if p.suffix == ".ckpt" or (p.name.startswith("mask-step") and p.suffix == ".safetensors"))


def refuse_earlier_fit(root_key: str, root: Path, dirs: Iterable[Path]) -> None:
    """One line when a new fit would write over an earlier fit's files in ``dirs`` (rank zero only)."""
    found = earlier_fit_files(dirs) if _is_rank_zero() else []
    if found:
        more = f" and {len(found) - 1} more" if len(found) > 1 else ""
        raise FileExistsError(f"{root_key}: {root} holds an earlier fit's checkpoints ({found[0]}{more}); "
                              f"resume that fit with --ckpt_path last, or start this one in another folder")


def checkpoint_problem(path: Path) -> tuple[str, str] | None:
    """None when ``path`` loads with ``weights_only=True``; else ("missing"|"unsafe"|"unreadable", why)."""
    if not path.is_file():
        return "missing", "checkpoint file not found"
    try:
        torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as exc:
        return "unsafe", f"refused: {unpickling_reason(exc)}"
    except Exception as exc:  # noqa: BLE001 - truncated or non-zip files
        return "unreadable", f"not a readable checkpoint ({type(exc).__name__})"
    return None


def check_checkpoint(path: Path) -> None:
    """``--ckpt_path`` must be a readable checkpoint of tensors and plain values (weights_only)."""
    problem = checkpoint_problem(path)
    if problem is None:
        return
    kind, why = problem
    raise (FileNotFoundError if kind == "missing" else ValueError)(f"ckpt_path: {path}: {why}")


def unpickling_reason(exc: BaseException) -> str:
    text = str(exc)
    detail = next((line.strip() for line in text.splitlines() if "GLOBAL" in line or "Unsupported" in line), "")
    return ("it holds objects beyond tensors and plain values, which weights_only=True loading refuses"
            + (f" ({detail.rstrip('.')})" if detail else ""))


def candidates(dirs: Iterable[Path]) -> list[Path]:
    """``last*.ckpt`` and ``interrupted.ckpt`` in ``dirs``, newest first."""
    found = {p for d in dirs if d.is_dir() for p in d.glob("*.ckpt")
             if p.stem == "last" or p.stem.startswith("last-v") or p.name == INTERRUPTED}
    return sorted(found, key=lambda p: p.stat().st_mtime_ns, reverse=True)


def newest_loadable(dirs: Iterable[Path]) -> tuple[Path | None, list[Path]]:
    """The newest candidate that loads, and the newer ones skipped as unreadable. A checkpoint that
    weights_only loading refuses as unsafe is an error, not skipped: it names itself."""
    skipped: list[Path] = []
    for path in candidates(dirs):
        problem = checkpoint_problem(path)
        if problem is None:
            return path, skipped
        if problem[0] == "unsafe":
            raise ValueError(f"ckpt_path: {path}: {problem[1]}")
        skipped.append(path)
    return None, skipped


def resolve_last(dirs: list[Path]) -> str | None:
    """``--ckpt_path last`` for fit (see module docstring); None, with one line, before any checkpoint."""
    path, skipped = newest_loadable(dirs)
    unreadable = ", ".join(map(str, skipped))
    if path is None:
        if skipped:
            raise ValueError(f"ckpt_path=last: no readable checkpoint in {', '.join(map(str, dirs))} "
                             f"({unreadable}: not readable, e.g. truncated)")
        print(f"ahamask: ckpt_path=last: no checkpoint yet in {', '.join(map(str, dirs))}; starting from scratch",
              file=sys.stderr)
        return None
    if skipped:
        print(f"ahamask: ckpt_path=last: resuming from {path} ({unreadable}: not readable, e.g. truncated; skipped)",
              file=sys.stderr)
    return str(path)
