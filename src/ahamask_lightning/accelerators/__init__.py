"""Devices and multi-device strategies for AHAMask runs.

Importing the package registers the Ascend NPU with Lightning (``--trainer.accelerator npu``,
``--trainer.strategy npu_single|ddp_npu``); torch_npu itself is imported only when used.
"""
from .ddp import (
    MaskDDPStrategy,
    MaskFSDPStrategy,
    broadcast_trainable,
    check_wraps_layers,
    frozen_sync_off,
    mask_wrap_policy,
    mask_wrap_rule,
)
from .devices import check_devices, check_fit_precision, parse_devices
from .npu import (
    NPU_MISSING,
    NPUAccelerator,
    NPUDDPStrategy,
    NPUMixedPrecision,
    NPUSingleDeviceStrategy,
    require_npu,
    uses_npu,
)
from .npu_config import check_trainer_config

__all__ = [
    "NPU_MISSING", "MaskDDPStrategy", "MaskFSDPStrategy", "NPUAccelerator", "NPUDDPStrategy", "NPUMixedPrecision",
    "NPUSingleDeviceStrategy", "broadcast_trainable", "check_devices", "check_fit_precision", "check_trainer_config",
    "check_wraps_layers", "frozen_sync_off", "mask_wrap_policy", "mask_wrap_rule", "parse_devices", "require_npu",
    "uses_npu",
]
