"""Test-only callbacks for multi-process runs, importable by the ranks (tests/ on PYTHONPATH)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import lightning as L
import torch


class RankMaskDump(L.Callback):
    """Writes ``rank{N}.json`` per rank: the sample ids it trained on, its mask logits before and
    after training and a checksum of its frozen weights. With ``perturb_rank1``, rank 1 changes one
    frozen weight and its mask logits in ``setup``, before the strategy wraps the model: what the
    strategy broadcasts from rank 0 is then visible."""

    def __init__(self, out_dir: str, perturb_rank1: bool = False, nan_on_rank1_at_step: int | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.perturb_rank1 = perturb_rank1
        self.nan_on_rank1_at_step = nan_on_rank1_at_step  # that step's loss is NaN on rank 1 only
        self.ids: list[str] = []
        self.rng_states: list[str] = []  # the torch generator's state before each step's mask draw
        self.before: list[list[float]] | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.perturb_rank1 and trainer.global_rank == 1:
            with torch.no_grad():
                next(pl_module.adapter.parameters()).add_(1.0)
                pl_module.head_mask.logits.add_(0.5)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.before = pl_module.head_mask.logits.detach().cpu().tolist()

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: dict,
                             batch_idx: int) -> None:
        self.ids.extend(batch["ids"])
        self.rng_states.append(hashlib.sha256(torch.random.get_rng_state().numpy().tobytes()).hexdigest())
        if trainer.global_rank == 1 and trainer.global_step == self.nan_on_rank1_at_step:
            # after TemperatureAnnealing's own batch-start write (the YAML's callbacks run first)
            pl_module.set_temperature(float("nan"))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        frozen = sum(float(p.double().sum()) for p in pl_module.adapter.parameters())
        self.out_dir.mkdir(parents=True, exist_ok=True)
        record = {"rank": trainer.global_rank, "world_size": trainer.world_size, "steps": trainer.global_step,
                  "strategy": type(trainer.strategy).__name__, "ids": self.ids, "rng_states": self.rng_states, "before": self.before,
                  "after": pl_module.head_mask.logits.detach().cpu().tolist(), "frozen_checksum": frozen,
                  "nonfinite_total": pl_module.nonfinite_total,
                  "backend": torch.distributed.get_backend() if torch.distributed.is_initialized() else None}
        (self.out_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))
