"""Manifests as lazy Lhotse CutSets: the cut convention, and the user JSONL -> cut conversion.

Cut convention (what corpus preparers write with ``CutSet.to_file`` and what this layer reads):

* one :class:`lhotse.MonoCut` per sample; ``cut.id`` is the sample id;
* ``cut.recording`` is the clip; ``cut.start`` / ``cut.duration`` select a segment of it (the
  whole recording when they cover it);
* one :class:`lhotse.SupervisionSegment` whose ``text`` is the target text (``speaker``,
  ``gender``, ``language`` set where known);
* ``cut.custom = {"task": <task name>, "instruction": <str, or absent>, "meta": {...} or absent}``;
* a pair sample (speaker verification) carries its second clip as ``cut.custom["audio_b"]``, a
  :class:`lhotse.Recording` (with ``cut.custom["audio_b_unaligned"] = True``, so that Lhotse's own
  ``cut.load_audio_b()`` reads it whole); the model hears A + 0.1 s of silence + the whole of B
  (see :mod:`.audio`).

This layer adds ``cut.custom["origin"] = [manifest path, line number]`` when it reads a cut, so a
bad sample is reported against the line it came from; it is not part of the files.

Which reader a manifest gets: a directory of Lhotse Shar shards, or a Shar index
(``*.shar.json``), is read with ``CutSet.from_shar`` (:mod:`.shar`; its audio comes in memory
with each cut); a Lhotse cut manifest is one whose name ends in ``.gz`` or holds ``.cuts.``
(``train.cuts.jsonl.gz``), or whose first non-blank line is a JSON object with ``"type":
"MonoCut"``; it is read directly. Any other file is a user JSONL manifest (format at the top
of :mod:`.manifest`), converted on read, line by line: every check of
:func:`~.manifest.parse_line` applies, then the audio header is read (``sf.info``: durations and
rate for the :class:`~lhotse.Recording`, and missing, unreadable, empty, truncated or link-loop
files are rejected here, without decoding). Cut manifests get the same text, task, id and path
checks, and their fields are checked to have the types of the convention above (a line Lhotse
cannot deserialise, or whose task is not a string, whose ``start``/``duration`` are not numbers,
whose ``meta`` is not an object or whose source is not a path, is ``malformed_json``); their files
are checked when the audio is loaded. A bad line is rejected with its reason (passed to
``on_reject``) and the rest streams: nothing is read ahead, the CutSet is lazy.
"""
from __future__ import annotations

import copy
import json
import random
from collections.abc import Callable, Collection, Iterator
from typing import Any

from lhotse import MonoCut, Recording, SupervisionSegment
from lhotse.audio import AudioSource
from lhotse.serialization import deserialize_item

from .audio import PAIR_GAP_SECONDS, AudioConfig, AudioError, read_header
from .manifest import (
    BAD_LABEL,
    BAD_REFERENCES,
    BAD_SEGMENT,
    EMPTY_TARGET,
    MALFORMED_JSON,
    MISSING_FIELD,
    PATH_OUTSIDE_ROOT,
    RESERVED_ID,
    RESERVED_ID_DETAIL,
    TARGET_TOO_LONG,
    TOO_LONG,
    UNKNOWN_TASK,
    Reject,
    SampleRecord,
    finite_number,
    iter_lines,
    parse_line,
    references_problem,
    reserved_id,
    target_problem,
)
from .paths import OutsideRootError, PathResolver
from .shar import is_shar, iter_shar, shard_count

SUPERVISION_FIELDS = ("speaker", "gender", "language")


def is_cut_manifest(path: str) -> bool:
    """Whether ``path`` is a Lhotse cut manifest (see the module docstring for the rule)."""
    if path.endswith(".gz") or ".cuts." in path.rsplit("/", 1)[-1]:
        return True
    first = next(iter_lines(path, 1), None)
    if first is None:
        return False
    try:
        obj = json.loads(first[1])
    except (ValueError, RecursionError):
        return False
    return isinstance(obj, dict) and obj.get("type") == "MonoCut"


def sample_seconds(cut: MonoCut) -> float:
    """Seconds of the model input before padding: the cut, plus the gap and clip B of a pair."""
    other = (cut.custom or {}).get("audio_b")
    return cut.duration + (PAIR_GAP_SECONDS + other.duration if isinstance(other, Recording) else 0.0)


def origin(cut: MonoCut) -> tuple[str, int]:
    """(manifest, line) the cut was read from."""
    manifest, line = cut.custom["origin"]
    return manifest, int(line)


