"""What a fit prints while it runs: a model summary that says only what is measured, and one-line
progress reports where there is no terminal for a progress bar.

* :class:`MaskModelSummary`: Lightning's ``ModelSummary`` (lightning 2.6) prints a FLOPs column
  and ``Total Flops``, which are 0 for a model whose forward pass it never runs: misleading next
  to a real parameter count. This subclass prints the same table without them, and says in one
  line that the frozen model's modules are in eval mode on purpose (``LALMAdapter.train`` keeps
  them there: dropout off while only the mask trains), which is why the CLI silences Lightning's
  "modules in eval mode at the start of training" warning.
* :class:`LineProgress`: in a terminal Lightning's progress bar (Rich or tqdm) shows it/s and the ETA;
  redirected to a file or a pipe (a batch job's log) a bar redraws itself into thousands of
  characters. ``tqdm``'s own non-terminal mode prints the same growing bar on every update, so
  this ``ProgressBar`` prints one plain line every ``every_n_steps`` steps (or ``every_seconds``):
  step/total, it/s, ETA and the training loss; for ``validate``, ``test`` and ``predict``, batch/total,
  it/s, ETA.
"""
from __future__ import annotations

import datetime
import logging
import math
import sys
import time
import warnings
from typing import Any, TextIO

import lightning as L
from lightning.pytorch.callbacks import ModelSummary, ProgressBar
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.model_summary import get_formatted_model_size, get_human_readable_count

EVAL_MODE_WARNING = r"Found \d+ module\(s\) in eval mode at the start of training"
# torch 2.11 deprecates a class that lightning 2.6 still uses internally: nothing a user can act on
LIBRARY_DEPRECATIONS = (r"`isinstance\(treespec, LeafSpec\)` is deprecated",)


class NoProductTips(logging.Filter):
    """Drops Lightning's "💡 Tip: ... try installing litlogger / litmodels" lines (advertising of its
    cloud services, printed at every start); its other messages (devices, checkpoints) pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


def quiet_library_noise() -> None:
    """Silence what the console script's users cannot act on; idempotent (the filter is added once)."""
    for message in (EVAL_MODE_WARNING, *LIBRARY_DEPRECATIONS):
        warnings.filterwarnings("ignore", message=message)
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, NoProductTips) for f in logger.filters):
        logger.addFilter(NoProductTips())


class MaskModelSummary(ModelSummary):
    """``ModelSummary`` without the FLOPs that are never measured (see module docstring)."""

    @staticmethod
    def summarize(summary_data: list[tuple[str, list[str]]], total_parameters: int, trainable_parameters: int,
                  model_size: float, total_training_modes: dict[str, int], total_flops: int,
                  **summarize_kwargs: Any) -> None:
        cols = [(name, [str(v) for v in values]) for name, values in summary_data if name != "FLOPs"]
        widths = [max([len(name), *(len(v) for v in values)]) for name, values in cols]
        rows = [" | ".join(name.ljust(w) for (name, _), w in zip(cols, widths))]
        rule = "-" * len(rows[0])
        rows.append(rule)
        for i in range(len(cols[0][1]) if cols else 0):
            rows.append(" | ".join(values[i].ljust(w) for (_, values), w in zip(cols, widths)))
        rows += [rule, f"{get_human_readable_count(trainable_parameters):<10}Trainable params",
                 f"{get_human_readable_count(total_parameters - trainable_parameters):<10}Frozen params",
                 f"{get_human_readable_count(total_parameters):<10}Total params",
                 f"{get_formatted_model_size(model_size):<10}Total estimated model params size (MB)"]
        frozen_eval = total_training_modes.get("eval", 0)
        if frozen_eval:
            rows.append(f"{frozen_eval:<10}Modules in eval mode on purpose: the frozen model runs without dropout "
                        "while the trainable parameters above learn")
        print("\n".join(rows), flush=True)


def _clock(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(seconds))) if math.isfinite(seconds) else "?"


