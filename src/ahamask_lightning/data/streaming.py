"""Streaming, resumable, DDP x worker aware iteration over JSONL manifest shards.

Written by hand rather than with Lhotse or WebDataset because neither is installed and the job
(split lines, shuffle buffer, seconds-based batches, a resumable position) is a few hundred lines.

Pipeline, run independently in every stream (one stream = one dataloader worker of one rank):

1. Lines of all shards are numbered globally (shard order is shuffled per epoch for training);
   line ``i`` belongs to stream ``i % (world * workers) == rank * workers + worker``, so every
   sample is read by exactly one stream per epoch. Only owned lines are JSON-parsed.
2. A shuffle buffer (training only) seeded by (seed, epoch, stream) reorders records.
3. A planner groups records into batches: ``batch_size`` records, or, with ``max_batch_seconds``,
   length buckets where a batch's padded cost ``len * longest`` stays within the budget (a single
   clip longer than the budget forms its own batch).
4. Batch ``k`` of the stream is loaded (bad samples dropped), collated by ``collate`` inside the
   worker, and yielded as a :class:`StreamItem` tagged with (stream, k).

Bad samples travel to the main process with the batches. The loader hands the keys it has
already seen back through ``known_rejects`` before each epoch, so the rejects file gets one line
and the log one warning per bad sample per run, not per epoch.

Because steps 1-3 are deterministic and need no decoding, resuming skips the first ``k``
planned batches of each stream without loading their audio: the position of an epoch is just
``{stream: batches consumed}`` (see :mod:`.loader` for how the main process counts them).
"""
from __future__ import annotations

import bisect
import random
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import IterableDataset, get_worker_info

from .audio import PAIR_GAP_SECONDS, AudioConfig, AudioError, load_audio, probe_seconds
from .manifest import (
    DEFAULT_MAX_TARGET_CHARS,
    TOO_LONG,
    PathResolver,
    Reject,
    SampleRecord,
    iter_lines,
    parse_line,
)
from .rejects import RejectSink

Sample = dict[str, Any]


def identity_collate(samples: list[Sample]) -> list[Sample]:
    """Default collate: the list of sample dicts itself."""
    return samples


@dataclass
class StreamItem:
    """What a worker sends to the main process: a batch plus its position and bookkeeping."""

    stream: str  # "r<rank>w<worker>"
    index: int  # batch index within the stream's epoch plan; -1 for the end-of-stream marker
    batch: Any  # collated batch, or None when every sample of the planned batch was bad
    num_samples: int = 0
    rejects: list[tuple[str, int, str]] = field(default_factory=list)  # (manifest, line, reason)
    good: dict[str, int] = field(default_factory=dict)  # manifest -> samples delivered

    def pin_memory(self) -> StreamItem:
        # Lets DataLoader(pin_memory=True) pin the tensors inside the collated batch.
        from torch.utils.data._utils.pin_memory import pin_memory

        if self.batch is not None:
            self.batch = pin_memory(self.batch)
        return self


def stream_key(rank: int, worker: int) -> str:
    return f"r{rank}w{worker}"


def shuffle_buffer(items: Iterator[Any], size: int, rng: random.Random) -> Iterator[Any]:
    """Classic reservoir-style buffer: memory ``size``, every item yielded exactly once."""
    buf: list[Any] = []
    for item in items:
        if len(buf) < size:
            buf.append(item)
            continue
        j = rng.randrange(size)
        yield buf[j]
        buf[j] = item
    rng.shuffle(buf)
    yield from buf


def default_bucket_edges(cfg: AudioConfig) -> list[float]:
    """Doubling length buckets from min_seconds up to max_seconds (e.g. 1, 2, 4, 8, 16 s)."""
    edges, edge = [], max(cfg.min_seconds, 0.5) * 2
    while edge < cfg.max_seconds:
        edges.append(edge)
        edge *= 2
    return edges


