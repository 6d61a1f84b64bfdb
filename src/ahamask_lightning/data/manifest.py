"""JSONL manifests: one sample per line, parsed and validated into :class:`SampleRecord`.

Line format::

    {"id": "x1", "audio": "audio/x1.wav" | ["a.wav", "b.wav"], "task": "gr", "text": "Male",
     "instruction": null, "duration": 3.2, "meta": {}}

``duration`` is optional and not used: each line becomes a Lhotse cut whose lengths come from the
audio header (see :mod:`.cuts`).

Audio paths are resolved and confined to the corpus by :mod:`.paths` (reason
``path_outside_root`` for one that leaves it).

Lines are decoded as strict UTF-8, one at a time: a line that is not UTF-8 (or whose JSON escapes
make a lone surrogate) is rejected as ``bad_encoding`` instead of being trained on with U+FFFD
characters, and the rest of the file still streams. A target longer than ``max_target_chars``
is rejected as ``target_too_long`` (see :data:`DEFAULT_MAX_TARGET_CHARS`). ``meta.start`` /
``meta.end`` (a segment of a long file, in seconds) must be finite numbers with
``0 <= start < end``, else ``bad_segment``. ``meta.references`` (every reference text of a
sample, e.g. the five AudioCaps captions of a test clip; caption metrics score against all of
them) must be a non-empty list of non-empty strings, else ``bad_references``. An id ending in
``_dup<N>`` is ``reserved_id``: evaluation leaves such ids out of the scores, as the padding
duplicates Lhotse adds under DDP (see :data:`RESERVED_ID_DETAIL`).

Bad lines are not exceptions the caller has to catch: :func:`parse_line` returns a
:class:`Reject` naming the reason, so a stream can count it and carry on.
"""
from __future__ import annotations

import gzip
import json
import math
import os
import re
import zlib
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from typing import Any

from .paths import OutsideRootError, PathResolver

# Reason strings (stable: tests and the rejects files use them).
MALFORMED_JSON = "malformed_json"
MISSING_FIELD = "missing_field"
UNKNOWN_TASK = "unknown_task"
EMPTY_TARGET = "empty_target"
MISSING_FILE = "missing_file"
UNREADABLE_AUDIO = "unreadable_audio"
EMPTY_AUDIO = "empty_audio"
NAN_OR_INF = "nan_or_inf"
TOO_LONG = "too_long"
BAD_ENCODING = "bad_encoding"
TARGET_TOO_LONG = "target_too_long"
PATH_OUTSIDE_ROOT = "path_outside_root"
BAD_SEGMENT = "bad_segment"
TRUNCATED_AUDIO = "truncated_audio"
SYMLINK_LOOP = "symlink_loop"
BAD_REFERENCES = "bad_references"
RESERVED_ID = "reserved_id"
BAD_LABEL = "bad_label"
REASONS = (MALFORMED_JSON, MISSING_FIELD, UNKNOWN_TASK, EMPTY_TARGET, MISSING_FILE,
           UNREADABLE_AUDIO, EMPTY_AUDIO, NAN_OR_INF, TOO_LONG, BAD_ENCODING, TARGET_TOO_LONG,
           PATH_OUTSIDE_ROOT, BAD_SEGMENT, TRUNCATED_AUDIO, SYMLINK_LOOP, BAD_REFERENCES, RESERVED_ID, BAD_LABEL)

# Lhotse's samplers mark a cut they repeat to fill the last round of a distributed evaluation with
# "<id>_dup<n>" (lhotse.dataset.sampling.base.mark_as_duplicate), and evaluation leaves ids of that
# form out of the scores (:func:`~.loader.is_padding_duplicate` asks this module). A real sample
# named so would be left out silently, so such ids are refused when a manifest is read.
_RESERVED_ID = re.compile(r"_dup\d+$")
RESERVED_ID_DETAIL = ("ids ending in '_dup<N>' are reserved for the padding duplicates that distributed "
                      "evaluation adds (they are not scored); rename the sample")


def reserved_id(sample_id: str) -> bool:
    """Whether ``sample_id`` has the form of a padding duplicate's id (see :data:`RESERVED_ID_DETAIL`)."""
    return bool(_RESERVED_ID.search(sample_id))

# Longest target kept by default. The smallest model of the project has 512 positions; at about
# four characters per BPE token, 2,000 characters already fill that whole context, so a longer
# target can never be learned whole. The longest targets of the supported corpora (LibriSpeech
# transcripts, composite JSON targets) stay well under 1,000 characters. The exact limit is in
# tokens and needs the model's tokenizer, which the data workers do not have.
DEFAULT_MAX_TARGET_CHARS = 2000


@dataclass
class SampleRecord:
    """One parsed manifest line; audio paths are already resolved to absolute paths."""

    id: str
    audio: list[str]  # one path, or two for a pair (A, B)
    task: str
    text: str
    manifest: str
    line: int  # 1-based line number in ``manifest``
    instruction: str | None = None
    duration: float | None = None  # seconds of the (joined) input, if the manifest knows it
    meta: dict[str, Any] = field(default_factory=dict)
    segment: tuple[float, float] | None = None  # (start, end) seconds of one long file (meta.start/end)


