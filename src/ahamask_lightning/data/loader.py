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
evaluation decodes them (the ranks stay in step) but neither scores nor records them. An
evaluation batch whose samples were all bad is replaced the same way, by a padding duplicate of
the first sample of the manifests that decodes, so that its rank still runs its step.

After a full pass the loader checks the epoch (under DDP from counts summed over the ranks, so
every rank decides alike): a manifest that gave nothing but rejects stops the run with its
reasons, and so does a training epoch that planned no batch at all (e.g. fewer usable samples
than ranks x ``batch_size``), which would otherwise repeat empty epochs for ever.
"""
from __future__ import annotations

import dataclasses
import math
from bisect import bisect_left
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from lhotse import CutSet, MonoCut
from lhotse.dataset import DynamicBucketingSampler, SimpleCutSampler
from lhotse.dataset.sampling.base import CutSampler, TimeConstraint, mark_as_duplicate
from torch.utils.data import DataLoader

from .audio import AudioConfig
from .cuts import ManifestCuts, origin, sample_seconds
from .dataset import AudioBatches, LoadedBatch, keep_as_is
from .manifest import PATH_OUTSIDE_ROOT, REASONS, reserved_id
from .rejects import RejectLog, format_reasons

# Version of the way batches are planned from the manifests; a saved position is only kept under
# the same plan (see ``ManifestDataModule.load_state_dict``). 2: seconds budgets are never exceeded.
PLAN_VERSION = 2


def is_padding_duplicate(sample_id: str) -> bool:
    """Whether ``sample_id`` is a repeat Lhotse added so that every rank gets a last batch (its
    samplers suffix the id: ``<id>_dup<n>``; manifests may not use that form, :func:`~.manifest.reserved_id`)."""
    return reserved_id(str(sample_id))


@dataclass
class PaddedSeconds(TimeConstraint):
    """Lhotse's padded batch cost (cuts x longest) in the seconds the model hears: a pair's joined
    length, at least ``min_seconds`` (padding), at most ``cut_at`` when long audio is cut.

    Never over the budget: Lhotse's batcher adds a cut, then asks :meth:`close_to_exceeding`
    whether one more would go over, and never takes a cut back. Lhotse assumes the next cut is no
    longer than the longest so far, but a bucket holds lengths up to twice its lower edge, so a
    short first cut followed by long ones went up to about 2x the budget. Here the next cut is
    counted at the longest length its bucket can hold (every cut of a batch comes from one bucket
    of ``edges``, the sampler's ``duration_bins``; the last one ends at ``top``). A single cut
    longer than the budget still makes a batch of one. The price: a batch whose cuts all lie near
    their bucket's lower edge holds fewer than would fit (down to about half the budget).
    """

    min_seconds: float = 0.0
    cut_at: float | None = None
    edges: list[float] = field(default_factory=list)
    top: float = math.inf

    def measure_length(self, example: Any) -> float:
        seconds = max(sample_seconds(example), self.min_seconds)
        return min(seconds, self.cut_at) if self.cut_at is not None else seconds

    def add(self, example: Any) -> None:
        if self.max_duration is not None:
            seconds = self.measure_length(example)
            self.current += seconds
            self.longest_seen = max(self.longest_seen, seconds)
        self.num_cuts += 1

    def bucket_ceiling(self, seconds: float) -> float:
        """The longest length a cut of ``seconds``'s bucket can have."""
        index = bisect_left(self.edges, seconds)  # Lhotse's select_bucket: edges[i-1] < length <= edges[i]
        return self.edges[index] if index < len(self.edges) else max(self.top, seconds)

    def close_to_exceeding(self) -> bool:
        if self.max_duration is None or self.num_cuts == 0:
            return super().close_to_exceeding()
        return (super().close_to_exceeding()
                or (self.num_cuts + 1) * self.bucket_ceiling(self.longest_seen) > self.max_duration)


# Bucket edges stop here when max_seconds is unbounded (the last bucket then has no known ceiling:
# its batches are one cut each).
_LAST_EDGE_UNBOUNDED = 3600.0


def default_bucket_edges(cfg: AudioConfig) -> list[float]:
    """Doubling length buckets from min_seconds up to max_seconds (e.g. 2, 4, 8, 16 s)."""
    end = cfg.max_seconds if math.isfinite(cfg.max_seconds) else _LAST_EDGE_UNBOUNDED
    edges, edge = [], max(cfg.min_seconds, 0.5) * 2
    while edge < end:
        edges.append(edge)
        edge *= 2
    return edges


def make_sampler(cuts: CutSet, audio: AudioConfig, *, batch_size: int, max_batch_seconds: float | None,
                 shuffle: bool, shuffle_buffer: int, seed: int, rank: int, world_size: int,
                 drop_last: bool) -> CutSampler:
    """``batch_size`` batches (``SimpleCutSampler``, ``max_cuts``; Lhotse's streaming shuffle), or
    length-bucketed batches within ``max_batch_seconds`` of padded audio (``DynamicBucketingSampler``
    whose buffer holds ``shuffle_buffer`` cuts plus room for one full batch per bucket): a batch's
    cuts x its longest cut never exceeds the budget, except a single cut longer than the budget,
    which is a batch of its own (see :class:`PaddedSeconds`)."""
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
                               cut_at=audio.max_seconds if audio.on_too_long == "cut" else None,
                               edges=edges, top=audio.max_seconds)
    return DynamicBucketingSampler(cuts, constraint=constraint, duration_bins=edges, shuffle=shuffle,
                                   drop_last=drop_last, buffer_size=max(1, shuffle_buffer) + (len(edges) + 1) * per_batch,
                                   world_size=world_size, rank=rank, seed=seed)


