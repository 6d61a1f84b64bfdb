"""The map-style dataset of the Lhotse pattern: a sampler's CutSet batch in, a collated batch out.

``DataLoader(AudioBatches(...), sampler=<lhotse sampler>, batch_size=None, num_workers=N)``: the
sampler (main process) plans batches of cuts from their metadata; each worker receives one
CutSet, decodes its audio with :mod:`.audio` (whose checks Lhotse's loader does not make:
truncated files, NaN/inf, link loops, the project's length rules), drops bad samples and calls the
``collate`` it was given. What it returns is a :class:`LoadedBatch`: the batch (None when every
sample was bad) plus the rejects and good counts that the main process adds up.
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from lhotse import CutSet, MonoCut, Recording
from torch.utils.data import Dataset, get_worker_info

from .audio import (
    AudioConfig,
    AudioError,
    check_file,
    check_not_truncated,
    checked_wave,
    join_and_fit,
    load_mono,
)
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


def _plain_file(rec: Recording, channel: Any) -> str | None:
    """The file of ``rec`` when reading its first channel raw gives what Lhotse would give for
    ``channel`` (no speed/volume/resampling transforms, and ``channel`` is the recording's first);
    else None."""
    path = _file(rec)
    if path is None or rec.transforms or not rec.channel_ids or channel != rec.channel_ids[0]:
        return None
    return path


def _lhotse_wave(load: Callable[[], np.ndarray], rec: Recording, cfg: AudioConfig, name: str) -> torch.Tensor:
    """Audio Lhotse decodes (``load``), given the project's checks: the file ones first (missing,
    link loop, truncated: Lhotse would report them as anything or not at all), then empty, NaN/inf
    and resampling (:func:`~.audio.checked_wave`)."""
    for source in rec.sources:
        if source.type == "file" and isinstance(source.source, str):
            check_file(source.source)
            check_not_truncated(source.source)
    try:
        data = load()
    except Exception as err:  # noqa: BLE001 - Lhotse's backends raise many types for one bad source
        detail = str(err).strip().splitlines()
        raise AudioError(UNREADABLE_AUDIO, f"{name}: {detail[0] if detail else type(err).__name__}") from None
    # one channel (the cut's, or clip B's first) as [T, 1]
    return checked_wave(np.atleast_2d(data)[:1].T, rec.sampling_rate, cfg.sample_rate, name)


def cut_parts(cut: MonoCut, cfg: AudioConfig) -> list[torch.Tensor]:
    """The decoded and checked clips of a cut at ``cfg.sample_rate``: its clip or segment, and clip
    B of a pair (raises :class:`~.audio.AudioError`). No length rule is applied yet."""
    other = (cut.custom or {}).get("audio_b")
    rec = cut.recording
    path_a = _plain_file(rec, cut.channel)
    path_b = _plain_file(other, other.channel_ids[0] if other.channel_ids else None) \
        if isinstance(other, Recording) else None
    sr = cfg.sample_rate
    bound = None
    if math.isfinite(cfg.max_seconds):
        # The lengths were checked against max_seconds when the cut was read, from its metadata, so
        # the files' headers are not read a second time here; decoding stops two frames past the
        # limit, which join_and_fit still rejects (a manifest whose durations are wrong).
        bound = round(cfg.max_seconds * sr) + (2 if cfg.on_too_long == "reject" else 0)
    if path_a is not None:
        whole = cut.start <= 0 and cut.duration >= rec.duration - 1e-6
        segment = None if whole else (cut.start, cut.start + cut.duration)
        parts = [load_mono(path_a, sr, bound, segment)]
    else:
        # Not a plain file (URL, command, in-memory Shar data...), a perturbed recording (speed,
        # volume, resampling) or another channel than the first: Lhotse decodes what the cut
        # describes (its channel, its transforms), the checks stay ours.
        parts = [_lhotse_wave(cut.load_audio, rec, cfg, cut.id)]
    if isinstance(other, Recording):
        if path_b is not None:
            parts.append(load_mono(path_b, sr, bound))
        else:  # clip B is read whole, its first channel
            channel = other.channel_ids[0] if other.channel_ids else 0
            parts.append(_lhotse_wave(lambda: other.load_audio(channels=channel), other, cfg, other.id))
    return parts


def cut_audio(cut: MonoCut, cfg: AudioConfig) -> torch.Tensor:
    """The model input of a cut (float32 [T]): its clip or segment, and clip B of a pair, joined
    and fitted to the length rules.

    A plain file whose first channel is the cut's, with no transforms, is decoded directly
    (:func:`~.audio.load_mono`: only the segment, bounded by ``max_seconds``); anything else (the
    cut's channel is another one, ``perturb_speed``/``perturb_volume``/``resample`` transforms, a
    Shar or URL source) is decoded by Lhotse (``cut.load_audio()``), so the audio is what the cut
    describes. Both go through the same checks (missing, truncated, empty, NaN/inf, resampling,
    length), and a bad clip raises :class:`~.audio.AudioError` with its reason.
    """
    return join_and_fit(cut_parts(cut, cfg), cfg)


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
