"""Mask files: ``.safetensors`` with tensor ``logits`` [layers, heads] and string metadata.

Writes are atomic (temporary file, then rename), so a failed command never leaves a
partial file behind; the file gets the usual mode of new files (0666 less the umask, as
Lightning's checkpoints), not the 0600 of a private temporary file. Logits must be finite:
a NaN or infinite logit is refused when saving and when loading. Reading the released
SALMONN-AHAMask checkpoints goes through ``torch.load(weights_only=True)``, which refuses
pickles that would build arbitrary objects.
"""
from __future__ import annotations

import os
import pickle
import secrets
import subprocess
from collections.abc import Callable
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


def atomic_write(path: str | os.PathLike, write: Callable[[str], object]) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path``; remove the temporary file on failure."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise MaskFileError(f"{path}: output directory {parent} does not exist")
    if path.is_dir():
        raise MaskFileError(f"{path}: is a directory; expected the file to write")
    # os.open with 0o666 rather than tempfile.mkstemp: mkstemp always makes 0600 files, while the
    # kernel applies the umask to this mode, so the mask file ends up like any other new file.
    # The mode is set again after writing: a writer may replace the file (safetensors makes 0600).
    tmp = str(parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        mode = os.stat(tmp).st_mode & 0o777
        write(tmp)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def check_finite(path: str | os.PathLike, logits: torch.Tensor) -> None:
    """Raises MaskFileError naming ``path`` when a logit is NaN or infinite (no mask is defined there)."""
    bad = ~torch.isfinite(logits)
    if bool(bad.any()):
        layer, head = (int(i) for i in bad.nonzero()[0])
        raise MaskFileError(f"{path}: mask logits must be finite, found {int(bad.sum())} NaN/inf value(s) "
                            f"(first at layer {layer}, head {head})")


def save_mask(path: str | os.PathLike, logits: torch.Tensor, **metadata: object) -> None:
    if logits.dim() != 2:
        raise MaskFileError(f"{path}: mask logits must be [layers, heads], got shape {tuple(logits.shape)}")
    check_finite(path, logits.detach())
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
    if logits.dim() != 2 or logits.numel() == 0:
        raise MaskFileError(f"{path}: 'logits' must be [layers, heads] with at least one head, got shape "
                            f"{tuple(logits.shape)}")
    if shape is not None and tuple(logits.shape) != tuple(shape):
        raise MaskFileError(
            f"{path}: mask shape {tuple(logits.shape)} does not fit the model, expected {tuple(shape)}"
        )
    check_finite(path, logits)
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
        raise MaskFileError(f"{path}: not a readable torch checkpoint ({_load_error(exc)})") from None
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
    check_finite(path, logits)
    return MaskFile(logits, {"source": str(path.name), "layers": str(layers), "heads": str(heads),
                             "estimator": "official"})


def _load_error(exc: Exception) -> str:
    """One line on why torch.load failed, without torch's advice to retry with weights_only=False
    (that would run whatever code the file holds)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    why = [line for line in lines if "weights_only" not in line and not line.startswith("Check the documentation")]
    if isinstance(exc, pickle.UnpicklingError):
        return "refused unsafe pickle content: " + (why[0] if why else "not only tensors and plain containers")
    return why[0] if why else type(exc).__name__
