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

    def update(self, batch: dict, preds: list[str], device: torch.device | str = "cpu") -> None:
        by_task: dict[str, tuple[list[str], list[str]]] = {}
        for task, pred, ref, sid, ins in zip(batch["tasks"], preds, batch["texts"], batch["ids"],
                                             batch["instructions"]):
            p, r = by_task.setdefault(task, ([], []))
            p.append(pred)
            r.append(ref)
            self.predictions.append({"id": sid, "task": task, "instruction": ins, "prediction": pred,
                                     "reference": ref})
        for task, (p, r) in by_task.items():
            if task not in self.metrics:
                from .tasks import get_task

                self.metrics[task] = get_task(task).metric().to(device)
            self.metrics[task].update(p, r)

    def compute(self, prefix: str) -> dict[str, float]:
        results = {}
        for task, metric in sorted(self.metrics.items()):
            for key, value in metric.compute().items():
                results[f"{prefix}/{task}/{key}"] = float(value)
        return results