def probe_recording(path: str, rid: str) -> Recording:
    """A file :class:`~lhotse.Recording` from the header only; AudioError names a bad file."""
    info = read_header(path)
    return Recording(id=rid, sources=[AudioSource(type="file", channels=list(range(info.channels)), source=path)],
                     sampling_rate=int(info.samplerate), num_samples=int(info.frames),
                     duration=info.frames / info.samplerate)


# How far a segment may end past its file: corpus segment times are rounded to 10 ms (STM, RTTM).
SEGMENT_END_TOLERANCE = 0.01


def segment_past_end(start: float, duration: float, recording: Recording) -> str | None:
    """Why a segment does not fit in its recording (it would be padded with silence), or None."""
    if start + duration > recording.duration + SEGMENT_END_TOLERANCE:
        return f"segment {start:g}-{start + duration:g} s ends past the end of the file ({recording.duration:.3f} s)"
    return None


def record_to_cut(rec: SampleRecord) -> MonoCut:
    """The cut of a parsed JSONL line (reads the audio headers; raises AudioError for a bad file)."""
    clip = probe_recording(rec.audio[0], rec.id)
    start, duration = (rec.segment[0], rec.segment[1] - rec.segment[0]) if rec.segment else (0.0, clip.duration)
    if (problem := segment_past_end(start, duration, clip)) is not None:
        raise AudioError(BAD_SEGMENT, problem)
    known = {k: str(rec.meta[k]) for k in SUPERVISION_FIELDS if isinstance(rec.meta.get(k), (str, int))}
    custom: dict[str, Any] = {"task": rec.task, "origin": [rec.manifest, rec.line]}
    if rec.instruction is not None:
        custom["instruction"] = rec.instruction
    if rec.meta:
        custom["meta"] = rec.meta
    if len(rec.audio) == 2:
        custom["audio_b"] = probe_recording(rec.audio[1], f"{rec.id}#b")
        custom["audio_b_unaligned"] = True
    text = SupervisionSegment(id=rec.id, recording_id=clip.id, start=0.0, duration=duration, text=rec.text, **known)
    return MonoCut(id=rec.id, start=start, duration=duration, channel=0, recording=clip, supervisions=[text],
                   custom=custom)


def _confined(rec: Recording, resolve: PathResolver) -> Recording:
    """The recording with its file sources resolved and confined to the corpus (OutsideRootError)."""
    sources = [AudioSource(type="file", channels=s.channels, source=resolve(s.source)) if s.type == "file" else s
               for s in rec.sources]
    return Recording(id=rec.id, sources=sources, sampling_rate=rec.sampling_rate, num_samples=rec.num_samples,
                     duration=rec.duration, channel_ids=rec.channel_ids, transforms=rec.transforms)


