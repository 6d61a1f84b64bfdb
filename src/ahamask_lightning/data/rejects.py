"""Bookkeeping of bad samples across processes.

Bad samples are found in two places: lines that cannot become a cut, while the sampler reads the
manifest in the main process (:class:`RejectLog`, stream ``r<rank>wmain``), and audio that fails
to decode, in the dataloader workers (stream ``r<rank>w<worker>``). Workers are separate
processes, so counts cannot live in a shared object: each stream appends its rejects to its own
JSONL file beside ``rejects_path`` (``<stem>.<stage>.<stream>.jsonl``: no two processes write one
file) and workers also send them to the main process along with their batches.
:func:`read_reject_files` merges the files. A sample is logged and written once per run: workers
are new processes every epoch, so their sink is given the keys (manifest, line) the main process
has already seen (``known``) and skips them.
"""
from __future__ import annotations

import glob
import json
import logging
import os
from collections import Counter
from collections.abc import Collection, Iterable
from typing import IO

from .manifest import Reject

log = logging.getLogger("ahamask_lightning.data")


def stream_reject_path(rejects_path: str, stage: str, stream: str) -> str:
    stem, ext = os.path.splitext(rejects_path)
    return f"{stem}.{stage}.{stream}{ext or '.jsonl'}"


class RejectSink:
    """Logs each reject once per process and appends it to this stream's rejects file."""

    def __init__(self, rejects_path: str | None, stage: str, stream: str,
                 known: Collection[tuple[str, int]] = ()) -> None:
        self.path = stream_reject_path(rejects_path, stage, stream) if rejects_path else None
        self.stage = stage
        self._fh: IO[str] | None = None
        self._known = known  # seen by the main process in an earlier epoch (or an earlier part of the run)
        self._seen: set[tuple[str, int]] = set()

    def __call__(self, reject: Reject, epoch: int) -> None:
        key = (reject.manifest, reject.line)
        if key in self._seen or key in self._known:
            return
        self._seen.add(key)
        detail = f" ({reject.detail})" if reject.detail else ""
        log.warning("%s:%d: skipped bad sample %s: %s%s", reject.manifest, reject.line,
                    reject.id or "?", reject.reason, detail)
        if self.path is None:
            return
        if self._fh is None:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - lives as long as the stream
        entry = reject.to_json() | {"stage": self.stage, "epoch": epoch}
        self._fh.write(json.dumps(entry) + "\n")
        self._fh.flush()  # a crash later in the epoch must not lose the record

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


class RejectLog:
    """The main process's record of one stage's bad samples for the run.

    ``rejected`` ((manifest, line) -> reason) is shared by the stage's loaders and pre-filled from
    the rejects files (a run resumed into its folder). Lines rejected while reading manifests are
    logged and written here; under DDP every rank reads every line, so only ``write`` (rank 0)
    logs them. ``epoch_counts`` (manifest -> reason -> n) serves the all-bad-manifest check.
    """

    def __init__(self, rejected: dict[tuple[str, int], str], rejects_path: str | None, stage: str,
                 rank: int = 0, write: bool = True) -> None:
        self.rejected = rejected
        self.sink = RejectSink(rejects_path, stage, f"r{rank}wmain", rejected) if write else None
        self.epoch = 0
        self.epoch_counts: dict[str, dict[str, int]] = {}

    def begin_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.epoch_counts = {}

    def _count(self, manifest: str, reason: str) -> None:
        per = self.epoch_counts.setdefault(manifest, {})
        per[reason] = per.get(reason, 0) + 1

    def __call__(self, reject: Reject) -> None:
        """A line rejected while reading the manifest (main process)."""
        self._count(reject.manifest, reject.reason)
        key = (reject.manifest, reject.line)
        if key in self.rejected:
            return
        if self.sink is not None:
            self.sink(reject, self.epoch)
        self.rejected[key] = reject.reason

    def from_worker(self, rejects: Iterable[tuple[str, int, str]]) -> None:
        """Rejects a worker has logged and written already."""
        for manifest, line, reason in rejects:
            self._count(manifest, reason)
            self.rejected.setdefault((manifest, line), reason)

    def close(self) -> None:
        if self.sink is not None:
            self.sink.close()


def read_reject_files(rejects_path: str, stage: str | None = None) -> dict[tuple[str, int], str]:
    """(manifest, line) -> reason from every stream file written for ``rejects_path``."""
    stem, ext = os.path.splitext(rejects_path)
    pattern = f"{glob.escape(stem)}.{glob.escape(stage) if stage else '*'}.r*w*{ext or '.jsonl'}"
    found: dict[tuple[str, int], str] = {}
    for path in sorted(glob.glob(pattern)):
        with open(path, encoding="utf-8") as fh:
            for text in fh:
                try:
                    entry = json.loads(text)
                except json.JSONDecodeError:
                    continue  # a line cut by a crash: ignore it
                found[(entry["manifest"], int(entry["line"]))] = entry["reason"]
    return found


def count_reasons(entries: Iterable[str]) -> dict[str, int]:
    return dict(sorted(Counter(entries).items()))


def format_reasons(counts: dict[str, int]) -> str:
    return ", ".join(f"{reason}={n}" for reason, n in sorted(counts.items())) or "none"
