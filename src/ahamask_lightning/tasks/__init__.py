"""Tasks (instructions, label sets, target formats) and their metrics.

>>> from ahamask_lightning.tasks import get_task
>>> task = get_task("gr")
>>> task.parse(" male.")
'Male'

Every ``task.metric()`` is a ``torchmetrics.Metric`` whose ``compute()`` returns
``dict[str, float]`` with all values as percentages (x 100: WER, CER, accuracy, IFR,
BLEU, METEOR, ROUGE-L, CIDEr; error rates and CIDEr can exceed 100). Counts are summed and texts are gathered as
byte tensors, so results are exact across batches and DDP ranks.
"""
from .registry import TASKS, Task, composite_target, format_label, get_task

__all__ = ["TASKS", "Task", "composite_target", "format_label", "get_task"]
