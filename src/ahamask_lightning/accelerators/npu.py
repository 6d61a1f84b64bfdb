"""Ascend NPU (the paper's hardware: one 65 GB Ascend 910B) as a Lightning accelerator.

Importing this module registers ``"npu"`` in Lightning's ``AcceleratorRegistry`` and the strategy
names ``"npu_single"`` and ``"ddp_npu"`` in its ``StrategyRegistry``. ``torch_npu`` (Huawei's
PyTorch plug-in, which renames torch's ``privateuse1`` backend to ``npu`` and adds ``torch.npu``)
is imported only when an NPU is actually asked for, so the package imports on any machine.

Lightning's defaults assume CUDA in three places, each handled here:

* ``strategy="auto"`` on one device builds ``SingleDeviceStrategy("cpu")`` for an unknown
  accelerator: ``NPUSingleDeviceStrategy`` puts the model on ``npu:0`` explicitly.
* ``precision="16-mixed"|"bf16-mixed"`` builds ``MixedPrecision(device="cuda")``: the NPU
  strategies swap it for ``NPUMixedPrecision`` (``torch.autocast(device_type="npu")``).
* DDP picks ``gloo``/``nccl`` from the device type and wraps the model under a CUDA stream when it
  has device ids: ``NPUDDPStrategy`` passes ``process_group_backend="hccl"`` and returns no device
  ids (DDP's documented form for a module on one device), so Lightning's own set-up runs unchanged.
  Lightning then calls ``init_process_group("hccl", device_id=npu:<rank>)``, which torch checks
  against its accelerator API, where torch_npu registers the NPU. Only public Lightning hooks are
  overridden; ``tests/test_npu.py`` runs that set-up with a stand-in ``torch_npu`` and ``hccl``.

The CLI completes and checks the NPU settings before any model is built
(:func:`~.npu_config.check_trainer_config`): ``accelerator: npu`` with ``strategy: auto`` gets ``npu_single``
(one device) or ``ddp_npu`` (several), so ``--trainer.accelerator npu`` works on its own; a
strategy that is not an NPU one (``ddp``, ``MaskDDPStrategy`` from ``strategies/ddp.yaml``,
``fsdp``) is refused in one line; the single-NPU strategy takes its device from a one-element
``trainer.devices`` list and refuses more than one device.

Without ``torch_npu`` every entry point fails with one line: the CLI's names the key that asked
for the NPU, the Python API's is ``NPU_MISSING``.
"""
from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

import torch
from lightning.pytorch.accelerators import Accelerator, AcceleratorRegistry
from lightning.pytorch.plugins.precision import MixedPrecision, Precision
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy, Strategy, StrategyRegistry

from .ddp import broadcast_trainable, frozen_sync_off

MISSING_REASON = "torch_npu is not installed (pip install torch-npu, with the Ascend CANN toolkit)"
NOT_VISIBLE_REASON = ("torch_npu is installed but no Ascend NPU is visible (check npu-smi info and "
                      "ASCEND_RT_VISIBLE_DEVICES)")
# The Python API's advice; the CLI's names the key that asked for the NPU (check_trainer_config).
OTHER_DEVICE = "use accelerator cuda|cpu with a strategy that is not an NPU one (e.g. auto)"
NPU_MISSING = f"npu accelerator: {MISSING_REASON}; {OTHER_DEVICE}"
NPU_NOT_VISIBLE = f"npu accelerator: {NOT_VISIBLE_REASON}; {OTHER_DEVICE}"
STRATEGY_NAMES = ("npu_single", "ddp_npu")
PACKAGE = __name__.rsplit(".", 1)[0]


def torch_npu_module() -> Any | None:
    """The imported ``torch_npu`` plug-in, or None where it cannot be imported."""
    try:
        return importlib.import_module("torch_npu")
    except ImportError:
        return None
    except Exception as exc:  # noqa: BLE001 - a broken CANN install raises OSError & co. at import
        raise RuntimeError(f"npu accelerator: {_import_failed(exc)}") from None


def npu_unavailable() -> str | None:
    """Why no NPU can be used here (without the ``npu accelerator:`` prefix), or None when one can."""
    try:
        importlib.import_module("torch_npu")
    except ImportError:
        return MISSING_REASON
    except Exception as exc:  # noqa: BLE001 - see torch_npu_module
        return _import_failed(exc)
    npu = getattr(torch, "npu", None)  # importing torch_npu registers torch.npu
    if npu is None or not npu.is_available():
        return NOT_VISIBLE_REASON
    return None


