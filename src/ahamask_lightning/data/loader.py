"""A DataLoader over :class:`ManifestStream` that knows its position and can resume from it.

Why this shape (read from lightning 2.6's source): ``FitLoop.on_save_checkpoint`` stores
``CombinedLoader._state_dicts()``, i.e. ``state_dict()`` of every train loader that has
``state_dict``/``load_state_dict`` (``_Stateful``), and ``FitLoop.setup_data`` gives it back
through ``load_state_dict`` before calling ``iter()`` when a run restarts. A plain DataLoader over
an IterableDataset has no such methods, and the dataset's own counters live in worker processes.
So the loader (in the main process) unwraps each :class:`StreamItem`, counts the batches
delivered per stream, and reports ``{"epoch", "complete", "batches": {stream: n}}``.

Delivered is not consumed: Lightning's ``_PrefetchDataFetcher`` holds one batch ahead for
iterables without a length. ``pending_fn`` (set by the DataModule to read the trainer's fetcher)
says how many delivered batches are still waiting; the state rolls back over them, so a resumed
run re-reads exactly the batches that never reached ``training_step``.

Under DDP, Lightning writes rank 0's checkpoint only; ``state_dict`` therefore all-gathers the
per-stream counts of every rank (it is called on all ranks while dumping a checkpoint).
Ranks may plan different numbers of batches (lines split unevenly, seconds-based batches), and
DDP hangs when one rank stops stepping; with ``sync_stop`` (set for training under an initialised
process group) the ranks agree before every batch (one tiny all-reduce) and all end the epoch
when the first one runs dry, dropping at most a few tail batches of the others for that epoch.
"""
from __future__ import annotations

import logging
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from .manifest import PATH_OUTSIDE_ROOT
from .rejects import count_reasons, format_reasons
from .streaming import ManifestStream, StreamItem

log = logging.getLogger("ahamask_lightning.data")


def _unwrap(item: StreamItem) -> StreamItem:
    # batch_size=None makes DataLoader call default_convert on each item; keep items untouched.
    return item


