"""JSONL manifests: one sample per line, parsed and validated into :class:`SampleRecord`.

Line format::

    {"id": "x1", "audio": "audio/x1.wav" | ["a.wav", "b.wav"], "task": "gr", "text": "Male",
     "instruction": null, "duration": 3.2, "meta": {}}

Relative audio paths resolve against ``audio_root`` when it is given. Otherwise they resolve
against the first of (manifest directory, its parent, its grandparent) in which the file exists;
this matches the generator's layout ``OUT/manifests/<split>/<task>.jsonl`` with paths relative
to ``OUT`` while still accepting manifests that sit next to their audio.

Bad lines are not exceptions the caller has to catch: :func:`parse_line` returns a
:class:`Reject` naming the reason, so a stream can count it and carry on.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("ahamask_lightning.data")

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
REASONS = (MALFORMED_JSON, MISSING_FIELD, UNKNOWN_TASK, EMPTY_TARGET, MISSING_FILE,
           UNREADABLE_AUDIO, EMPTY_AUDIO, NAN_OR_INF, TOO_LONG)


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


def default_known_tasks() -> frozenset[str] | None:
    """Task names of the project registry, or None (accept any task) when it cannot be imported."""
    try:
        from ahamask_lightning.tasks import TASKS
    except Exception:  # noqa: BLE001 - the registry is optional for the data layer: never fail the pipeline on it
        return None
    return frozenset(TASKS)


class PathResolver:
    """Resolves a manifest's relative audio paths (see the module docstring for the rule)."""

    def __init__(self, manifest: str, audio_root: str | None = None) -> None:
        self.audio_root = audio_root
        here = os.path.dirname(os.path.abspath(manifest))
        parent = os.path.dirname(here)
        self.candidates = [here, parent, os.path.dirname(parent)]
        self._hit: str | None = None  # the candidate that worked last: one stat per line in the usual case

    def __call__(self, path: str) -> str:
        path = os.path.expanduser(path)
        if os.path.isabs(path):
            return path
        if self.audio_root is not None:
            return os.path.join(self.audio_root, path)
        if self._hit is not None:
            full = os.path.join(self._hit, path)
            if os.path.exists(full):
                return full
        for root in self.candidates:
            full = os.path.join(root, path)
            if os.path.exists(full):
                self._hit = root
                return full
        # Not found anywhere: report it against the most likely root so the message is useful.
        return os.path.join(self._hit or self.candidates[0], path)


def parse_line(text: str, manifest: str, line: int, resolve: PathResolver,
               known_tasks: Collection[str] | None) -> SampleRecord | Reject:
    """Parses and validates one manifest line (no audio access except path resolution)."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        return Reject(manifest, line, MALFORMED_JSON, detail=str(err))
    if not isinstance(obj, dict):
        return Reject(manifest, line, MALFORMED_JSON, detail="line is not a JSON object")
    sid = obj.get("id")
    sid = str(sid) if sid is not None else None
    for key in ("id", "audio", "task"):
        if obj.get(key) in (None, "", []):
            return Reject(manifest, line, MISSING_FIELD, sid, detail=f"no {key!r}")
    task = str(obj["task"])
    if known_tasks is not None and task not in known_tasks:
        return Reject(manifest, line, UNKNOWN_TASK, sid, detail=f"task {task!r}")
    target = obj.get("text")
    if not isinstance(target, str) or not target.strip():
        return Reject(manifest, line, EMPTY_TARGET, sid)
    audio = obj["audio"]
    paths = [audio] if isinstance(audio, str) else audio
    if not isinstance(paths, list) or not 1 <= len(paths) <= 2 or not all(isinstance(p, str) and p for p in paths):
        return Reject(manifest, line, MISSING_FIELD, sid, detail="'audio' must be a path or a list of two paths")
    duration = obj.get("duration")
    instruction = obj.get("instruction")
    meta = obj.get("meta") or {}
    return SampleRecord(
        id=sid or "", audio=[resolve(p) for p in paths], task=task, text=target, manifest=manifest, line=line,
        instruction=str(instruction) if instruction not in (None, "") else None,
        duration=float(duration) if isinstance(duration, (int, float)) and duration > 0 else None,
        meta=meta if isinstance(meta, dict) else {"meta": meta},
    )


def iter_lines(manifest: str, limit: int | None = None) -> Iterator[tuple[int, str]]:
    """Yields (1-based line number, text) for each non-blank line, at most ``limit`` of them."""
    count = 0
    with open(manifest, encoding="utf-8", errors="replace") as fh:
        for number, text in enumerate(fh, start=1):
            if not text.strip():
                continue  # blank lines are layout, not samples
            if limit is not None and count >= limit:
                return
            count += 1
            yield number, text


def check_manifest_file(manifest: str) -> None:
    """Fails early, in the main process, on a manifest that does not exist or has no lines."""
    if not os.path.isfile(manifest):
        raise FileNotFoundError(f"{manifest}: manifest file not found")
    if next(iter_lines(manifest), None) is None:
        raise ValueError(f"{manifest}: no valid samples: 0 rejected (the manifest has no lines)")


def as_list(paths: list[str] | str | None) -> list[str]:
    """Normalises a DataModule path argument (one path, a list, or None)."""
    if paths is None:
        return []
    if isinstance(paths, (str, os.PathLike)):
        return [os.fspath(paths)]
    return [os.fspath(p) for p in paths]
