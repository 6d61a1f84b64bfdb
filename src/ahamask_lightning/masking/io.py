"""Mask files: ``.safetensors`` with tensor ``logits`` [layers, heads] and string metadata.

Writes are atomic (temporary file, then rename), so a failed command never leaves a
partial file behind. Reading the released SALMONN-AHAMask checkpoints goes through
``torch.load(weights_only=True)``, which refuses pickles that would build arbitrary objects.
"""
from __future__ import annotations

import os
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file


class MaskFileError(ValueError):
    """A mask file that cannot be used; the message is one line naming the file."""


@dataclass
class MaskFile:
    logits: torch.Tensor
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def mask(self) -> torch.Tensor:
        return (self.logits >= 0).to(torch.float32)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.logits.shape)

    def active(self) -> int:
        return int(self.mask.sum().item())


def git_revision() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path``; remove the temporary file on failure."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise MaskFileError(f"{path}: output directory {parent} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_mask(path: str | os.PathLike, logits: torch.Tensor, **metadata: object) -> None:
    if logits.dim() != 2:
        raise MaskFileError(f"{path}: mask logits must be [layers, heads], got shape {tuple(logits.shape)}")
    meta = {"layers": str(logits.shape[0]), "heads": str(logits.shape[1]), "git_revision": git_revision()}
    meta.update({k: str(v) for k, v in metadata.items() if v is not None})
    tensor = logits.detach().to(torch.float32).cpu().contiguous()
    atomic_write(path, lambda tmp: save_file({"logits": tensor}, tmp, metadata=meta))


def load_mask(path: str | os.PathLike, shape: tuple[int, int] | None = None) -> MaskFile:
    """Read a mask file; with ``shape``, check that it fits the model."""
    path = Path(path)
    if not path.is_file():
        raise MaskFileError(f"{path}: mask file not found")
    try:
        tensors = load_file(str(path))
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise MaskFileError(f"{path}: not a readable safetensors mask file ({exc})") from None
    if "logits" not in tensors:
        raise MaskFileError(f"{path}: expected a tensor named 'logits', found {sorted(tensors)}")
    logits = tensors["logits"].to(torch.float32)
    if logits.dim() != 2:
        raise MaskFileError(f"{path}: 'logits' must be [layers, heads], got shape {tuple(logits.shape)}")
    if shape is not None and tuple(logits.shape) != tuple(shape):
        raise MaskFileError(
            f"{path}: mask shape {tuple(logits.shape)} does not fit the model, expected {tuple(shape)}"
        )
    return MaskFile(logits, metadata)


def import_official(path: str | os.PathLike, layers: int, heads: int) -> MaskFile:
    """Read a released SALMONN-AHAMask checkpoint ``{"model": {"tensor": float32[L*(H+1)]}}``.

    Each layer holds H head logits plus one unused FFN slot, which is dropped.
    """
    path = Path(path)
    if not path.is_file():
        raise MaskFileError(f"{path}: official mask checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, truncated zip archives, refused globals
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MaskFileError(f"{path}: not a readable torch checkpoint ({first})") from None
    try:
        tensor = ckpt["model"]["tensor"]
    except (KeyError, TypeError):
        raise MaskFileError(f"{path}: expected {{'model': {{'tensor': float32[{layers * (heads + 1)}]}}}}") from None
    if not isinstance(tensor, torch.Tensor) or tensor.numel() != layers * (heads + 1):
        n = tensor.numel() if isinstance(tensor, torch.Tensor) else type(tensor).__name__
        raise MaskFileError(
            f"{path}: official mask has {n} values, expected layers*(heads+1) = {layers}*({heads}+1) = "
            f"{layers * (heads + 1)}"
        )
    logits = tensor.detach().to(torch.float32).reshape(layers, heads + 1)[:, :heads].contiguous()
    return MaskFile(logits, {"source": str(path.name), "layers": str(layers), "heads": str(heads),
                             "estimator": "official"})
