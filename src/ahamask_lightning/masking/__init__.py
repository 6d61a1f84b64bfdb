"""Head masks: estimators, the trainable HeadMask, the o_proj gate and mask files."""
from .estimators import ESTIMATORS, deterministic_mask, soft_sample, straight_through
from .gate import HeadGate, find_o_proj
from .head_mask import HeadMask
from .io import MaskFile, MaskFileError, import_official, load_mask, save_mask

__all__ = [
    "ESTIMATORS", "HeadGate", "HeadMask", "MaskFile", "MaskFileError", "deterministic_mask",
    "find_o_proj", "import_official", "load_mask", "save_mask", "soft_sample", "straight_through",
]
