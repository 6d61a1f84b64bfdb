"""The map-style dataset of the Lhotse pattern: a sampler's CutSet batch in, a collated batch out.

``DataLoader(AudioBatches(...), sampler=<lhotse sampler>, batch_size=None, num_workers=N)``: the
sampler (main process) plans batches of cuts from their metadata; each worker receives one
CutSet, decodes its audio with :mod:`.audio` (whose checks Lhotse's loader does not make:
truncated files, NaN/inf, link loops, the project's length rules), drops bad samples and calls the
``collate`` it was given. What it returns is a :class:`LoadedBatch`: the batch (None when every
sample was bad) plus the rejects and good counts that the main process adds up.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from lhotse import CutSet, MonoCut, Recording
from torch.utils.data import Dataset, get_worker_info

from .audio import AudioConfig, AudioError, checked_wave, join_and_fit, load_mono
from .cuts import origin
from .manifest import UNREADABLE_AUDIO, Reject
from .rejects import RejectSink

Sample = dict[str, Any]


def identity_collate(samples: list[Sample]) -> list[Sample]:
    """Default collate: the list of sample dicts itself."""
    return samples


def collate_audio(samples: list[Sample]) -> dict[str, Any]:
    """A simple padding collate (waveforms [B, T] + lengths), handy for tests and benchmarks."""
    lengths = torch.tensor([s["audio"].numel() for s in samples])
    audio = torch.zeros(len(samples), int(lengths.max()))
    for i, s in enumerate(samples):
        audio[i, : s["audio"].numel()] = s["audio"]
    return {"ids": [s["id"] for s in samples], "audio": audio, "lengths": lengths,
            "text": [s["text"] for s in samples], "task": [s["task"] for s in samples]}


def keep_as_is(item: Any) -> Any:
    """DataLoader ``collate_fn`` for ``batch_size=None``: the dataset has collated already."""
    return item


@dataclass
class LoadedBatch:
    """What a worker sends to the main process for one sampler batch."""

    batch: Any  # collated batch, or None when every sample of the planned batch was bad
    rejects: list[tuple[str, int, str]] = field(default_factory=list)  # (manifest, line, reason)
    good: dict[str, int] = field(default_factory=dict)  # manifest -> samples delivered


def _file(rec: Recording) -> str | None:
    source = rec.sources[0] if len(rec.sources) == 1 else None
    return source.source if source is not None and source.type == "file" else None


def cut_audio(cut: MonoCut, cfg: AudioConfig) -> torch.Tensor:
    """The model input of a cut (float32 [T]): its clip or segment, and clip B of a pair."""
    other = (cut.custom or {}).get("audio_b")
    recordings = [cut.recording] + ([other] if isinstance(other, Recording) else [])
    whole = cut.start <= 0 and cut.duration >= cut.recording.duration - 1e-6
    paths = [_file(r) for r in recordings]
    if all(p is not None for p in paths) and (whole or len(paths) == 1):
        # The lengths were checked against max_seconds when the cut was read, from its metadata, so
        # the files' headers are not read a second time here; decoding stops two frames past the
        # limit, which join_and_fit still rejects (a manifest whose durations are wrong).
        sr = cfg.sample_rate
        bound = round(cfg.max_seconds * sr) + (2 if cfg.on_too_long == "reject" else 0)
        segment = None if whole else (cut.start, cut.start + cut.duration)
        parts = [load_mono(paths[0], sr, bound, segment)] + [load_mono(p, sr, bound) for p in paths[1:]]
        return join_and_fit(parts, cfg)
    # Not a plain file (URL, command, in-memory Shar data...): Lhotse decodes, the checks stay ours.
    parts = []
    for rec, (offset, duration) in zip(recordings, [(cut.start, cut.duration), (0.0, None)]):
        try:
            data = rec.load_audio(channels=0, offset=offset, duration=duration)
        except Exception as err:  # noqa: BLE001 - Lhotse's backends raise many types for one bad source
            raise AudioError(UNREADABLE_AUDIO, f"{rec.id}: {err}") from None
        parts.append(checked_wave(np.atleast_2d(data).T, rec.sampling_rate, cfg.sample_rate, rec.id))
    return join_and_fit(parts, cfg)


def cut_sample(cut: MonoCut, cfg: AudioConfig) -> Sample:
    """The sample dict of the batch schema (:mod:`.collate`) for one cut."""
    custom = cut.custom or {}
    return {"id": cut.id, "task": custom["task"], "text": cut.supervisions[0].text,
            "audio": cut_audio(cut, cfg), "instruction": custom.get("instruction"),
            "meta": dict(custom.get("meta") or {})}


@dataclass
class AudioBatches(Dataset):
    """Map-style dataset whose index is a CutSet batch (see the module docstring).

    ``known``: (manifest, line) of bad samples already logged and recorded in this run; the
    rejects file gets one line and the log one warning per bad sample per run, so workers (new
    processes each epoch) are given the main process's list when the epoch starts.
    """

    audio: AudioConfig
    collate: Callable[[list[Sample]], Any] = identity_collate
    stage: str = "train"
    rank: int = 0
    rejects_path: str | None = None
    epoch: int = 0
    known: Collection[tuple[str, int]] = frozenset()
    _sink: RejectSink | None = field(default=None, repr=False)
    _sink_pid: int = -1

    def __getitem__(self, cuts: CutSet) -> LoadedBatch:
        samples, rejects, good = [], [], {}
        for cut in cuts:
            manifest, line = origin(cut)
            try:  # the stage and epoch let the collate make per-sample draws (see data.collate)
                samples.append({**cut_sample(cut, self.audio), "stage": self.stage, "epoch": self.epoch})
            except AudioError as err:
                self.sink(Reject(manifest, line, err.reason, cut.id, err.detail))
                rejects.append((manifest, line, err.reason))
                continue
            good[manifest] = good.get(manifest, 0) + 1
        return LoadedBatch(self.collate(samples) if samples else None, rejects, good)

    def sink(self, reject: Reject) -> None:
        if self._sink is None or self._sink_pid != os.getpid():
            info = get_worker_info()
            self._sink = RejectSink(self.rejects_path, self.stage, f"r{self.rank}w{info.id if info else 0}", self.known)
            self._sink_pid = os.getpid()
        self._sink(reject, self.epoch)

    def close(self) -> None:
        if self._sink is not None:
            self._sink.close()
            self._sink = None