class ManifestStream(IterableDataset):
    """Iterable over manifest shards yielding :class:`StreamItem` batches (see module docstring).

    ``rank``/``world_size`` are this process's DDP coordinates; workers are discovered with
    ``get_worker_info``. ``epoch`` and ``skip`` ({stream: batches}) are set by the loader before
    each iteration and travel to the workers with the dataset.
    """

    def __init__(self, manifests: list[str], audio: AudioConfig, *, stage: str = "train",
                 shuffle: bool = False, shuffle_buffer: int = 1000, seed: int = 0,
                 batch_size: int = 8, max_batch_seconds: float | None = None,
                 bucket_edges: list[float] | None = None, audio_root: str | None = None,
                 known_tasks: Collection[str] | None = None, rank: int = 0, world_size: int = 1,
                 rejects_path: str | None = None, limit: int | None = None,
                 collate: Callable[[list[Sample]], Any] = identity_collate,
                 max_target_chars: int | None = DEFAULT_MAX_TARGET_CHARS, allow_outside_root: bool = False) -> None:
        if not manifests:
            raise ValueError("ManifestStream needs at least one manifest")
        if max_batch_seconds is None and batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if max_batch_seconds is not None and max_batch_seconds <= 0:
            raise ValueError("max_batch_seconds must be > 0")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world_size {world_size}")
        self.manifests = list(manifests)
        self.audio = audio
        self.stage = stage
        self.shuffle = shuffle
        self.shuffle_buffer = max(1, shuffle_buffer)
        self.seed = seed
        self.batch_size = batch_size
        self.max_batch_seconds = max_batch_seconds
        self.bucket_edges = sorted(bucket_edges) if bucket_edges is not None else default_bucket_edges(audio)
        self.audio_root = audio_root
        self.known_tasks = frozenset(known_tasks) if known_tasks is not None else None
        self.rank = rank
        self.world_size = world_size
        self.rejects_path = rejects_path
        self.limit = limit
        self.collate = collate
        self.max_target_chars = max_target_chars
        self.allow_outside_root = allow_outside_root
        self.epoch = 0
        self.skip: dict[str, int] = {}
        self.known_rejects: frozenset[tuple[str, int]] = frozenset()  # already logged and recorded this run

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    # --- stages of the pipeline ---------------------------------------------------------------
    def _shard_order(self) -> list[str]:
        order = list(self.manifests)
        if self.shuffle and len(order) > 1:
            random.Random(f"shards-{self.seed}-{self.epoch}").shuffle(order)
        return order

    def _records(self, sid: int, n_streams: int) -> Iterator[SampleRecord | Reject]:
        index = 0
        for manifest in self._shard_order():
            resolve = PathResolver(manifest, self.audio_root, self.allow_outside_root)
            for line, text in iter_lines(manifest, self.limit):
                if index % n_streams == sid:
                    yield parse_line(text, manifest, line, resolve, self.known_tasks, self.max_target_chars)
                index += 1

    def _seconds(self, rec: SampleRecord) -> float:
        """Planning length (after padding/cutting); raises AudioError when the header is bad."""
        raw = rec.segment[1] - rec.segment[0] if rec.segment is not None else rec.duration
        if raw is None:
            raw = sum(probe_seconds(p) for p in rec.audio) + PAIR_GAP_SECONDS * (len(rec.audio) - 1)
        if self.audio.on_too_long == "reject" and raw > self.audio.max_seconds + 1e-6:
            raise AudioError(TOO_LONG, f"{raw:.2f} s > {self.audio.max_seconds} s")
        return self.audio.effective_seconds(raw)

    def _plan(self, items: Iterator[SampleRecord | Reject],
              rejects: list[Reject]) -> Iterator[list[SampleRecord]]:
        """Groups records into batches; rejects met while planning go to ``rejects``."""
        if self.max_batch_seconds is None:
            batch: list[SampleRecord] = []
            for item in items:
                if isinstance(item, Reject):
                    rejects.append(item)
                    continue
                batch.append(item)
                if len(batch) == self.batch_size:
                    yield batch
                    batch = []
            if batch:
                yield batch
            return
        budget = self.max_batch_seconds
        pending: dict[int, tuple[list[SampleRecord], float]] = {}
        for item in items:
            if isinstance(item, Reject):
                rejects.append(item)
                continue
            try:
                seconds = self._seconds(item)
            except AudioError as err:
                rejects.append(Reject(item.manifest, item.line, err.reason, item.id, err.detail))
                continue
            bucket = bisect.bisect_right(self.bucket_edges, seconds)
            recs, longest = pending.get(bucket, ([], 0.0))
            if recs and (len(recs) + 1) * max(longest, seconds) > budget:
                yield recs
                recs, longest = [], 0.0
            pending[bucket] = (recs + [item], max(longest, seconds))
        for bucket in sorted(pending):
            if pending[bucket][0]:
                yield pending[bucket][0]

    def _load(self, rec: SampleRecord) -> Sample:
        # rec.segment was validated by parse_line (finite, 0 <= start < end): nothing here can fail
        # outside the AudioError handling of the caller.
        return {"id": rec.id, "task": rec.task, "text": rec.text,
                "audio": load_audio(rec.audio, self.audio, rec.segment),
                "instruction": rec.instruction, "meta": rec.meta}

    # --- iteration ----------------------------------------------------------------------------
    def __iter__(self) -> Iterator[StreamItem]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        key = stream_key(self.rank, worker)
        sid, n_streams = self.rank * workers + worker, self.world_size * workers
        sink = RejectSink(self.rejects_path, self.stage, key, self.known_rejects)
        items: Iterator[SampleRecord | Reject] = self._records(sid, n_streams)
        if self.shuffle:
            items = shuffle_buffer(items, self.shuffle_buffer, random.Random(f"buf-{self.seed}-{self.epoch}-{sid}"))
        rejects: list[Reject] = []
        skip = self.skip.get(key, 0)
        try:
            for index, planned in enumerate(self._plan(items, rejects)):
                if index < skip:
                    continue  # consumed before the checkpoint: planned, never decoded
                samples, good = [], {}
                for rec in planned:
                    try:
                        samples.append(self._load(rec))
                    except AudioError as err:
                        rejects.append(Reject(rec.manifest, rec.line, err.reason, rec.id, err.detail))
                        continue
                    good[rec.manifest] = good.get(rec.manifest, 0) + 1
                batch = self.collate(samples) if samples else None
                yield StreamItem(key, index, batch, len(samples), self._flush(rejects, sink), good)
            yield StreamItem(key, -1, None, 0, self._flush(rejects, sink))
        finally:
            sink.close()

    def _flush(self, rejects: list[Reject], sink: RejectSink) -> list[tuple[str, int, str]]:
        out = []
        for rej in rejects:
            sink(rej, self.epoch)
            out.append((rej.manifest, rej.line, rej.reason))
        rejects.clear()
        return out


def collate_audio(samples: list[Sample]) -> dict[str, Any]:
    """A simple padding collate (waveforms [B, T] + lengths), handy for tests and benchmarks."""
    lengths = torch.tensor([s["audio"].numel() for s in samples])
    audio = torch.zeros(len(samples), int(lengths.max()))
    for i, s in enumerate(samples):
        audio[i, : s["audio"].numel()] = s["audio"]
    return {"ids": [s["id"] for s in samples], "audio": audio, "lengths": lengths,
            "text": [s["text"] for s in samples], "task": [s["task"] for s in samples]}
