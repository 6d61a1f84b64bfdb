"""Per-task metric accumulation shared by mask training and TinyLALM pretraining."""
from __future__ import annotations

import torch


class TaskEvaluator:
    """One torchmetrics metric per task seen, plus the predictions for the results file."""

    def __init__(self) -> None:
        self.metrics: dict[str, object] = {}
        self.predictions: list[dict] = []

    def reset(self) -> None:
        self.metrics, self.predictions = {}, []

    def update(self, batch: dict, preds: list[str], device: torch.device | str = "cpu", suffix: str = "") -> None:
        """``suffix`` keeps apart loaders of the same task (e.g. ``_test_ood``: held-out voices)."""
        by_task: dict[str, tuple[list[str], list[str]]] = {}
        for task, pred, ref, sid, ins in zip(batch["tasks"], preds, batch["texts"], batch["ids"],
                                             batch["instructions"]):
            p, r = by_task.setdefault(task, ([], []))
            p.append(pred)
            r.append(ref)
            self.predictions.append({"id": sid, "task": task, "instruction": ins, "prediction": pred,
                                     "reference": ref})
        for task, (p, r) in by_task.items():
            key = task + suffix
            if key not in self.metrics:
                from .tasks import get_task

                self.metrics[key] = get_task(task).metric().to(device)
            self.metrics[key].update(p, r)

    def compute(self, prefix: str) -> dict[str, float]:
        results = {}
        for task, metric in sorted(self.metrics.items()):
            for key, value in metric.compute().items():
                results[f"{prefix}/{task}/{key}"] = float(value)
        return results


STANDARD_SPLITS = ("train", "val", "valid", "dev", "test")


def loader_suffix(datamodule, stage: str, dataloader_idx: int) -> str:
    """'' for manifests in a standard split directory, else ``_<directory>`` (e.g. ``_test_ood``)."""
    paths = getattr(datamodule, "paths", {}).get(stage) or []
    if dataloader_idx >= len(paths):
        return ""
    from pathlib import Path

    parent = Path(paths[dataloader_idx]).parent.name
    return "" if parent in STANDARD_SPLITS or not parent else f"_{parent}"