def _all_ranks_have_data(mine: bool) -> bool:
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    flag = torch.tensor([1 if mine else 0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


class StreamLoader(DataLoader):
    """``DataLoader(dataset, batch_size=None)`` plus a resumable position (see module docstring).

    Extra behaviour is set through attributes, not ``__init__`` arguments, so Lightning can
    re-instantiate the class from the plain DataLoader arguments if it ever needs to.
    """

    def __init__(self, dataset: ManifestStream, num_workers: int = 0, pin_memory: bool = False,
                 **kwargs: Any) -> None:
        kwargs.pop("batch_size", None)
        kwargs.pop("collate_fn", None)
        kwargs["persistent_workers"] = False  # workers must see the new epoch/skip each epoch
        super().__init__(dataset, batch_size=None, num_workers=num_workers, collate_fn=_unwrap,
                         pin_memory=pin_memory, **kwargs)
        self.epoch_fn: Callable[[], int] | None = None  # e.g. the trainer's current epoch
        self.pending_fn: Callable[[], int] | None = None  # batches delivered but not yet consumed
        self.check_all_bad = True  # raise when a manifest yielded nothing but rejects
        self.sync_stop = False  # DDP: every rank ends the epoch when the first one runs out
        self.rejected: dict[tuple[str, int], str] = {}  # (manifest, line) -> reason, all epochs
        self._epoch = 0  # own epoch counter when no epoch_fn: advances when an epoch is exhausted
        self._batches: dict[str, int] = {}
        self._history: deque[dict[str, int]] = deque(maxlen=16)
        self._complete = False
        self._resume: dict[str, Any] | None = None

    # --- iteration ----------------------------------------------------------------------------
    def current_epoch(self) -> int:
        return self.epoch_fn() if self.epoch_fn is not None else self._epoch

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        ds: ManifestStream = self.dataset  # type: ignore[assignment]
        epoch = self.current_epoch()
        ds.set_epoch(epoch)
        ds.skip = self._take_resume(epoch)
        ds.known_rejects = frozenset(self.rejected)  # logged and recorded already: once per run
        self._batches = dict(ds.skip)
        self._history.clear()
        self._history.append(dict(self._batches))
        self._complete = False
        return self._generate(epoch, full_pass=not ds.skip, inner=super().__iter__())

    def _generate(self, epoch: int, full_pass: bool, inner: Iterator[StreamItem]) -> Iterator[Any]:
        good: dict[str, int] = {}
        rejected: dict[str, dict[str, int]] = {}
        for item in inner:
            for manifest, line, reason in item.rejects:
                if self.rejected.setdefault((manifest, line), reason) == reason:
                    per = rejected.setdefault(manifest, {})
                    per[reason] = per.get(reason, 0) + 1
            for manifest, n in item.good.items():
                good[manifest] = good.get(manifest, 0) + n
            if item.index < 0:
                continue  # end-of-stream marker: only carried trailing rejects
            self._batches[item.stream] = item.index + 1
            if item.batch is None:
                continue  # every sample of that planned batch was bad
            if self.sync_stop and not _all_ranks_have_data(True):
                full_pass = False  # another rank ran dry: stop together (see module docstring)
                break
            self._history.append(dict(self._batches))
            yield item.batch
        else:
            if self.sync_stop:
                _all_ranks_have_data(False)  # the ranks still holding batches wait on this
        self._complete = True
        if self.epoch_fn is None:
            self._epoch = epoch + 1
        if full_pass and self.check_all_bad:
            ds: ManifestStream = self.dataset  # type: ignore[assignment]
            for manifest in ds.manifests:
                if not good.get(manifest) and rejected.get(manifest):
                    counts = rejected[manifest]
                    hint = ("; audio paths must stay inside the corpus root unless the data option "
                            "allow_outside_root is true" if PATH_OUTSIDE_ROOT in counts else "")
                    raise RuntimeError(f"{manifest}: no valid samples: {sum(counts.values())} rejected "
                                       f"({format_reasons(counts)}){hint}")

    def reject_counts(self) -> dict[str, int]:
        return count_reasons(self.rejected.values())

    # --- state ----------------------------------------------------------------------------------
    def _local_state(self) -> dict[str, Any]:
        pending = self.pending_fn() if (self.pending_fn is not None and not self._complete) else 0
        pending = max(0, min(pending, len(self._history) - 1))
        snapshot = self._history[-1 - pending] if self._history else {}
        return {"epoch": self.current_epoch(), "complete": self._complete, "batches": dict(snapshot)}

    def state_dict(self) -> dict[str, Any]:
        """``{"epoch", "complete", "num_workers", "world_size", "batches": {stream: n}}``."""
        ds: ManifestStream = self.dataset  # type: ignore[assignment]
        state = self._local_state()
        if ds.world_size > 1 and dist.is_available() and dist.is_initialized():
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, state["batches"])
            state["batches"] = {k: v for part in gathered for k, v in (part or {}).items()}
        state.update(num_workers=self.num_workers, world_size=ds.world_size)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Makes the next ``iter()`` of the same epoch skip what the saved run consumed."""
        self._resume = dict(state)
        if self.epoch_fn is None:
            self._epoch = int(state["epoch"]) + (1 if state.get("complete") else 0)

    def _take_resume(self, epoch: int) -> dict[str, int]:
        state, self._resume = self._resume, None
        if not state or state.get("complete") or int(state["epoch"]) != epoch:
            return {}
        ds: ManifestStream = self.dataset  # type: ignore[assignment]
        if state.get("num_workers") != self.num_workers or state.get("world_size") != ds.world_size:
            warnings.warn(
                f"cannot resume the data position: saved with {state.get('world_size')} rank(s) x "
                f"{state.get('num_workers')} worker(s), now {ds.world_size} x {self.num_workers}; "
                f"epoch {epoch} restarts from its first sample", stacklevel=2)
            return {}
        mine = f"r{ds.rank}w"
        return {k: int(v) for k, v in state.get("batches", {}).items() if k.startswith(mine)}
