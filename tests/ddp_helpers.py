"""Test-only callbacks for multi-process runs, importable by the ranks (tests/ on PYTHONPATH)."""
from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import torch


class RankMaskDump(L.Callback):
    """Writes ``rank{N}.json`` per rank: the sample ids it trained on, its mask logits before and
    after training, a checksum of its frozen weights, and what DDP was told to leave alone."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.ids: list[str] = []
        self.before: list[list[float]] | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.before = pl_module.head_mask.logits.detach().cpu().tolist()

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: dict,
                             batch_idx: int) -> None:
        self.ids.extend(batch["ids"])

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        frozen = sum(float(p.double().sum()) for p in pl_module.adapter.parameters())
        self.out_dir.mkdir(parents=True, exist_ok=True)
        record = {"rank": trainer.global_rank, "world_size": trainer.world_size, "steps": trainer.global_step,
                  "strategy": type(trainer.strategy).__name__, "ids": self.ids, "before": self.before,
                  "after": pl_module.head_mask.logits.detach().cpu().tolist(), "frozen_checksum": frozen,
                  "ddp_ignored": len(getattr(pl_module, "_ddp_params_and_buffers_to_ignore", []) or []),
                  "backend": torch.distributed.get_backend() if torch.distributed.is_initialized() else None}
        (self.out_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))
