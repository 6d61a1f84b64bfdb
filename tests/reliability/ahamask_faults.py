"""Test-only fault injection for ``ahamask fit`` subprocesses (importable with this folder on PYTHONPATH).

Driven by environment variables, so one YAML serves the reference run and every faulty one:

* ``AHAMASK_FAULT_DIR``: where markers and ``steps.jsonl`` go (nothing is written without it).
* ``AHAMASK_FAULT_PAUSE_AT=N``: at the end of step N (``global_step == N`` in ``on_train_batch_end``,
  before the checkpoint callbacks' hooks) write ``paused-N`` and wait there until a signal:
  SIGKILL ends the process, SIGINT raises ``KeyboardInterrupt`` out of the wait, SIGTERM sets
  Lightning's flag and the wait returns so that Lightning can stop after this batch.
* ``AHAMASK_FAULT_NAN_AT``: steps whose loss is made NaN, as ``2,5`` or ``3-`` (3 and after):
  the temperature buffer is set to NaN after ``TemperatureAnnealing`` wrote it.
* ``AHAMASK_FAULT_RESUME``: with ``PAUSE_AT``, the pause also ends (and the fit goes on) once the
  file ``resume-N`` appears in the fault dir.
* ``AHAMASK_FAULT_FILL_DISK_AT=N`` and ``AHAMASK_FAULT_FILL_DISK_PATH=FILE``: at the end of step N
  (before the checkpoint callbacks) grow FILE until its file system is full.
* ``steps.jsonl``: one line per training batch, ``{"step": global_step, "ids": [...]}``, written
  before the step runs: the data each step consumed.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import lightning as L


def _steps(spec: str) -> tuple[set[int], int | None]:
    exact, start = set(), None
    for part in filter(None, (p.strip() for p in spec.split(","))):
        if part.endswith("-"):
            start = int(part[:-1])
        else:
            exact.add(int(part))
    return exact, start


class FaultInjector(L.Callback):
    def __init__(self) -> None:
        out = os.environ.get("AHAMASK_FAULT_DIR")
        self.out = Path(out) if out else None
        pause = os.environ.get("AHAMASK_FAULT_PAUSE_AT")
        self.pause_at = int(pause) if pause else None
        self.nan_exact, self.nan_from = _steps(os.environ.get("AHAMASK_FAULT_NAN_AT", ""))
        fill = os.environ.get("AHAMASK_FAULT_FILL_DISK_AT")
        self.fill_at = int(fill) if fill else None
        self.fill_path = os.environ.get("AHAMASK_FAULT_FILL_DISK_PATH")

    def _nan(self, step: int) -> bool:
        return step in self.nan_exact or (self.nan_from is not None and step >= self.nan_from)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        step = trainer.global_step
        if self._nan(step):
            pl_module.set_temperature(float("nan"))
        if self.out is not None:
            self.out.mkdir(parents=True, exist_ok=True)
            with open(self.out / "steps.jsonl", "a", encoding="utf-8") as fh:
                fh.write(json.dumps({"step": step, "ids": list(batch["ids"])}) + "\n")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.fill_at is not None and trainer.global_step == self.fill_at and self.fill_path:
            fill_disk(Path(self.fill_path))
        if self.pause_at is None or trainer.global_step != self.pause_at or self.out is None:
            return
        (self.out / f"paused-{self.pause_at}").write_text(str(os.getpid()))
        resume = self.out / f"resume-{self.pause_at}"
        deadline = time.monotonic() + 120  # never hang a test run for ever
        while not trainer.received_sigterm and not resume.exists() and time.monotonic() < deadline:
            time.sleep(0.02)


def fill_disk(path: Path) -> None:
    """Grow ``path`` (unbuffered) until its file system has not one byte left."""
    with open(path, "ab", buffering=0) as fh:
        for size in (1 << 16, 1 << 12, 1):
            chunk = b"\0" * size
            try:
                while fh.write(chunk):
                    pass
            except OSError:
                continue