def require_npu() -> Any:
    """Import ``torch_npu`` and check that a device is visible, else raise the one-line error."""
    reason = npu_unavailable()
    if reason is not None:
        raise RuntimeError(f"npu accelerator: {reason}; {OTHER_DEVICE}")
    return torch.npu


def npu_device(index: int | str | torch.device = 0) -> torch.device:
    """``torch.device("npu", i)``; valid only once torch_npu has renamed the privateuse1 backend."""
    require_npu()
    if isinstance(index, torch.device):
        device = index
    elif isinstance(index, int):
        device = torch.device("npu", index)
    else:
        device = torch.device(index if ":" in str(index) or not str(index).isdigit() else f"npu:{index}")
    if device.type != "npu":
        raise ValueError(f"npu accelerator: expected an npu device, got {device}")
    return device


class NPUAccelerator(Accelerator):
    """Lightning accelerator for Ascend NPUs (``--trainer.accelerator npu``)."""

    def __init__(self) -> None:
        # The registry instantiates this for accelerator="npu": fail here with the one line,
        # before Lightning's generic "not available" message.
        require_npu()
        super().__init__()

    def setup_device(self, device: torch.device) -> None:
        if device.type != "npu":
            raise ValueError(f"npu accelerator: device should be npu, got {device}")
        require_npu().set_device(device)

    def teardown(self) -> None:
        npu = getattr(torch, "npu", None)
        if npu is not None and hasattr(npu, "empty_cache"):
            npu.empty_cache()

    @staticmethod
    def parse_devices(devices: int | str | list[int]) -> list[int]:
        """``2`` -> [0, 1]; ``"0,2"`` or ``[0, 2]`` -> [0, 2]; ``-1``/``"-1"`` -> every visible NPU."""
        if isinstance(devices, str):
            text = devices.strip()
            if "," in text:
                return [int(d) for d in text.split(",") if d.strip()]
            devices = int(text)
        if isinstance(devices, int):
            count = NPUAccelerator.auto_device_count() if devices == -1 else devices
            if count < 1:
                raise ValueError(f"npu accelerator: devices={devices!r} selects no NPU")
            return list(range(count))
        return [int(d) for d in devices]

    @staticmethod
    def get_parallel_devices(devices: list[int]) -> list[torch.device]:
        return [npu_device(i) for i in devices]

    @staticmethod
    def auto_device_count() -> int:
        return require_npu().device_count()

    @staticmethod
    def is_available() -> bool:
        # Must never raise: Lightning calls it on every registered accelerator to list alternatives.
        try:
            npu = getattr(torch, "npu", None) if torch_npu_module() is not None else None
            return bool(npu is not None and npu.is_available())
        except Exception:  # noqa: BLE001
            return False

    @staticmethod
    def name() -> str:
        return "npu"

    def get_device_stats(self, device: torch.device | str | int) -> dict[str, Any]:
        npu = getattr(torch, "npu", None)
        return dict(npu.memory_stats(device)) if npu is not None and hasattr(npu, "memory_stats") else {}

    @classmethod
    def register_accelerators(cls, accelerator_registry: Any) -> None:
        accelerator_registry.register("npu", cls, description="Ascend NPU through torch_npu (ahamask_lightning)",
                                      override=True)


class NPUMixedPrecision(MixedPrecision):
    """AMP on the NPU: ``torch.autocast(device_type="npu")``, with an NPU grad scaler for fp16."""

    def __init__(self, precision: str = "bf16-mixed", scaler: torch.amp.GradScaler | None = None) -> None:
        require_npu()
        if scaler is None and precision == "16-mixed":
            scaler = torch.amp.GradScaler(device="npu")
        super().__init__(precision, device="npu", scaler=scaler)  # type: ignore[arg-type]


def to_npu_precision(plugin: Precision | None) -> Precision | None:
    """Lightning builds ``MixedPrecision(device="cuda")`` for ``precision="16-mixed"`` whatever the
    accelerator; re-create it for the NPU. Every other plugin is device-independent.

    A grad scaler that is enabled (an explicit ``MixedPrecision(..., scaler=GradScaler("npu"))``) is
    kept. The one Lightning builds itself is ``GradScaler(device="cuda")``, which torch disables
    where CUDA is missing (an Ascend host): it is replaced by an NPU one."""
    if isinstance(plugin, MixedPrecision) and plugin.device != "npu":
        scaler = plugin.scaler if plugin.scaler is not None and plugin.scaler.is_enabled() else None
        return NPUMixedPrecision(plugin.precision, scaler=scaler)
    return plugin