def _one_line(err: BaseException) -> str:
    """The first line of an error's message (Lhotse appends "[extra info]" lines), for a rejects entry."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


def _recording_problem(rec: object, name: str) -> str | None:
    """Why a deserialised recording cannot be read (the types a hand-edited line can get wrong), or None."""
    if not isinstance(rec, Recording):
        return f"{name}: expected a Recording, got {type(rec).__name__}"
    if not rec.sources:
        return f"{name}: no audio sources"
    for source in rec.sources:
        # in-memory audio (Shar) is bytes; a file, URL or command is named by a string
        if not isinstance(source.source, bytes if source.type == "memory" else str) or not source.source:
            return f"{name}: {source.type} source {str(source.source)[:80]!r}: expected a path, URL or command"
    if finite_number(rec.duration) is None or rec.duration <= 0:
        return f"{name}: duration {rec.duration!r}: expected a positive number of seconds"
    if finite_number(rec.sampling_rate) is None or rec.sampling_rate <= 0 or not float(rec.sampling_rate).is_integer():
        return f"{name}: sampling_rate {rec.sampling_rate!r}: expected a positive whole number of Hz"
    if not isinstance(rec.channel_ids, list) or not rec.channel_ids:
        return f"{name}: channel_ids {rec.channel_ids!r}: expected a list of channels"
    return None


def _structure_problem(cut: object) -> str | None:
    """Why a deserialised cut does not follow the cut convention in its types (see the module
    docstring), or None. Lhotse's ``from_dict`` checks little: a string where a number belongs or a
    list where a string does would otherwise fail later, mid-epoch, in the sampler or a worker."""
    if not isinstance(cut, MonoCut):
        return f"expected a MonoCut, got {type(cut).__name__}"
    if not isinstance(cut.id, str) or not cut.id:
        return f"id {cut.id!r}: expected a non-empty string"
    for key in ("start", "duration"):
        if finite_number(getattr(cut, key)) is None:
            return f"{key} {getattr(cut, key)!r}: expected a number of seconds"
    if isinstance(cut.channel, bool) or not isinstance(cut.channel, int):
        return f"channel {cut.channel!r}: expected a channel number"
    if cut.recording is not None and (problem := _recording_problem(cut.recording, "recording")) is not None:
        return problem
    if cut.custom is not None and not isinstance(cut.custom, dict):
        return f"custom: expected a JSON object, got {type(cut.custom).__name__}"
    custom = cut.custom or {}
    task = custom.get("task")
    if task is not None and not isinstance(task, str):
        return f"custom.task {task!r}: expected a task name (a string)"
    if custom.get("instruction") is not None and not isinstance(custom["instruction"], str):
        return f"custom.instruction: expected a string, got {type(custom['instruction']).__name__}"
    if custom.get("meta") is not None and not isinstance(custom["meta"], dict):
        return f"custom.meta: expected a JSON object, got {type(custom['meta']).__name__}"
    if "audio_b" in custom and (problem := _recording_problem(custom["audio_b"], "custom.audio_b")) is not None:
        return problem
    return None


class ManifestCuts:
    """Lazy iterable of the cuts of several manifests (wrap in ``lhotse.CutSet`` to sample it).

    Iterated in the main process by the sampler, once per epoch: ``set_epoch`` reorders the
    manifests when ``shuffle`` is set (the sampler's buffer then shuffles cuts within the stream).
    ``shard_split`` (rank, ranks): of each Shar manifest, read only this rank's shards, a share of
    an order reshuffled every epoch (see :mod:`.shar`).
    """

    def __init__(self, manifests: list[str], audio: AudioConfig, on_reject: Callable[[Reject], None], *,
                 audio_root: str | None = None, allow_outside_root: bool = False,
                 known_tasks: Collection[str] | None = None, max_target_chars: int | None = None,
                 limit: int | None = None, shuffle: bool = False, seed: int = 0,
                 shard_split: tuple[int, int] | None = None) -> None:
        self.manifests = list(manifests)
        self.audio = audio
        self.on_reject = on_reject
        self.audio_root = audio_root
        self.allow_outside_root = allow_outside_root
        self.known_tasks = frozenset(known_tasks) if known_tasks is not None else None
        self.max_target_chars = max_target_chars
        self.limit = limit
        self.shuffle = shuffle
        self.seed = seed
        self.shard_split = shard_split
        self.epoch = 0
        self.kinds = {m: "shar" if is_shar(m) else "cuts" if is_cut_manifest(m) else "jsonl"
                      for m in self.manifests}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def with_reject_handler(self, on_reject: Callable[[Reject], None]) -> ManifestCuts:
        """The same cuts, each bad line going to ``on_reject`` instead (a second read of the manifests
        whose rejects were counted already)."""
        other = copy.copy(self)
        other.on_reject = on_reject
        return other

    def __iter__(self) -> Iterator[MonoCut]:
        order = list(self.manifests)
        if self.shuffle and len(order) > 1:
            random.Random(f"shards-{self.seed}-{self.epoch}").shuffle(order)
        for manifest in order:
            resolve = PathResolver(manifest, self.audio_root, self.allow_outside_root)
            if self.kinds[manifest] == "shar":
                read, items = self._checked, iter_shar(manifest, self.limit, self._shards_of(manifest))
            else:
                read, items = (self._read_cut if self.kinds[manifest] == "cuts" else self._convert,
                               iter_lines(manifest, self.limit))
            for line, item in items:
                cut = read(item, manifest, line, resolve)
                if isinstance(cut, Reject):
                    self.on_reject(cut)
                else:
                    yield cut

    def _shards_of(self, manifest: str) -> list[int] | None:
        """This rank's shards of a Shar manifest this epoch (None: all, in order)."""
        if self.shard_split is None:
            return None
        rank, ranks = self.shard_split
        order = list(range(shard_count(manifest)))
        # keyed by the manifest's place in the list, not its path: the deal must not depend on where
        # the corpus lives
        random.Random(f"shar-shards-{self.seed}-{self.epoch}-{self.manifests.index(manifest)}").shuffle(order)
        return order[rank::ranks]

    def _too_long(self, cut: MonoCut) -> str | None:
        seconds = sample_seconds(cut)
        if self.audio.on_too_long == "reject" and seconds > self.audio.max_seconds + 1e-6:
            return f"{seconds:.2f} s > {self.audio.max_seconds} s"
        return None

    def _convert(self, raw: bytes, manifest: str, line: int, resolve: PathResolver) -> MonoCut | Reject:
        rec = parse_line(raw, manifest, line, resolve, self.known_tasks, self.max_target_chars)
        if isinstance(rec, Reject):
            return rec
        try:
            cut = record_to_cut(rec)
        except AudioError as err:
            return Reject(manifest, line, err.reason, rec.id, err.detail)
        too_long = self._too_long(cut)
        return Reject(manifest, line, TOO_LONG, rec.id, too_long) if too_long else cut

    def _read_cut(self, raw: bytes, manifest: str, line: int, resolve: PathResolver) -> MonoCut | Reject:
        try:
            obj = json.loads(raw)
            if not isinstance(obj, dict):
                return Reject(manifest, line, MALFORMED_JSON, detail="line is not a JSON object")
            sid = str(obj.get("id")) if obj.get("id") is not None else None
            if obj.get("type") != "MonoCut":
                return Reject(manifest, line, MALFORMED_JSON, sid, detail=f"expected a MonoCut, got {obj.get('type')!r}")
        except (ValueError, RecursionError) as err:
            return Reject(manifest, line, MALFORMED_JSON, detail=str(err) or type(err).__name__)
        try:
            cut = deserialize_item(obj)
        except Exception as err:  # noqa: BLE001 - Lhotse's from_dict raises many types for one bad field
            return Reject(manifest, line, MALFORMED_JSON, sid, detail=_one_line(err))
        return self._checked(cut, manifest, line, resolve)

    def _checked(self, cut: MonoCut, manifest: str, line: int, resolve: PathResolver) -> MonoCut | Reject:
        """A cut of a cut manifest or Shar directory, checked (``line``: its position there)."""
        if (problem := _structure_problem(cut)) is not None:
            return Reject(manifest, line, MALFORMED_JSON, str(cut.id), detail=problem)
        if reserved_id(str(cut.id)):
            return Reject(manifest, line, RESERVED_ID, str(cut.id), detail=RESERVED_ID_DETAIL)
        custom = dict(cut.custom or {})
        task = custom.get("task")
        if not task or cut.recording is None:
            return Reject(manifest, line, MISSING_FIELD, cut.id, detail="no 'task'" if not task else "no recording")
        if cut.channel not in cut.recording.channel_ids:
            return Reject(manifest, line, MISSING_FIELD, cut.id, detail=f"channel {cut.channel!r} is not one of "
                          f"recording {cut.recording.id}'s channels {cut.recording.channel_ids}")
        if self.known_tasks is not None and task not in self.known_tasks:
            return Reject(manifest, line, UNKNOWN_TASK, cut.id, detail=f"task {task!r}")
        text = cut.supervisions[0].text if cut.supervisions else None
        if not isinstance(text, str) or not text.strip():
            return Reject(manifest, line, EMPTY_TARGET, cut.id)
        if self.max_target_chars is not None and len(text) > self.max_target_chars:
            return Reject(manifest, line, TARGET_TOO_LONG, cut.id,
                          detail=f"{len(text)} characters > max_target_chars={self.max_target_chars}")
        if (problem := target_problem(str(task), text)) is not None:
            return Reject(manifest, line, BAD_LABEL, cut.id, detail=problem)
        if not 0 <= cut.start < cut.start + cut.duration:
            return Reject(manifest, line, BAD_SEGMENT, cut.id, detail=f"start={cut.start}, duration={cut.duration}")
        if (problem := segment_past_end(cut.start, cut.duration, cut.recording)) is not None:
            return Reject(manifest, line, BAD_SEGMENT, cut.id, detail=problem)
        meta = custom.get("meta")
        if (problem := references_problem(meta if isinstance(meta, dict) else {})) is not None:
            return Reject(manifest, line, BAD_REFERENCES, cut.id, detail=problem)
        try:
            recording = _confined(cut.recording, resolve)
            other = custom.get("audio_b")
            if isinstance(other, Recording):
                custom["audio_b"] = _confined(other, resolve)
        except OutsideRootError as err:
            return Reject(manifest, line, PATH_OUTSIDE_ROOT, cut.id, detail=str(err))
        custom["origin"] = [manifest, line]
        cut = MonoCut(id=cut.id, start=cut.start, duration=cut.duration, channel=cut.channel, recording=recording,
                      supervisions=cut.supervisions, custom=custom)
        too_long = self._too_long(cut)
        return Reject(manifest, line, TOO_LONG, cut.id, too_long) if too_long else cut
