"""Lhotse samplers and :class:`CutLoader`: batches of cuts -> audio loaded in DataLoader workers.

Each epoch, :class:`CutLoader` runs Lhotse's standard pattern,
``DataLoader(AudioBatches(...), sampler=<lhotse sampler>, batch_size=None, num_workers=N)``:
the sampler (main process) plans batches from cut metadata and splits them over DDP ranks, the
workers decode audio (:mod:`.dataset`). The loader is a plain iterable rather than a DataLoader
so that Lightning does not re-instantiate it or wrap its sampler in a ``DistributedSampler``
(the Lhotse sampler splits by rank itself); Lightning still calls ``set_epoch`` on its public
``sampler`` at every epoch start. Iterated directly, the loader advances the sampler's epoch
itself when an epoch is exhausted.

Position, for exact resume. The sampler's plan of an epoch is deterministic (seed, epoch, the
manifests), so a position is ``(epoch, batches of the plan done)``. The loader queues the position
reached by every batch it hands out; the consumer takes one per batch it really uses
(:meth:`CutLoader.take_consumed`; the DataModule does it in ``on_before_batch_transfer``, which
Lightning calls for the batch about to be trained on: a batch that Lightning's prefetcher fetched
but never used is never taken). A loader given ``resume=(epoch, n)`` skips the first ``n``
planned batches of that epoch in the sampler, in the main process, without loading their audio.
The worker count does not change the plan: a run may resume with another ``num_workers``.

Why not a library's resume: torchdata's ``StatefulDataLoader`` counts the batches it has
yielded, which under Lightning's prefetching (``_PrefetchDataFetcher`` holds one batch ahead) is
one more than training consumed; a Lhotse sampler's own ``state_dict`` is further ahead (the
DataLoader asks it for ``prefetch_factor x num_workers`` batches in advance) and the bucketing
sampler refuses it with a custom constraint such as :class:`PaddedSeconds`.

DDP: ranks must run the same number of steps. For training under several ranks the sampler gets
``drop_last=True``, Lhotse's way of giving every rank the same number of batches (the last,
incomplete round of batches waits for the next epoch, reshuffled; with seconds budgets, the
partial batches left in its length buckets too). A batch whose samples were all bad is dropped on
one rank only, so with ``sync_stop`` the ranks also agree before every batch (one tiny
all-reduce) and all end the epoch when the first one runs dry. Evaluation keeps
``drop_last=False``: when a last round has fewer cuts than ranks, Lhotse repeats some (with
``_dup`` ids) so that every rank gets a batch; :func:`is_padding_duplicate` tells them apart, and
evaluation decodes them (the ranks stay in step) but neither scores nor records them.
"""
from __future__ import annotations

import dataclasses
import math
import re
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from lhotse import CutSet
from lhotse.dataset import DynamicBucketingSampler, SimpleCutSampler
from lhotse.dataset.sampling.base import CutSampler, TimeConstraint
from torch.utils.data import DataLoader

from .audio import AudioConfig
from .cuts import ManifestCuts, sample_seconds
from .dataset import AudioBatches, keep_as_is
from .manifest import PATH_OUTSIDE_ROOT
from .rejects import RejectLog, format_reasons

# Lhotse's samplers mark a cut repeated to fill the last round of a distributed epoch by suffixing
# its id (lhotse.dataset.sampling.base.mark_as_duplicate: "<id>_dup<n>").
_PADDING_DUPLICATE = re.compile(r"_dup\d+$")


def is_padding_duplicate(sample_id: str) -> bool:
    """Whether ``sample_id`` is a repeat Lhotse added so that every rank gets a last batch."""
    return bool(_PADDING_DUPLICATE.search(str(sample_id)))