@dataclass
class Reject:
    """A bad sample: where it came from and why it was dropped."""

    manifest: str
    line: int
    reason: str
    id: str | None = None
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"manifest": self.manifest, "line": self.line, "id": self.id, "reason": self.reason}


def target_problem(task: str, target: str) -> str | None:
    """Why ``target`` is no reference of the registered ``task`` (a label task's target that is not a
    label, a composite's that does not follow its format; reason ``bad_label``), or None. Checked when
    the line is read, so a bad target is one counted reject rather than a stop in the middle of a test."""
    try:
        from ahamask_lightning.tasks import TASKS
    except ImportError:  # the data layer used without the project's task registry
        return None
    return TASKS[task].reference_problem(target) if task in TASKS else None


def default_known_tasks() -> frozenset[str] | None:
    """Task names of the project registry, or None (accept any task) when it cannot be imported."""
    try:
        from ahamask_lightning.tasks import TASKS
    except ImportError:  # the data layer used without the project's task registry: any task name passes
        return None
    return frozenset(TASKS)


def _utf8(value: object) -> bool:
    """Whether every string in ``value`` can be written as UTF-8 (JSON escapes can make lone surrogates)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return True
    if isinstance(value, dict):
        return all(_utf8(k) and _utf8(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_utf8(v) for v in value)
    return True


def _id_of_bad_line(raw: bytes) -> str | None:
    # Only to name the line in the rejects file; the sample itself is never used.
    try:
        obj = json.loads(raw.decode("utf-8", errors="replace"))
    except (ValueError, RecursionError):
        return None
    sid = obj.get("id") if isinstance(obj, dict) else None
    return str(sid).encode("utf-8", errors="replace").decode("utf-8") if sid is not None else None


def finite_number(value: object) -> float | None:
    """``value`` as a float when it is a finite JSON number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def references_problem(meta: dict[str, Any]) -> str | None:
    """Why ``meta.references`` is unusable (a message), or None when it is absent or a non-empty list
    of non-empty strings."""
    refs = meta.get("references")
    if refs is None or (isinstance(refs, list) and refs and all(isinstance(r, str) and r.strip() for r in refs)):
        return None
    return f"meta.references={str(refs)[:80]!r}: expected a non-empty list of non-empty strings"


def parse_segment(meta: dict[str, Any]) -> tuple[float, float] | None | str:
    """(start, end) from ``meta.start``/``meta.end``; None when neither is given; a message when bad."""
    if "start" not in meta and "end" not in meta:
        return None
    start, end = finite_number(meta.get("start")), finite_number(meta.get("end"))
    if start is None or end is None or not 0 <= start < end:
        return (f"meta.start={meta.get('start')!r}, meta.end={meta.get('end')!r}: expected numbers of "
                f"seconds with 0 <= start < end")
    return start, end