class _NPUPrecisionMixin:
    """Strategies set ``precision_plugin`` from the Trainer's flags: intercept it there, storing it
    through ``Strategy``'s own public property."""

    @property
    def precision_plugin(self) -> Precision:
        return Strategy.precision_plugin.fget(self)

    @precision_plugin.setter
    def precision_plugin(self, plugin: Precision | None) -> None:
        Strategy.precision_plugin.fset(self, to_npu_precision(plugin))


class NPUSingleDeviceStrategy(_NPUPrecisionMixin, SingleDeviceStrategy):
    """One NPU (``npu:<device>``). Fails with the one-line error when torch_npu is missing: built
    from a YAML ``class_path`` it is instantiated before the model, so no weights load first."""

    def __init__(self, device: int | str = 0, accelerator: Accelerator | None = None,
                 precision_plugin: Precision | None = None, **kwargs: Any) -> None:
        super().__init__(device=npu_device(device), accelerator=accelerator, precision_plugin=precision_plugin,
                         **kwargs)

    @classmethod
    def register_strategies(cls, strategy_registry: Any) -> None:
        strategy_registry.register("npu_single", cls, description="one Ascend NPU (npu:0)", override=True)


class NPUDDPStrategy(_NPUPrecisionMixin, DDPStrategy):
    """DDP over Ascend NPUs with HCCL; frozen LALM weights are not broadcast (only the mask trains)."""

    def __init__(self, process_group_backend: str = "hccl", **kwargs: Any) -> None:
        require_npu()
        super().__init__(process_group_backend=process_group_backend, **frozen_sync_off(kwargs))

    def setup(self, trainer: Any) -> None:
        super().setup(trainer)
        broadcast_trainable(self.lightning_module)

    def determine_ddp_device_ids(self) -> list[int] | None:
        # With device ids Lightning wraps DDP under torch.cuda.stream(...), which has no NPU form;
        # without them DDP uses the device the module is on (one NPU per rank), as on the CPU.
        return None

    @classmethod
    def register_strategies(cls, strategy_registry: Any) -> None:
        strategy_registry.register("ddp_npu", cls, description="DDP over Ascend NPUs (hccl)", override=True)


def config_value(node: Any, key: str, default: Any = None) -> Any:
    """``node[key]`` of a parsed config node (a dict, or jsonargparse's ``Namespace``)."""
    return node.get(key, default) if hasattr(node, "get") else getattr(node, key, default)


def mentions_npu(value: Any) -> bool:
    """Whether a (plain) trainer config value names the NPU: ``npu``, an NPU strategy name, or one of
    this package's NPU classes (by class path or as an instance)."""
    if isinstance(value, str):
        package, _, name = value.rpartition(".")
        return value.lower() in ("npu", *STRATEGY_NAMES) or (package.startswith(PACKAGE) and name.startswith("NPU"))
    if isinstance(value, Mapping):
        return mentions_npu(value.get("class_path"))
    if isinstance(value, (list, tuple)):
        return any(mentions_npu(v) for v in value)
    cls = type(value)
    return cls.__module__ == __name__ and cls.__name__.startswith("NPU")


def uses_npu(trainer: Mapping[str, Any] | None) -> bool:
    """Whether a (parsed, not yet instantiated) ``trainer:`` config asks for the NPU anywhere."""
    if not trainer:
        return False
    return any(mentions_npu(as_plain(config_value(trainer, key))) for key in ("accelerator", "strategy", "plugins"))


def register() -> None:
    """Add the NPU accelerator and strategies to Lightning's registries (idempotent)."""
    NPUAccelerator.register_accelerators(AcceleratorRegistry)
    NPUSingleDeviceStrategy.register_strategies(StrategyRegistry)
    NPUDDPStrategy.register_strategies(StrategyRegistry)


def as_plain(value: Any) -> Any:
    # jsonargparse hands over Namespace objects: compare them as dicts.
    if hasattr(value, "as_dict"):
        return value.as_dict()
    if isinstance(value, (list, tuple)):
        return [as_plain(v) for v in value]
    return value


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _import_failed(exc: BaseException) -> str:
    return f"importing torch_npu failed: {_first_line(exc)}"


register()