@dataclass
class PaddedSeconds(TimeConstraint):
    """Lhotse's padded batch cost (cuts x longest) in the seconds the model hears: a pair's joined
    length, at least ``min_seconds`` (padding), at most ``cut_at`` when long audio is cut."""

    min_seconds: float = 0.0
    cut_at: float | None = None

    def measure_length(self, example: Any) -> float:
        seconds = max(sample_seconds(example), self.min_seconds)
        return min(seconds, self.cut_at) if self.cut_at is not None else seconds

    def add(self, example: Any) -> None:
        if self.max_duration is not None:
            seconds = self.measure_length(example)
            self.current += seconds
            self.longest_seen = max(self.longest_seen, seconds)
        self.num_cuts += 1


def default_bucket_edges(cfg: AudioConfig) -> list[float]:
    """Doubling length buckets from min_seconds up to max_seconds (e.g. 2, 4, 8, 16 s)."""
    edges, edge = [], max(cfg.min_seconds, 0.5) * 2
    while edge < cfg.max_seconds:
        edges.append(edge)
        edge *= 2
    return edges


def make_sampler(cuts: CutSet, audio: AudioConfig, *, batch_size: int, max_batch_seconds: float | None,
                 shuffle: bool, shuffle_buffer: int, seed: int, rank: int, world_size: int,
                 drop_last: bool) -> CutSampler:
    """``batch_size`` batches (``SimpleCutSampler``, ``max_cuts``; Lhotse's streaming shuffle), or
    length-bucketed batches within ``max_batch_seconds`` of padded audio (``DynamicBucketingSampler``
    whose buffer holds ``shuffle_buffer`` cuts plus room for one full batch per bucket)."""
    if max_batch_seconds is None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        return SimpleCutSampler(cuts, max_cuts=batch_size, shuffle=shuffle, drop_last=drop_last,
                                world_size=world_size, rank=rank, seed=seed)
    if max_batch_seconds <= 0:
        raise ValueError("max_batch_seconds must be > 0")
    edges = default_bucket_edges(audio)
    per_batch = math.ceil(max_batch_seconds / max(audio.min_seconds, 0.01))
    constraint = PaddedSeconds(max_duration=max_batch_seconds, min_seconds=audio.min_seconds,
                               cut_at=audio.max_seconds if audio.on_too_long == "cut" else None)
    return DynamicBucketingSampler(cuts, constraint=constraint, duration_bins=edges, shuffle=shuffle,
                                   drop_last=drop_last, buffer_size=max(1, shuffle_buffer) + (len(edges) + 1) * per_batch,
                                   world_size=world_size, rank=rank, seed=seed)


