"""The NPU settings of a parsed ``trainer:`` config, completed and checked before any model is built.

``accelerator: npu`` with ``strategy: auto`` gets ``npu_single`` (one device) or ``ddp_npu``
(several), so ``--trainer.accelerator npu`` works on its own; a strategy that is not an NPU one
(``ddp``, ``MaskDDPStrategy`` from ``strategies/ddp.yaml``, ``fsdp``) is refused in one line; the
single-NPU strategy takes its device from a one-element ``trainer.devices`` list and refuses more
than one device; without a usable NPU the line names the key that asked for it.
"""
from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from . import npu

NPU_FRAGMENTS = "experiments/accelerators/npu.yaml or experiments/strategies/ddp_npu.yaml"


def check_trainer_config(trainer: Any) -> None:
    """For ``LightningCLI.before_instantiate_classes``, on the parsed (not yet instantiated)
    ``trainer:`` config, before any model loads (the Trainer, which resolves ``accelerator: npu``,
    is built only after the model). Where the config asks for the NPU:

    * without a usable NPU: one line naming the keys that asked for it, and how to do without;
    * ``strategy`` auto (or absent): completed in place to the NPU strategy, ``npu_single`` for
      one device and ``ddp_npu`` for several (Lightning's own choice would put the model on the CPU,
      or run DDP with CUDA autocast and a CUDA stream);
    * a strategy that is not an NPU one with ``accelerator: npu``, or an NPU strategy with another
      accelerator: refused in one line;
    * the single-NPU strategy: its device is taken from a one-element ``devices`` list, and more
      than one device is refused in one line.

    Config values set here (a dict, or jsonargparse's ``Namespace``) are what LightningCLI then
    instantiates. Strategies given as instances (Python use) are checked, not changed."""
    if not trainer:
        return
    accelerator = npu.as_plain(npu.config_value(trainer, "accelerator"))
    strategy = npu.as_plain(npu.config_value(trainer, "strategy"))
    plugins = npu.as_plain(npu.config_value(trainer, "plugins"))
    asked = [f"trainer.{key}: {_shown(value)}" for key, value in
             (("accelerator", accelerator), ("strategy", strategy), ("plugins", plugins)) if npu.mentions_npu(value)]
    if not asked:
        return
    reason = npu.npu_unavailable()
    if reason is not None:
        raise RuntimeError(f"{' and '.join(asked)} {'asks' if len(asked) == 1 else 'ask'} for an Ascend NPU, but "
                           f"{reason}; {_without_npu(accelerator, strategy)}")
    kind = _strategy_kind(strategy)
    if npu.mentions_npu(accelerator):
        if kind == "other":
            raise ValueError(f"trainer.strategy: {_shown(strategy)} does not run on the NPU (trainer.accelerator: "
                             f"npu); use --config experiments/strategies/ddp_npu.yaml (several NPUs) or "
                             f"experiments/accelerators/npu.yaml alone (one NPU) instead")
    elif kind in ("npu_single", "ddp_npu"):
        if accelerator not in (None, "auto"):
            raise ValueError(f"trainer.strategy: {_shown(strategy)} runs on the NPU only, but trainer.accelerator "
                             f"is {_shown(accelerator)}; add --trainer.strategy auto, or drop {NPU_FRAGMENTS}")
        _set(trainer, "accelerator", "npu")  # Lightning's "auto" never picks the NPU
    else:
        return  # an NPU precision plugin alone: left to Lightning
    from .devices import parse_devices  # devices.py imports this module

    devices = parse_devices(npu.config_value(trainer, "devices"))
    if kind == "auto":
        count = _device_count(devices)
        kind = "npu_single" if count == 1 else "ddp_npu"
        strategy = {"class_path": f"{npu.PACKAGE}.{NPU_CLASSES[kind].__name__}"}
        _set(trainer, "strategy", _config_node(trainer, **strategy))
    if kind == "npu_single":
        _single_device(trainer, strategy, devices)


