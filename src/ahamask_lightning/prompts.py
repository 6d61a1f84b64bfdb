"""Which instruction (if any) each sample is prompted with.

The instruction-following baseline is a mode of the same module, not another script:

* ``none``      no instruction (AHAMask training and the no-instruction baseline)
* ``task``      the task's paper instruction
* ``variant:K`` the task's K-th instruction (0 = paper, 1.. = rewordings; Figure 2)
* ``manifest``  the sample's own ``instruction`` field, else the task's paper instruction
* ``random``    a random phrasing of the task (multi-phrasing pretraining of TinyLALM)
"""
from __future__ import annotations

import random

PROMPT_MODES = ("none", "task", "manifest", "random")


def check_prompt_mode(mode: str) -> str:
    if mode in PROMPT_MODES:
        return mode
    if mode.startswith("variant:") and mode.split(":", 1)[1].isdigit():
        return mode
    raise ValueError(f"prompt: expected one of {PROMPT_MODES} or 'variant:K', got {mode!r}")


def choose_instruction(sample: dict, mode: str, rng: random.Random | None = None) -> str | None:
    if mode == "none":
        return None
    if mode == "manifest" and sample.get("instruction"):
        return sample["instruction"]
    from .tasks import get_task

    task = get_task(sample["task"])
    if mode in ("task", "manifest"):
        return task.instruction
    if mode == "random":
        return (rng or random).choice(task.instructions)
    k = int(mode.split(":", 1)[1])
    if k >= len(task.instructions):
        raise ValueError(f"prompt variant {k}: task {task.name} has {len(task.instructions)} instructions")
    return task.instructions[k]