def _all_ranks_have_data(mine: bool) -> bool:
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    flag = torch.tensor([1 if mine else 0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


class _After:
    """The sampler's batches after the first ``skip`` (planned from metadata, never loaded)."""

    def __init__(self, sampler: CutSampler, skip: int) -> None:
        self.sampler, self.skip = sampler, skip

    def __iter__(self) -> Iterator[CutSet]:
        batches = iter(self.sampler)  # a Lhotse sampler is its own iterator: iter() again would restart it
        for _ in range(self.skip):
            if next(batches, None) is None:
                return
        while (batch := next(batches, None)) is not None:
            yield batch


class CutLoader:
    """Batches of one stage's manifests (see the module docstring).

    Args: ``sampler`` a Lhotse sampler over ``cuts``; ``dataset`` the worker-side loader;
    ``rejects`` the stage's reject record; ``resume`` (epoch, planned batches done) to skip;
    ``track`` whether positions are queued for :meth:`take_consumed` (the training loader);
    ``check_all_bad`` raise after a full pass when a manifest gave nothing but rejects;
    ``sync_stop`` DDP ranks end the epoch together.
    """

    batch_sampler = None  # the DataLoader attribute Lightning reads next to ``sampler``: batches come from ``sampler``

    def __init__(self, sampler: CutSampler, cuts: ManifestCuts, dataset: AudioBatches, rejects: RejectLog, *,
                 num_workers: int = 0, resume: tuple[int, int] | None = None, track: bool = False,
                 check_all_bad: bool = True, sync_stop: bool = False) -> None:
        self.sampler = sampler
        self.cuts = cuts
        self.dataset = dataset
        self.rejects = rejects
        self.num_workers = num_workers
        self.track = track
        self.check_all_bad = check_all_bad
        self.sync_stop = sync_stop
        self._resume = resume
        self._handed_out: deque[tuple[int, int]] = deque()

    def take_consumed(self) -> tuple[int, int] | None:
        """Position reached by the oldest batch handed out and not yet taken (None: none left)."""
        return self._handed_out.popleft() if self._handed_out else None

    def _skip_for(self, epoch: int) -> int:
        resume, self._resume = self._resume, None
        return resume[1] if resume is not None and resume[0] == epoch else 0

    def __iter__(self) -> Iterator[Any]:
        if self._resume is not None and self.sampler.epoch != self._resume[0]:
            # Lightning starts iterating (its prefetcher fetches a batch) before it sets the
            # sampler's epoch: a resumed run's first pass is the epoch of the saved position.
            self.sampler.set_epoch(self._resume[0])
        epoch = self.sampler.epoch
        skip = self._skip_for(epoch)
        planned = yield from self._epoch(epoch, skip)
        if skip and planned == skip:
            # the position was the end of its epoch (a checkpoint at the epoch's last batch): the
            # loop has moved on to the next epoch, so this pass is that one, from its start
            yield from self._epoch(self.sampler.epoch, 0)

    def _epoch(self, epoch: int, skip: int) -> Iterator[Any]:
        """One pass over ``epoch``'s plan after its first ``skip`` batches; returns how many planned
        batches that pass reached (``skip`` included)."""
        self.cuts.set_epoch(epoch)
        self.rejects.begin_epoch(epoch)
        self._handed_out.clear()
        dataset = dataclasses.replace(self.dataset, epoch=epoch, known=frozenset(self.rejects.rejected))
        # The workers' base seed comes from a generator of its own, not the global torch RNG: starting
        # an epoch then draws nothing from the stream the mask noise comes from, so a run resumed at
        # an epoch's end continues that stream exactly (the collate's draws are per sample anyway).
        loader = DataLoader(dataset, sampler=_After(self.sampler, skip) if skip else self.sampler, batch_size=None,
                            num_workers=self.num_workers, collate_fn=keep_as_is,
                            generator=torch.Generator().manual_seed(epoch))
        good: dict[str, int] = {}
        index, full_pass = skip, skip == 0
        try:
            for loaded in loader:
                self.rejects.from_worker(loaded.rejects)
                for manifest, n in loaded.good.items():
                    good[manifest] = good.get(manifest, 0) + n
                index += 1
                if loaded.batch is None:
                    continue  # every sample of that planned batch was bad
                if self.sync_stop and not _all_ranks_have_data(True):
                    full_pass = False  # another rank ran dry: stop together (see module docstring)
                    break
                if self.track:
                    self._handed_out.append((epoch, index))
                yield loaded.batch
            else:
                if self.sync_stop:
                    _all_ranks_have_data(False)  # the ranks still holding batches wait on this
        finally:
            dataset.close()
            self.rejects.close()
        if self.sampler.epoch == epoch:
            self.sampler.set_epoch(epoch + 1)  # iterated directly: the next pass is the next epoch
        if full_pass and self.check_all_bad:
            self._raise_if_all_bad(good)
        return index

    def _raise_if_all_bad(self, good: dict[str, int]) -> None:
        for manifest in self.cuts.manifests:
            counts = self.rejects.epoch_counts.get(manifest)
            if counts and not good.get(manifest):
                hint = ("; audio paths must stay inside the corpus root unless the data option "
                        "allow_outside_root is true" if PATH_OUTSIDE_ROOT in counts else "")
                raise RuntimeError(f"{manifest}: no valid samples: {sum(counts.values())} rejected "
                                   f"({format_reasons(counts)}){hint}")