def collective_device() -> torch.device:
    """Where the default process group's backend takes the tensors it reduces: the CPU when it
    handles CPU tensors (gloo), else the current accelerator of the backend's device type (nccl:
    CUDA; hccl: the NPU, as torch_npu registers it through ``Backend.register_backend``)."""
    backend = str(dist.get_backend()).lower()
    if ":" in backend:  # "cpu:gloo,cuda:nccl": a backend per device type
        devices = [part.split(":", 1)[0] for part in backend.split(",")]
    else:
        devices = dist.Backend.backend_capability.get(backend, ["cpu"])
    if "cpu" in devices:
        return torch.device("cpu")
    accelerator = torch.accelerator.current_accelerator(check_available=True)
    same = accelerator is not None and accelerator.type == devices[0]
    return torch.device(devices[0], torch.accelerator.current_device_index() if same else 0)


def _all_ranks_have_data(mine: bool) -> bool:
    flag = torch.tensor([1 if mine else 0], device=collective_device())
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


class CountedCuts:
    """A stage's :class:`~.cuts.ManifestCuts` counting, per manifest, the cuts it yields in the
    current epoch (read and accepted; the lines rejected on reading go to the reject log). The
    sampler iterates it; the end-of-epoch check compares it with what was loaded, because cuts that
    a ``drop_last`` sampler left out were never tried."""

    def __init__(self, cuts: ManifestCuts) -> None:
        self.cuts = cuts
        self.read: dict[str, int] = {}

    @property
    def manifests(self) -> list[str]:
        return self.cuts.manifests

    def set_epoch(self, epoch: int) -> None:
        self.cuts.set_epoch(epoch)
        self.read = {}

    def __iter__(self) -> Iterator[MonoCut]:
        for cut in self.cuts:
            manifest = origin(cut)[0]
            self.read[manifest] = self.read.get(manifest, 0) + 1
            yield cut


@dataclass
class _Tally:
    """What the workers reported in one pass, per manifest: samples decoded, samples tried, and
    the reasons of the ones that failed."""

    good: dict[str, int] = field(default_factory=dict)
    tried: dict[str, int] = field(default_factory=dict)
    rejects: dict[str, dict[str, int]] = field(default_factory=dict)

    def add(self, loaded: LoadedBatch) -> None:
        for manifest, n in loaded.good.items():
            self.good[manifest] = self.good.get(manifest, 0) + n
            self.tried[manifest] = self.tried.get(manifest, 0) + n
        for manifest, _, reason in loaded.rejects:
            self.tried[manifest] = self.tried.get(manifest, 0) + 1
            per = self.rejects.setdefault(manifest, {})
            per[reason] = per.get(reason, 0) + 1


