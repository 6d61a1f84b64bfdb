"""Per-task metric accumulation shared by mask training and TinyLALM pretraining, and the one
definition of the metric keys every logger, results file, table and figure uses.

Metric keys
-----------
``<stage>/<task>/<metric>`` for an unnamed evaluation set, ``<stage>_<set>/<task>/<metric>`` for a
named one (``data.init_args.test: {ood: [...]}``)::

    test/gr/acc          the test loaders given as a list (or with no name)
    test_ood/gr/acc      the test loaders of the set named ``ood``
    val/asr/wer          validation
    test_clean/asr/wer   LibriSpeech test-clean, given as ``{clean: ...}``

* ``stage`` is one of :data:`STAGES` (no ``_`` in any of them), so the first ``_`` of the first part
  is where the set name starts, whatever ``_`` or ``-`` the set name itself holds.
* ``set`` follows the data module's rule for set names: lower-case letters, digits, ``_`` and
  ``-``, starting with a letter or digit.
* ``task`` is a registered task (``ahamask_lightning.tasks.TASKS``), never extended by a suffix,
  so ``gr`` and ``gr_asr`` cannot be mistaken for each other.
* ``metric`` is a key of the task metric's ``compute()`` (``acc``, ``acc_exact``, ``wer``...).

Keys are plain strings for Lightning's ``log_dict``: the set sits in the first part, which
TensorBoard uses to group its panels, so each held-out set gets its own group.
"""
from __future__ import annotations

import re

import torch

STAGES = ("train", "val", "test", "predict")
_SET_NAME = r"[a-z0-9][a-z0-9_-]*"
_METRIC = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
_KEY = re.compile(rf"^(?P<stage>[a-z]+)(?:_(?P<set>{_SET_NAME}))?/(?P<task>[a-z0-9_]+)/(?P<metric>{_METRIC})$")


def metric_key(stage: str, task: str, metric: str, eval_set: str | None = None) -> str:
    """The key of ``metric`` of ``task`` on the ``stage`` loaders of set ``eval_set`` (None: unnamed);
    see the module docstring for the format. One-line ``ValueError`` for any part it cannot carry."""
    from .tasks import TASKS

    if stage not in STAGES:
        raise ValueError(f"metric key: stage {stage!r} is not one of {', '.join(STAGES)}")
    if task not in TASKS:
        raise ValueError(f"metric key: task {task!r} is not a registered task ({', '.join(TASKS)})")
    if not re.fullmatch(_METRIC, str(metric)):
        raise ValueError(f"metric key: metric name {metric!r} must be letters, digits, '_', '.' or '-'")
    if eval_set is not None and not re.fullmatch(_SET_NAME, str(eval_set)):
        raise ValueError(f"metric key: set name {eval_set!r} must be lower-case letters, digits, '_' or '-'")
    head = stage if eval_set is None else f"{stage}_{eval_set}"
    return f"{head}/{task}/{metric}"


def parse_metric_key(key: str) -> tuple[str, str, str, str | None]:
    """``test_ood/gr/acc`` -> (``test``, ``gr``, ``acc``, ``ood``); ``test/gr/acc`` -> (..., None).

    The inverse of :func:`metric_key`; one-line ``ValueError`` for a key it did not make (an
    unknown stage or task, a missing part, a key of the older ``test/gr_test_ood/acc`` form)."""
    from .tasks import TASKS

    found = _KEY.match(key) if isinstance(key, str) else None
    if found is None or found["stage"] not in STAGES:
        raise ValueError(f"metric key {key!r} is not <stage>[_<set>]/<task>/<metric> with stage in "
                         f"{', '.join(STAGES)}")
    if found["task"] not in TASKS:
        raise ValueError(f"metric key {key!r}: {found['task']!r} is not a registered task ({', '.join(TASKS)})")
    return found["stage"], found["task"], found["metric"], found["set"]


class TaskEvaluator:
    """One torchmetrics metric per (task, evaluation set) seen, plus the predictions for the results file."""

    def __init__(self) -> None:
        self.metrics: dict[tuple[str, str | None], object] = {}
        self.predictions: list[dict] = []

    def reset(self) -> None:
        self.metrics, self.predictions = {}, []

    def update(self, batch: dict, preds: list[str], device: torch.device | str = "cpu",
               eval_set: str | None = None) -> None:
        """``eval_set`` keeps apart loaders of the same task (the data module's set name of the
        loader, e.g. ``ood`` for held-out voices; None: unnamed). A caption task is scored against
        every reference of a sample (``batch["references"]``, from ``meta.references``) where it
        has them, else against its target text. A cut that Lhotse repeated to give every rank a
        last batch (:func:`~ahamask_lightning.data.is_padding_duplicate`) is neither scored nor
        recorded: each sample counts once, whatever the number of ranks."""
        from .data.loader import is_padding_duplicate
        from .tasks import get_task

        by_task: dict[str, tuple[list[str], list[str | list[str]]]] = {}
        references = batch.get("references") or [None] * len(preds)
        for task, pred, ref, refs, sid, ins in zip(batch["tasks"], preds, batch["texts"], references, batch["ids"],
                                                   batch["instructions"]):
            p, r = by_task.setdefault(task, ([], []))
            if is_padding_duplicate(sid):
                continue
            p.append(pred)
            several = refs is not None and get_task(task).kind == "caption"
            r.append(list(refs) if several else ref)
            record = {"id": sid, "task": task, "instruction": ins, "prediction": pred, "reference": ref}
            if several:
                record["references"] = list(refs)
            self.predictions.append(record if eval_set is None else {**record, "set": eval_set})
        for task, (p, r) in by_task.items():
            key = (task, eval_set)
            if key not in self.metrics:
                self.metrics[key] = get_task(task).metric().to(device)
            if p:
                self.metrics[key].update(p, r)

    def compute(self, stage: str, device: torch.device | str = "cpu") -> dict[str, float]:
        """``{metric_key(stage, task, metric, set): value}`` over every (task, set) updated.

        In a distributed run every rank must compute the same metrics in the same order (each
        compute syncs its states across ranks): the (task, set) pairs are first gathered from all
        ranks, and a rank that saw none of a pair's samples adds that metric empty (on ``device``)."""
        from .tasks import get_task

        for key in sorted(set().union(*gather_objects([list(self.metrics)])), key=lambda k: (k[0], k[1] or "")):
            if key not in self.metrics:
                self.metrics[key] = get_task(key[0]).metric().to(device)
        results = {}
        for (task, eval_set), metric in sorted(self.metrics.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
            for name, value in metric.compute().items():
                results[metric_key(stage, task, name, eval_set)] = float(value)
        return results


def gather_objects(items: list) -> list:
    """``items`` of every rank, concatenated in rank order (one ``all_gather_object`` in a
    distributed run; the list itself otherwise)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return list(items)
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, list(items))
    return [item for part in parts for item in part]


def eval_set_of(datamodule: object, stage: str, dataloader_idx: int) -> str | None:
    """The set name of ``stage`` dataloader ``dataloader_idx``, read from the data module's
    ``eval_sets(stage)`` (``ManifestDataModule``); None for an unnamed loader, and when there is no
    data module or it names no sets (dataloaders handed to the Trainer directly)."""
    eval_sets = getattr(datamodule, "eval_sets", None)
    if eval_sets is None:
        return None
    names = eval_sets(stage)
    return names[dataloader_idx] if dataloader_idx < len(names) else None
