"""``trainer.accelerator`` and ``trainer.devices`` checked against this machine before any model is built.

Lightning resolves both inside ``Trainer.__init__``, which ``LightningCLI`` calls only after the
model (and its weights) has been built, and reports a bad value as a ``MisconfigurationException``
traceback. :func:`check_devices` runs on the parsed config in ``before_instantiate_classes`` and
raises one ``ValueError`` line naming the key. Availability comes from Lightning's own accelerator
classes (``CUDAAccelerator``, ``MPSAccelerator``) and this package's ``NPUAccelerator``; Lightning's
devices parser (``lightning.fabric.utilities.device_parser``) is internal, so the syntax rules it
applies (a count >= 1, -1 for all, a list or ``"0,2"`` of indices, ``"auto"``) are restated here.
"""
from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

import torch
from lightning.pytorch.accelerators import CUDAAccelerator, MPSAccelerator

from .npu import NPUAccelerator, config_value, require_npu

EXPECTED = "expected auto, a count >= 1, -1 (every device), or device indices such as [0, 1] or \"0,1\""


def parse_devices(devices: Any) -> int | list[int] | str:
    """``"auto"``, a count (``-1`` = every device) or a list of indices; ValueError naming ``trainer.devices``."""
    if devices is None or devices == "auto":
        return "auto"
    if isinstance(devices, bool):  # a config value: reported like every other bad value (ValueError)
        raise ValueError(f"trainer.devices: {devices!r} is not a device selection; {EXPECTED}")  # noqa: TRY004
    if isinstance(devices, str):
        text = devices.strip()
        try:
            if "," in text:
                return [int(d) for d in text.split(",") if d.strip()]
            devices = int(text)
        except ValueError:
            raise ValueError(f"trainer.devices: {devices!r} is not a device selection; {EXPECTED}") from None
    if isinstance(devices, int):
        if devices == 0 or devices < -1:
            raise ValueError(f"trainer.devices: {devices} selects no device; {EXPECTED}")
        return devices
    if isinstance(devices, (list, tuple)):
        if not devices or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in devices):
            raise ValueError(f"trainer.devices: {list(devices)} is not a list of device indices; {EXPECTED}")
        return list(devices)
    raise ValueError(f"trainer.devices: {devices!r} is not a device selection; {EXPECTED}")


def _visible(name: str) -> int:
    """How many devices of accelerator ``name`` this process can use (0 when none)."""
    if name == "cuda":
        return CUDAAccelerator.auto_device_count() if CUDAAccelerator.is_available() else 0
    if name == "mps":
        return 1 if MPSAccelerator.is_available() else 0
    if name == "npu":
        return NPUAccelerator.auto_device_count()
    return 0


def _resolve(name: str) -> str:
    """``gpu`` and ``auto`` as Lightning resolves them: CUDA, then MPS (then the CPU for ``auto``)."""
    if name in ("gpu", "auto"):
        if CUDAAccelerator.is_available():
            return "cuda"
        if MPSAccelerator.is_available():
            return "mps"
        if name == "gpu":
            build = "" if torch.version.cuda else ": this torch build has no CUDA"
            raise ValueError(f"trainer.accelerator: gpu asked for, but no CUDA or MPS GPU is available{build}; "
                             "use --trainer.accelerator cpu")
        return "cpu"
    return name


def check_devices(trainer: Mapping[str, Any] | None) -> None:
    """Raise one line naming ``trainer.accelerator`` or ``trainer.devices`` when the parsed trainer
    config asks for a device this machine does not have, or for a device selection Lightning refuses.
    An accelerator given as a class or instance is left to Lightning."""
    if not trainer:
        return
    get = partial(config_value, trainer)
    accelerator = get("accelerator", "auto")
    accelerator = "auto" if accelerator is None else accelerator
    devices = parse_devices(get("devices", "auto"))
    if not isinstance(accelerator, str):
        return
    name = _resolve(accelerator.lower())
    if name == "npu":
        require_npu()  # the NPU's own one-line messages
    elif name in ("cuda", "mps") and _visible(name) == 0:
        why = {"cuda": "torch.cuda.is_available() is False" + ("" if torch.version.cuda else
                                                              " (this torch build has no CUDA)"),
               "mps": "torch.backends.mps.is_available() is False"}[name]
        raise ValueError(f"trainer.accelerator: {accelerator} asked for, but this machine has none ({why}); "
                         "use --trainer.accelerator cpu")
    if name == "cpu":
        if devices == -1 or isinstance(devices, list):
            raise ValueError(f"trainer.devices: {devices} is not valid on the CPU, which takes a process count "
                             "(e.g. 1 or 2)")
        return
    if name not in ("cuda", "mps", "npu") or devices in ("auto", -1):
        return
    visible = _visible(name)
    wanted = devices if isinstance(devices, int) else len(devices)
    if wanted > visible:
        raise ValueError(f"trainer.devices: {devices} asks for {wanted} {name} devices, {visible} visible")
    if isinstance(devices, list) and max(devices) >= visible:
        raise ValueError(f"trainer.devices: index {max(devices)} does not exist: {visible} {name} devices visible "
                         f"(0 to {visible - 1})")


# Lightning's "true" half precisions cast every parameter, the trainable mask logits included.
HALF_TRUE = ("bf16-true", "16-true")


def check_fit_precision(trainer: Mapping[str, Any] | None) -> None:
    """Refuse, in one line naming ``trainer.precision``, a fit whose mask logits would train in half
    precision: near their initial value 4.0 bfloat16 steps are 0.03 apart, so the initial noise and
    updates of lr 1e-2 round away. The frozen model's own dtype is its adapter's ``dtype`` key."""
    precision = str(config_value(trainer, "precision") or "") if trainer else ""
    if precision in HALF_TRUE:
        mixed = precision.replace("-true", "-mixed")
        raise ValueError(f"trainer.precision: {precision} would train the mask logits in half precision, which "
                         f"rounds their updates away; use {mixed} (the frozen model keeps the dtype its adapter "
                         "loads it in)")