_OTHER = "other"
_REASON_SLOTS = (*REASONS, _OTHER)


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
    ``need_batches`` raise after a full pass that planned no batch (training), naming
    ``batching`` (e.g. ``"batch_size 8"``); ``sync_stop`` DDP ranks end the epoch together;
    ``distributed`` a process group of several ranks runs this loader on each (evaluation ranks
    stay in step; the checks are decided on counts summed over the ranks, every rank calling this
    loader's collectives at the end of each pass); ``own_share`` each rank reads only its share of
    the manifests (Shar shards dealt out) rather than every line.
    """

    # Lightning (2.6, checked) reads a loader's ``sampler`` and ``batch_sampler`` attributes as a
    # DataLoader's: its per-epoch ``set_epoch`` call (fabric.utilities.data) and the predict loop's
    # batch indices; batches come from ``sampler`` here, so there is no batch sampler to report
    batch_sampler = None

    def __init__(self, sampler: CutSampler, cuts: CountedCuts, dataset: AudioBatches, rejects: RejectLog, *,
                 num_workers: int = 0, resume: tuple[int, int] | None = None, track: bool = False,
                 check_all_bad: bool = True, need_batches: bool = False, batching: str = "",
                 sync_stop: bool = False, distributed: bool = False, own_share: bool = False) -> None:
        self.sampler = sampler
        self.cuts = cuts
        self.dataset = dataset
        self.rejects = rejects
        self.num_workers = num_workers
        self.track = track
        self.check_all_bad = check_all_bad
        self.need_batches = need_batches
        self.batching = batching
        self.sync_stop = sync_stop
        self.distributed = distributed
        self.own_share = own_share
        self._resume = resume
        self._handed_out: deque[tuple[int, int]] = deque()
        self._padding: CutSet | None = None  # the cut that stands in for an all-bad evaluation batch

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
        tally = _Tally()
        index, full_pass = skip, skip == 0
        try:
            for loaded in loader:
                self.rejects.from_worker(loaded.rejects)
                tally.add(loaded)
                index += 1
                batch = loaded.batch
                if batch is None:  # every sample of that planned batch was bad
                    if not self.distributed or self.sync_stop:
                        continue  # alone, or training ranks that agree before every batch (below)
                    # an evaluation rank runs a step all the same: the others' steps may wait on it
                    # (a sharded model gathers its weights in every forward)
                    batch = self._padding_batch(dataset)
                    if batch is None:
                        continue  # no sample of the manifests decodes: every rank skips alike
                if self.sync_stop and not _all_ranks_have_data(True):
                    full_pass = False  # another rank ran dry: stop together (see module docstring)
                    break
                if self.track:
                    self._handed_out.append((epoch, index))
                yield batch
            else:
                if self.sync_stop:
                    _all_ranks_have_data(False)  # the ranks still holding batches wait on this
        finally:
            dataset.close()
            self.rejects.close()
        if self.sampler.epoch == epoch:
            self.sampler.set_epoch(epoch + 1)  # iterated directly: the next pass is the next epoch
        if self.check_all_bad or self.need_batches:
            self._check_epoch(tally, index, full_pass)
        return index

    def _padding_batch(self, dataset: AudioBatches) -> Any:
        """A batch of one padding duplicate (a Lhotse ``_dup`` id: evaluation neither scores nor
        records it) of the first sample of the manifests that decodes; None when none does."""
        if self._padding is not None:
            loaded = dataset[self._padding]
            if loaded.batch is not None:
                return loaded.batch
        # this pass has counted its read-time rejects already
        for cut in self.cuts.cuts.with_reject_handler(lambda reject: None):
            if origin(cut) in self.rejects.rejected:
                continue
            padding = CutSet.from_cuts([cut.with_id(mark_as_duplicate(0)(cut.id))])
            loaded = dataset[padding]
            for manifest, line, reason in loaded.rejects:
                self.rejects.rejected.setdefault((manifest, line), reason)  # not tried again
            if loaded.batch is not None:
                self._padding = padding
                return loaded.batch
        return None

    def _check_epoch(self, tally: _Tally, planned: int, full_pass: bool) -> None:
        """The end-of-pass checks (module docstring). Under DDP every rank calls this at the end of
        every pass (the ranks end their passes together) and one all-reduce sums, in the fixed order
        of the manifests: whether each rank's pass was full, planned batches, and per manifest
        samples decoded, samples tried, cuts read, and rejects per reason."""
        manifests = self.cuts.manifests
        # every rank reads every line (unless each reads its own share): count the reading once
        reads_here = self.own_share or not self.distributed or dist.get_rank() == 0
        values = [0 if full_pass else 1, planned]
        for manifest in manifests:
            decoding = tally.rejects.get(manifest, {})
            slots = dict.fromkeys(_REASON_SLOTS, 0)
            for reason, n in self.rejects.epoch_counts.get(manifest, {}).items():
                n = n if reads_here else decoding.get(reason, 0)  # epoch_counts holds both kinds
                slots[reason if reason in slots else _OTHER] += n
            values += [tally.good.get(manifest, 0), tally.tried.get(manifest, 0),
                       self.cuts.read.get(manifest, 0) if reads_here else 0, *slots.values()]
        if self.distributed:
            summed = torch.tensor(values, dtype=torch.long, device=collective_device())
            dist.all_reduce(summed, op=dist.ReduceOp.SUM)
            values = summed.tolist()
        if values[0]:
            return  # a pass cut short (a resume, or a rank that ran dry first): nothing to conclude
        width = 3 + len(_REASON_SLOTS)
        read_total = 0
        for i, manifest in enumerate(manifests):
            good, tried, read, *by_reason = values[2 + i * width: 2 + (i + 1) * width]
            read_total += read
            counts = {reason: n for reason, n in zip(_REASON_SLOTS, by_reason) if n}
            # tried < read: drop_last left good cuts out untried; they may still decode
            if self.check_all_bad and counts and not good and tried >= read:
                hint = ("; audio paths must stay inside the corpus root unless the data option "
                        "allow_outside_root is true" if PATH_OUTSIDE_ROOT in counts else "")
                raise RuntimeError(f"{manifest}: no valid samples: {sum(counts.values())} rejected "
                                   f"({format_reasons(counts)}){hint}")
        if self.need_batches and values[1] == 0:
            ranks = dist.get_world_size() if self.distributed else 1
            raise RuntimeError(
                f"{', '.join(manifests)}: a training epoch has no batch: {read_total} usable sample(s) for {ranks} "
                f"rank(s) x {self.batching} (each rank needs a full batch; the last, incomplete round is dropped): "
                "use more data, fewer ranks or a smaller batch")