NPU_CLASSES: dict[str, type] = {"npu_single": npu.NPUSingleDeviceStrategy, "ddp_npu": npu.NPUDDPStrategy}


def _strategy_kind(strategy: Any) -> str:
    """``"auto"``, ``"npu_single"``, ``"ddp_npu"`` or ``"other"`` for a config's (plain) strategy value."""
    if strategy is None or strategy == "auto":
        return "auto"
    if isinstance(strategy, str):
        return strategy.lower() if strategy.lower() in npu.STRATEGY_NAMES else "other"
    if isinstance(strategy, Mapping):
        strategy = _import_class(strategy.get("class_path"))
    cls = strategy if isinstance(strategy, type) else type(strategy)
    for kind, npu_cls in NPU_CLASSES.items():
        if issubclass(cls, npu_cls):
            return kind
    return "other"


def _import_class(class_path: Any) -> type | None:
    module, _, name = str(class_path or "").rpartition(".")
    try:
        return getattr(importlib.import_module(module), name, None) if module else None
    except ImportError:
        return None


def _shown(value: Any) -> str:
    """A config value as the one-line messages show it: a class by its name."""
    if isinstance(value, Mapping) and "class_path" in value:
        return str(value["class_path"]).rpartition(".")[2]
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_shown(v) for v in value) + "]"
    if value is None or isinstance(value, (str, int, float)):
        return str(value)
    return type(value).__name__


def _without_npu(accelerator: Any, strategy: Any) -> str:
    """Advice that works whichever key asked for the NPU: an NPU strategy from a YAML fragment
    stays when only ``--trainer.accelerator`` is changed."""
    if npu.mentions_npu(strategy):
        flags = "--trainer.accelerator cuda|cpu --trainer.strategy auto" if npu.mentions_npu(accelerator) else \
            "--trainer.strategy auto"
        return f"drop {NPU_FRAGMENTS} from the --config list, or add {flags}"
    if npu.mentions_npu(accelerator):
        return "use --trainer.accelerator cuda|cpu"
    return "remove the NPU plugin from trainer.plugins"


def _device_count(devices: int | list[int] | str) -> int:
    if devices in ("auto", -1):
        return npu.NPUAccelerator.auto_device_count()
    return devices if isinstance(devices, int) else len(devices)


def _single_device(trainer: Any, strategy: Any, devices: int | list[int] | str) -> None:
    """Lightning never sets the device of a single-device strategy: take it from ``devices``."""
    if devices != "auto" and _device_count(devices) > 1:
        raise ValueError(f"trainer.devices: {devices} selects several NPUs, but trainer.strategy "
                         f"{_shown(strategy)} runs on one; for several use --config "
                         "experiments/strategies/ddp_npu.yaml, for one pick it with --trainer.devices [i]")
    if not isinstance(devices, list):
        return
    node = npu.config_value(trainer, "strategy")
    if isinstance(node, str):  # "npu_single": the registry would build it on npu:0
        node = _config_node(trainer, class_path=f"{npu.PACKAGE}.{npu.NPUSingleDeviceStrategy.__name__}")
        _set(trainer, "strategy", node)
    elif npu.config_value(node, "class_path") is None:
        return  # an instance (Python use): already built
    init_args = npu.config_value(node, "init_args")
    if init_args is None:
        _set(node, "init_args", _config_node(trainer, device=devices[0]))
    else:
        _set(init_args, "device", devices[0])


def _config_node(trainer: Any, **values: Any) -> Any:
    """A config node of the same kind as ``trainer`` (a dict, or jsonargparse's ``Namespace``)."""
    return dict(values) if isinstance(trainer, Mapping) else type(trainer)(**values)


def _set(node: Any, key: str, value: Any) -> None:
    if hasattr(node, "__setitem__"):
        node[key] = value
    else:
        setattr(node, key, value)
