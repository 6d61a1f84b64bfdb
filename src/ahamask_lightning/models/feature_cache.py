"""Frozen audio-encoder outputs cached on disk, one safetensors file per clip.

AHAMask trains only the head mask: the audio encoder and projector are frozen and run without
autograd, so their output for a clip is the same every epoch. With a cache directory, the
first epoch writes each clip's LLM-ready audio embeddings and later epochs read them instead
of running the encoder.

Where. The collate step (in the DataLoader workers) hashes each waveform and reads the entries it
finds (``lookup``) into the batch as ``cached_audio``, so the disk read overlaps training instead
of stalling it; the training step encodes only the clips without an entry and writes them.

Key. A clip's file is ``DIR/<namespace>/<h[:2]>/<h>.safetensors`` where ``h`` is the sha256 of
the waveform's float32 bytes (computed in the collate step) and ``<namespace>`` is a digest of
what else decides the output: the model id, the encoder settings (sample rate, feature
extractor parameters, projector width, dtype) and a fingerprint of the frozen encoder weights.
Entries are computed with autocast off, so the trainer's precision (``bf16-mixed`` or
``32-true``) does not change them and needs no place in the key.
Changing any of them selects another namespace directory, so stale entries are never read;
``namespace.json`` beside the entries says what the digest covers. Each entry also records its
namespace digest and is rejected when it does not match.

Concurrency. Entries are written to a unique temporary name in the same directory and moved into
place with ``os.replace`` (atomic on POSIX), so concurrent readers (DDP ranks, loader restarts)
see either no file or a complete one; two writers of the same clip write identical content.

Libraries checked: ``safetensors`` gives the file format; ``datasets``' cache fingerprints whole
dataset transforms run before training, not per-clip outputs of a model computed inside the
training step, and neither torch nor Lightning ships an on-disk activation cache.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from ..masking.io import atomic_write


def clip_key(waveform: torch.Tensor | np.ndarray) -> str:
    """sha256 of a waveform's float32 samples: the content part of a cache key."""
    arr = waveform.detach().cpu().float().numpy() if isinstance(waveform, torch.Tensor) else waveform
    return hashlib.sha256(np.ascontiguousarray(arr, dtype=np.float32).tobytes()).hexdigest()


def refuse_unsupported(feature_cache: str | None, adapter: str, unsupported: str | None) -> None:
    """One line when a cache is asked of an adapter whose encoder output depends on the batch
    (``unsupported``: why; None: the cache is fine)."""
    if feature_cache and unsupported:
        raise ValueError(f"feature_cache: not available for {adapter}: {unsupported} (expected feature_cache unset)")


def weights_fingerprint(module: nn.Module) -> str:
    """A digest of a module's parameters and buffers (names, shapes, dtypes, sums and sums of squares).

    Cheap on any device (two reductions per tensor) and different for any re-initialised or
    re-loaded encoder, which is what a cache of its outputs must notice.
    """
    h = hashlib.sha256()
    with torch.no_grad():
        for name, t in [*module.named_parameters(), *module.named_buffers()]:
            d = t.detach().double()
            h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|{float(d.sum()):.12e}|{float((d * d).sum()):.12e}".encode())
    return h.hexdigest()


class FeatureCache:
    """Per-clip audio embeddings of one frozen encoder configuration, in ``directory``.

    ``namespace``: JSON-serialisable description of everything besides the waveform that decides
    the encoder's output (see the module docstring). ``hits``/``misses`` count lookups.
    """

    def __init__(self, directory: str | Path, namespace: dict) -> None:
        text = json.dumps(namespace, sort_keys=True, default=str)
        self.namespace = hashlib.sha256(text.encode()).hexdigest()[:20]
        self.root = Path(directory) / self.namespace
        self.root.mkdir(parents=True, exist_ok=True)
        info = self.root / "namespace.json"
        if not info.is_file():
            readable = json.dumps(namespace, sort_keys=True, indent=1, default=str)
            atomic_write(info, lambda tmp: Path(tmp).write_text(readable))
        self.hits = 0
        self.misses = 0

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.safetensors"

    def load(self, key: str) -> torch.Tensor | None:
        """The cached embeddings of clip ``key`` (on the CPU), or None."""
        p = self.path(key)
        if not p.is_file():
            return None
        with safe_open(str(p), framework="pt") as entry:
            if "features" not in entry.keys():
                raise ValueError(f"{p}: feature cache entry without a 'features' tensor (delete the file)")
            if (entry.metadata() or {}).get("namespace") != self.namespace:
                return None  # not written for this configuration: a miss, recomputed and overwritten
            return entry.get_tensor("features")

    def save(self, key: str, features: torch.Tensor) -> None:
        p = self.path(key)
        p.parent.mkdir(parents=True, exist_ok=True)
        tensors = {"features": features.detach().cpu().contiguous()}
        # written beside the entry and renamed onto it (readers see a whole file or none); removed on failure
        atomic_write(p, lambda tmp: save_file(tensors, tmp, metadata={"namespace": self.namespace, "key": key}))

    def lookup(self, keys: Sequence[str]) -> list[torch.Tensor | None]:
        """Each clip's cached embeddings (CPU), or None: what the collate reads in the loader workers,
        so that the training step does not wait for the disk."""
        return [self.load(k) for k in keys]

    def batch_fields(self, waveforms: Sequence[torch.Tensor | np.ndarray]) -> dict[str, list]:
        """What a collate adds to its batch (in the loader workers): ``clip_keys`` (content hashes)
        and ``cached_audio`` (the entries found, or None)."""
        keys = [clip_key(w) for w in waveforms]
        return {"clip_keys": keys, "cached_audio": self.lookup(keys)}

    def features(self, keys: Sequence[str], compute: Callable[[list[int]], list[torch.Tensor]],
                 device: torch.device | str, dtype: torch.dtype,
                 found: Sequence[torch.Tensor | None] | None = None) -> list[torch.Tensor]:
        """Each clip's embeddings: cached, else ``compute(missing indices)`` (one call for all misses
        of the batch, in index order) and written. ``found``: what :meth:`lookup` read in the collate;
        a clip it did not find is looked up again (an earlier batch may have written it since).
        ``compute`` runs with autocast off, in the model's dtype (which the namespace records), so
        an entry is the same whatever the trainer's precision; the lookup in the loader workers
        could not tell a ``bf16-mixed`` entry from a ``32-true`` one. Returned on ``device``/``dtype``."""
        if found is not None and len(found) != len(keys):
            raise ValueError(f"feature cache: {len(found)} looked-up clips for {len(keys)} keys")
        out: list[torch.Tensor | None] = [f if f is not None else self.load(k)
                                          for k, f in zip(keys, found or [None] * len(keys))]
        missing = [i for i, f in enumerate(out) if f is None]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        if missing:
            with _autocast_off(device):
                computed = compute(missing)
            if len(computed) != len(missing):
                raise RuntimeError(f"feature cache: computed {len(computed)} clips for {len(missing)} misses")
            for i, feats in zip(missing, computed):
                self.save(keys[i], feats)
                out[i] = feats
        return [f.to(device=device, dtype=dtype) for f in out]


def _autocast_off(device: torch.device | str) -> contextlib.AbstractContextManager:
    """Autocast switched off for ``device``'s type where it is on (Lightning's mixed precision)."""
    kind = torch.device(device).type
    try:
        active = torch.is_autocast_enabled(kind)
    except RuntimeError:  # a device type torch has no autocast for
        return contextlib.nullcontext()
    return torch.autocast(kind, enabled=False) if active else contextlib.nullcontext()