class LineProgress(ProgressBar):
    """One progress line per ``every_n_steps`` optimizer steps (default: about 20 lines a run) or per
    ``every_seconds``, whichever comes first, on ``stream`` (stdout), from the first process only."""

    def __init__(self, every_n_steps: int | None = None, every_seconds: float = 60.0,
                 stream: TextIO | None = None) -> None:
        super().__init__()
        self.every_n_steps, self.every_seconds, self.stream = every_n_steps, every_seconds, stream
        self._enabled = True
        self._start: tuple[float, int] = (0.0, 0)
        self._last_print = 0.0
        self._last_step = -1
        self._eval = (0.0, 0.0)  # (start, last line) of the running DataLoader of test / predict / validate
        self._eval_begin = 0.0  # start of the whole test / predict / validate run, over all its DataLoaders
        self._eval_done = 0  # batches done in that run, over all its DataLoaders

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    def _total(self, trainer: L.Trainer) -> int | None:
        if trainer.max_steps and trainer.max_steps > 0:
            return int(trainer.max_steps)
        est = trainer.estimated_stepping_batches
        return int(est) if est is not None and math.isfinite(est) else None

    def _say(self, text: str) -> None:
        print(text, file=self.stream or sys.stdout, flush=True)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        now = time.monotonic()
        self._start, self._last_print, self._last_step = (now, trainer.global_step), now, trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if not self._enabled or not trainer.is_global_zero or step == self._last_step:
            return
        total = self._total(trainer)
        every = self.every_n_steps or max(1, (total or 1000) // 20)
        now = time.monotonic()
        if step % every and step != total and now - self._last_print < self.every_seconds:
            return
        self._last_print, self._last_step = now, step
        elapsed = now - self._start[0]
        rate = (step - self._start[1]) / elapsed if elapsed > 0 else float("nan")
        parts = [f"step {step}/{total}" if total else f"step {step}", f"{rate:.2f} it/s"]
        if total:
            parts.append(f"ETA {_clock((total - step) / rate) if rate > 0 else '?'}")
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is not None and hasattr(loss, "item"):
            parts.append(f"loss {float(loss.item()):.4f}")
        self._say("fit: " + ", ".join(parts))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._enabled and trainer.is_global_zero:
            elapsed = time.monotonic() - self._start[0]
            self._say(f"fit: {trainer.global_step - self._start[1]} steps in {_clock(elapsed)}")

    # test, predict and validate: batches of the current DataLoader, the same kind of line
    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._eval_begin, self._eval_done = time.monotonic(), 0

    on_predict_start = on_test_start
    on_validation_start = on_test_start

    def on_test_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int,
                            dataloader_idx: int = 0) -> None:
        if batch_idx == 0:
            self._eval = (time.monotonic(), time.monotonic())

    on_predict_batch_start = on_test_batch_start
    on_validation_batch_start = on_test_batch_start

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if trainer.state.fn == TrainerFn.VALIDATING:  # ``ahamask validate``; a fit's validation stays quiet
            self._eval_batch(trainer, "validate", batch_idx, trainer.num_val_batches, dataloader_idx)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.VALIDATING:
            self._eval_end(trainer, "validate")

    def _eval_batch(self, trainer: L.Trainer, stage: str, batch_idx: int, totals: list[float],
                    dataloader_idx: int) -> None:
        if not self._enabled or not trainer.is_global_zero:
            return
        self._eval_done += 1
        done, total = batch_idx + 1, totals[dataloader_idx]
        total = int(total) if isinstance(total, (int, float)) and math.isfinite(total) else None
        if len(totals) > 1:
            stage = f"{stage} (DataLoader {dataloader_idx + 1}/{len(totals)})"
        every = self.every_n_steps or max(1, (total or 1000) // 20)
        now = time.monotonic()
        if done % every and done != total and now - self._eval[1] < self.every_seconds:
            return
        self._eval = (self._eval[0], now)
        rate = done / (now - self._eval[0]) if now > self._eval[0] else float("nan")
        parts = [f"batch {done}/{total}" if total else f"batch {done}", f"{rate:.2f} it/s"]
        if total:
            parts.append(f"ETA {_clock((total - done) / rate) if rate > 0 else '?'}")
        self._say(f"{stage}: " + ", ".join(parts))

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_batch(trainer, "test", batch_idx, trainer.num_test_batches, dataloader_idx)

    def on_predict_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                             batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_batch(trainer, "predict", batch_idx, trainer.num_predict_batches, dataloader_idx)

    def _eval_end(self, trainer: L.Trainer, stage: str) -> None:
        if self._enabled and trainer.is_global_zero and self._eval_done:
            batches = "1 batch" if self._eval_done == 1 else f"{self._eval_done} batches"
            self._say(f"{stage}: {batches} in {_clock(time.monotonic() - self._eval_begin)}")

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._eval_end(trainer, "test")

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._eval_end(trainer, "predict")