def parse_line(text: str | bytes, manifest: str, line: int, resolve: PathResolver,
               known_tasks: Collection[str] | None, max_target_chars: int | None = None) -> SampleRecord | Reject:
    """Parses and validates one manifest line (no audio access except path resolution).

    ``text`` may be the raw bytes of the line; they are decoded as strict UTF-8.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as err:
            return Reject(manifest, line, BAD_ENCODING, _id_of_bad_line(text), detail=f"not UTF-8: {err.reason} "
                          f"at byte {err.start}")
        if line == 1:
            text = text.removeprefix("\ufeff")  # a UTF-8 byte order mark is not part of the JSON
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as err:  # also too-long integers and deep nesting
        return Reject(manifest, line, MALFORMED_JSON, detail=str(err) or type(err).__name__)
    if not isinstance(obj, dict):
        return Reject(manifest, line, MALFORMED_JSON, detail="line is not a JSON object")
    sid = obj.get("id")
    sid = str(sid) if sid is not None else None
    if not _utf8(obj):
        safe = sid.encode("utf-8", errors="replace").decode("utf-8") if sid is not None else None
        return Reject(manifest, line, BAD_ENCODING, safe, detail="a string holds a lone surrogate (\\ud800-\\udfff)")
    for key in ("id", "audio", "task"):
        if obj.get(key) in (None, "", []):
            return Reject(manifest, line, MISSING_FIELD, sid, detail=f"no {key!r}")
    if reserved_id(sid):
        return Reject(manifest, line, RESERVED_ID, sid, detail=RESERVED_ID_DETAIL)
    task = str(obj["task"])
    if known_tasks is not None and task not in known_tasks:
        return Reject(manifest, line, UNKNOWN_TASK, sid, detail=f"task {task!r}")
    target = obj.get("text")
    if not isinstance(target, str) or not target.strip():
        return Reject(manifest, line, EMPTY_TARGET, sid)
    if max_target_chars is not None and len(target) > max_target_chars:
        return Reject(manifest, line, TARGET_TOO_LONG, sid,
                      detail=f"{len(target)} characters > max_target_chars={max_target_chars}")
    if (problem := target_problem(task, target)) is not None:
        return Reject(manifest, line, BAD_LABEL, sid, detail=problem)
    audio = obj["audio"]
    paths = [audio] if isinstance(audio, str) else audio
    if not isinstance(paths, list) or not 1 <= len(paths) <= 2 or not all(isinstance(p, str) and p for p in paths):
        return Reject(manifest, line, MISSING_FIELD, sid, detail="'audio' must be a path or a list of two paths")
    meta = obj.get("meta") or {}
    meta = meta if isinstance(meta, dict) else {"meta": meta}
    segment = parse_segment(meta)
    if isinstance(segment, str):
        return Reject(manifest, line, BAD_SEGMENT, sid, detail=segment)
    if segment is not None and len(paths) != 1:
        return Reject(manifest, line, BAD_SEGMENT, sid, detail="a segment (meta.start/end) needs one audio file")
    if (problem := references_problem(meta)) is not None:
        return Reject(manifest, line, BAD_REFERENCES, sid, detail=problem)
    try:
        resolved = [resolve(p) for p in paths]
    except OutsideRootError as err:
        return Reject(manifest, line, PATH_OUTSIDE_ROOT, sid, detail=str(err))
    duration = obj.get("duration")
    instruction = obj.get("instruction")
    return SampleRecord(
        id=sid or "", audio=resolved, task=task, text=target, manifest=manifest, line=line,
        instruction=str(instruction) if instruction not in (None, "") else None,
        duration=float(duration) if isinstance(duration, (int, float)) and duration > 0 else None,
        meta=meta, segment=segment,
    )


def iter_lines(manifest: str, limit: int | None = None) -> Iterator[tuple[int, bytes]]:
    """Yields (1-based line number, raw bytes) for each non-blank line, at most ``limit`` of them.

    Bytes, not text: each line is decoded on its own by :func:`parse_line`, so one line that is
    not UTF-8 is rejected alone instead of failing (or silently altering) the whole file.

    A file that cannot be read to its end (a ``.gz`` cut short by a copy or a killed ``prepare``, or
    not gzip at all) raises one ValueError naming the manifest and the last line read whole.
    """
    count = 0
    number = 0
    # a Lhotse cut manifest may be gzipped (CutSet.to_file("x.jsonl.gz"))
    with gzip.open(manifest, "rb") if manifest.endswith(".gz") else open(manifest, "rb") as fh:
        lines = iter(fh)
        while True:
            try:
                text = next(lines)
            except StopIteration:
                return
            except (EOFError, OSError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
                raise ValueError(unreadable_message(manifest, number, err)) from None
            number += 1
            if not text.strip():
                continue  # blank lines are layout, not samples
            if limit is not None and count >= limit:
                return
            count += 1
            yield number, text


def unreadable_message(manifest: str, lines: int, err: BaseException) -> str:
    """One line for a manifest file that stops being readable after ``lines`` whole lines."""
    hint = " (a gzip file cut short, or not gzip)" if manifest.endswith(".gz") else ""
    return f"{manifest}: unreadable after line {lines}{hint}: {type(err).__name__}: {err}"


def check_gzip_stream(manifest: str) -> None:
    """Reads a ``.gz`` manifest through once (no JSON parsing), so a file cut short or not gzip
    fails before training starts rather than part way through an epoch."""
    lines = 0
    try:
        with gzip.open(manifest, "rb") as fh:
            while chunk := fh.read(1 << 16):  # small reads: the count stops close to the damage
                lines += chunk.count(b"\n")
    except (EOFError, OSError, zlib.error) as err:
        raise ValueError(unreadable_message(manifest, lines, err)) from None


def check_manifest_file(manifest: str) -> None:
    """Fails early, in the main process, on a manifest that does not exist, has no lines, or (a
    ``.gz``) cannot be decompressed to its end."""
    from .shar import SHAR_LAYOUT, is_shar, is_shar_dir, shar_fields

    if os.path.isdir(manifest) and not is_shar_dir(manifest):
        raise FileNotFoundError(f"{manifest}: a folder, but not {SHAR_LAYOUT}")
    if is_shar(manifest):
        shar_fields(manifest)  # the shard lists: one line for a missing or extra shard
        return
    if not os.path.isfile(manifest):
        raise FileNotFoundError(f"{manifest}: manifest file not found")
    if manifest.endswith(".gz"):
        check_gzip_stream(manifest)
    if next(iter_lines(manifest), None) is None:
        raise ValueError(f"{manifest}: no valid samples: 0 rejected (the manifest has no lines)")


def as_list(paths: list[str] | str | None) -> list[str]:
    """Normalises a DataModule path argument (one path, a list, or None)."""
    if paths is None:
        return []
    if isinstance(paths, (str, os.PathLike)):
        return [os.fspath(paths)]
    return [os.fspath(p) for p in paths]
