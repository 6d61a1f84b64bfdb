"""Lhotse CutSets for public corpora read in their original published layout.

``ahamask data prepare CORPUS --root DIR --out DIR`` writes
``OUT/manifests/{split}/{task}.cuts.jsonl.gz`` (a Lhotse CutSet, one cut per sample),
``OUT/summary.json`` (counts per split/task, skipped items with reasons, notes),
``OUT/skipped.jsonl`` (every skipped item) and ``OUT/corpus.json`` (the audio roots
read from). Audio is never copied: the cuts' recordings hold absolute paths into the
corpus, which therefore has to stay where it is; ``corpus.json`` tells the data layer
which folders those paths may lie in.

The AHAMask cut convention, which the data loader reads:

* one :class:`lhotse.MonoCut` per sample; ``cut.id`` is the sample id; ``cut.recording``
  is the clip, ``cut.start``/``cut.duration`` select a segment of a long file (TED-LIUM);
* one :class:`lhotse.SupervisionSegment` whose ``text`` is the task's target, with
  ``speaker``/``gender``/``language`` where the corpus gives them;
* ``cut.custom = {"task": <registered task name>, "meta": {...} (only where needed)}``;
* a pair sample (speaker verification) carries its second clip as ``cut.custom["audio_b"]``,
  a :class:`lhotse.Recording`, with ``cut.custom["audio_b_unaligned"] = True``: without it,
  ``cut.load_audio_b()`` would cut the second clip to the first one's start and duration.

>>> summary = prepare("librispeech", "/corpora/LibriSpeech", "data/librispeech")  # doctest: +SKIP
>>> summary["counts"]["test-clean"]["gr"]  # doctest: +SKIP
2620

Corpora with a Lhotse recipe (``lhotse.recipes``) go through it, or through its per-line
parser where the whole recipe would stop at one unreadable file (LibriSpeech); the others have
small readers of their own, each saying why. Each corpus lives in its own module exposing ``LAYOUT`` (one line,
quoted in the missing-root error) and ``prepare_corpus(root, writer, **options)``. The
modules import the helpers below, so they are loaded lazily to keep the import acyclic.
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
from collections import Counter
from collections.abc import Callable, Collection, Iterable
from pathlib import Path
from typing import Any

import soundfile
from lhotse import CutSet, MonoCut, Recording, SupervisionSegment
from lhotse.audio import AudioLoadingError

from ahamask_lightning.tasks import get_task

MAX_SKIPPED_IN_SUMMARY = 200  # the full list goes to skipped.jsonl; keep summary.json readable
CORPUS_FILE = "corpus.json"  # the data layer reads the audio roots from it
CUTS_SUFFIX = ".cuts.jsonl.gz"


def cuts_path(out: str | os.PathLike, split: str, task: str) -> Path:
    """Where the CutSet of one split and task goes: ``OUT/manifests/{split}/{task}.cuts.jsonl.gz``."""
    return Path(out) / "manifests" / split / f"{task}{CUTS_SUFFIX}"


def recording_paths(recording: Recording) -> list[str]:
    """The files a recording reads (its ``file`` sources)."""
    return [os.path.abspath(s.source) for s in recording.sources if s.type == "file"]


class CutWriter:
    """Streams AHAMask cuts to ``OUT/manifests/{split}/{task}.cuts.jsonl.gz`` and counts them.

    Each file is written with Lhotse's sequential CutSet writer (``CutSet.open_writer``, the same
    format as ``CutSet.to_file``) so that a corpus with 280k utterances and ten task files is
    never held in memory as cuts. Files are opened on first use, truncating earlier runs' files.
    """

    def __init__(self, out: str | os.PathLike, splits: Collection[str] | None = None,
                 audio_roots: Iterable[str | os.PathLike] = ()) -> None:
        self.out = Path(out)
        self.audio_roots: list[str] = []  # every audio path written must lie inside one of them
        for root in audio_roots:
            self.add_audio_root(root)
        self.splits = set(splits) if splits else None
        self.counts: dict[str, Counter] = {}
        self.skipped: Counter = Counter()
        self.notes: list[str] = []
        self._writers: dict[tuple[str, str], Any] = {}
        self._ids: dict[tuple[str, str], set[str]] = {}  # per file: ids are only unique within one
        self._skip_file = None

    def add_audio_root(self, root: str | os.PathLike) -> None:
        """Declare a folder audio is read from besides the corpus root (e.g. ``--clips-dir``)."""
        root = os.path.abspath(root)
        if root not in self.audio_roots:
            self.audio_roots.append(root)

    def wanted(self, split: str) -> bool:
        """Whether ``split`` is to be written (``--splits`` filter); corpora skip work early."""
        return self.splits is None or split in self.splits

    def add(self, split: str, task: str, id: str, recording: Recording, text: str, *,
            start: float = 0.0, duration: float | None = None, speaker: str | None = None,
            gender: str | None = None, language: str | None = None, audio_b: Recording | None = None,
            meta: dict[str, Any] | None = None) -> bool:
        """Write one sample as a cut; returns False (and records a skip) when it cannot be used.

        ``start``/``duration`` (seconds) select a segment of ``recording``; by default all of it.
        """
        if not self.wanted(split):
            return False
        get_task(task)  # a typo in a corpus module must fail loudly, not write a dead manifest
        text = " ".join(str(text).split())
        if not text:
            self.skip(split, id, "empty_target", task=task)
            return False
        ids = self._ids.setdefault((split, task), set())
        if id in ids:
            # Duplicate ids would make per-sample results ambiguous downstream.
            self.skip(split, id, "duplicate_id", task=task)
            return False
        paths = recording_paths(recording) + (recording_paths(audio_b) if audio_b is not None else [])
        outside = [p for p in paths if not any(os.path.commonpath([p, r]) == r for r in self.audio_roots)]
        if outside:
            # the data layer would reject it as outside the corpus (e.g. a table row naming ../x.wav)
            self.skip(split, id, "outside_audio_roots", task=task)
            self.note(f"audio outside {', '.join(self.audio_roots)} is skipped, e.g. {outside[0]}")
            return False
        ids.add(id)
        self._writer(split, task).write(make_cut(
            id, task, recording, text, start=start, duration=duration, speaker=speaker, gender=gender,
            language=language, audio_b=audio_b, meta=meta))
        self.counts.setdefault(split, Counter())[task] += 1
        return True

    def _writer(self, split: str, task: str) -> Any:
        key = (split, task)
        if key not in self._writers:
            path = cuts_path(self.out, split, task)
            path.parent.mkdir(parents=True, exist_ok=True)
            # Kept open across calls (closed in close()): one handle per file, not one per cut.
            self._writers[key] = CutSet.open_writer(path, overwrite=True)
        return self._writers[key]

    def recording(self, split: str, id: str, path: str | os.PathLike, recording_id: str | None = None,
                  samples: Iterable[str] | None = None) -> Recording | None:
        """The file's Recording, or None after recording the skip: ``missing_audio`` (no such file)
        or ``unreadable_audio`` (no audio backend reads its header). ``samples``: the ids of every
        sample the file holds (default: ``id``), each recorded as skipped."""
        if not str(path) or not os.path.isfile(path):
            reason, recording = "missing_audio", None
        else:
            recording = read_recording(path, recording_id=recording_id or id)
            reason = "unreadable_audio"
        if recording is None:
            for sample in [id] if samples is None else samples:
                self.skip(split, sample, reason)
        return recording

    def skip(self, split: str, id: str, reason: str, task: str | None = None) -> None:
        """Record an item that was left out, and why (summarised by reason)."""
        if not self.wanted(split):
            return
        self.skipped[reason] += 1
        if self._skip_file is None:
            self.out.mkdir(parents=True, exist_ok=True)
            self._skip_file = open(self.out / "skipped.jsonl", "w", encoding="utf-8")  # noqa: SIM115
        item = {"split": split, "id": id, "reason": reason}
        if task is not None:
            item["task"] = task
        self._skip_file.write(json.dumps(item, ensure_ascii=False) + "\n")

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()
        if self._skip_file is not None:
            self._skip_file.close()
            self._skip_file = None

    def read_skipped(self, limit: int = MAX_SKIPPED_IN_SUMMARY) -> list[dict[str, Any]]:
        path = self.out / "skipped.jsonl"
        if not self.skipped or not path.exists():
            return []
        items = []
        with open(path, encoding="utf-8") as f:
            for line in f:
                if len(items) >= limit:
                    break
                items.append(json.loads(line))
        return items


def make_cut(id: str, task: str, recording: Recording, text: str, *, start: float = 0.0,
             duration: float | None = None, speaker: str | None = None, gender: str | None = None,
             language: str | None = None, audio_b: Recording | None = None,
             meta: dict[str, Any] | None = None) -> MonoCut:
    """One sample in the AHAMask cut convention (see the module docstring)."""
    duration = recording.duration - start if duration is None else duration
    # The first channel, as the data layer has always read many-channel files.
    channel = recording.channel_ids[0]
    supervision = SupervisionSegment(id=id, recording_id=recording.id, start=0.0, duration=duration,
                                     channel=channel, text=text, speaker=speaker, gender=gender,
                                     language=language)
    custom: dict[str, Any] = {"task": task}
    if meta:
        custom["meta"] = meta
    if audio_b is not None:
        custom["audio_b"] = audio_b
        custom["audio_b_unaligned"] = True  # load the whole second clip, not the first one's span
    return MonoCut(id=id, start=start, duration=duration, channel=channel, recording=recording,
                   supervisions=[supervision], custom=custom)


def read_recording(path: str | os.PathLike, recording_id: str | None = None) -> Recording | None:
    """``Recording.from_file``, or None for a file whose header no audio backend can read."""
    try:
        return Recording.from_file(os.path.abspath(path), recording_id=recording_id)
    except AudioLoadingError:  # raised once every audio backend has failed on the file
        return None
    except soundfile.SoundFileError:  # under one forced backend (audio_backend(...)) its own error comes through
        return None


def layout_error(corpus: str, root: Path, layout: str, what: str = "") -> FileNotFoundError:
    """The one-line error for a root that does not hold the corpus in its published layout."""
    found = f" ({what})" if what else ""
    return FileNotFoundError(f"{corpus} not found under {root}{found}; expected {layout}")


class _Corpus:
    """A lazily imported corpus module (``data_modules.<name>``), callable as its prepare step."""

    def __init__(self, module: str) -> None:
        self.module_name = module

    @property
    def module(self) -> Any:
        return importlib.import_module(f"data_modules.{self.module_name}")

    @property
    def layout(self) -> str:
        return self.module.LAYOUT

    def options(self) -> list[str]:
        params = inspect.signature(self.module.prepare_corpus).parameters
        return [n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]

    def __call__(self, root: Path, writer: CutWriter, **options: Any) -> None:
        self.module.prepare_corpus(root, writer, **options)


CORPORA: dict[str, Callable[..., None]] = {name: _Corpus(name) for name in (
    "librispeech", "iemocap", "voxceleb", "audiocaps", "clotho", "covost", "libri2mix", "tedlium", "commonvoice")}


def _corpus(name: str) -> _Corpus:
    key = str(name).lower().replace("-", "").replace("_", "")
    aliases = {"voxceleb1": "voxceleb", "covost2": "covost", "tedlium3": "tedlium", "cv": "commonvoice"}
    key = aliases.get(key, key)
    if key not in CORPORA:
        raise ValueError(f"unknown corpus {name!r}; known corpora: {', '.join(CORPORA)}")
    return CORPORA[key]  # type: ignore[return-value]


def prepare(corpus: str, root: str | os.PathLike, out: str | os.PathLike,
            splits: Iterable[str] | None = None, **options: Any) -> dict[str, Any]:
    """Write CutSets for ``corpus`` found at ``root`` into ``out``; returns the summary.

    ``splits`` restricts the output splits (names as written, e.g. ``test-clean``);
    ``options`` are the corpus module's keyword options (e.g. ``librispeech_root``).
    """
    entry = _corpus(corpus)
    root_path = Path(os.path.abspath(Path(root).expanduser()))  # recordings must name absolute, normal paths
    if not root_path.is_dir():
        raise FileNotFoundError(f"{entry.module_name} root not found: {root_path} (expected {entry.layout})")
    unknown = sorted(set(options) - set(entry.options()))
    if unknown:
        raise ValueError(f"{entry.module_name} does not take option(s) {', '.join(unknown)}; "
                         f"its options: {', '.join(entry.options()) or 'none'}")
    writer = CutWriter(out, splits=list(splits) if splits else None, audio_roots=[root_path])
    try:
        entry(root_path, writer, **options)
    finally:
        writer.close()
    summary = {
        "corpus": entry.module_name,
        "root": str(root_path.resolve()),
        "counts": {s: dict(sorted(c.items())) for s, c in sorted(writer.counts.items())},
        "skipped": dict(sorted(writer.skipped.items())),
        "skipped_items": writer.read_skipped(),
        "notes": writer.notes,
    }
    Path(out).mkdir(parents=True, exist_ok=True)
    with open(Path(out) / "summary.json", "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2, ensure_ascii=False)
    write_corpus_file(out, writer.audio_roots)
    return summary


def write_corpus_file(out: str | os.PathLike, roots: Iterable[str]) -> Path:
    """Record ``roots`` in ``OUT/corpus.json``, keeping roots an earlier run into ``out`` recorded.

    Earlier roots stay because their cuts may still be in ``out`` (another corpus, other splits).
    """
    path = Path(out) / CORPUS_FILE
    kept: list[str] = []
    if path.is_file():
        try:
            kept = json.loads(path.read_text(encoding="utf-8"))["audio_roots"]
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path}: expected {{\"audio_roots\": [folders]}} from an earlier run ({err!r}); "
                             "fix or delete it") from None
        if not isinstance(kept, list) or not all(isinstance(r, str) for r in kept):
            raise ValueError(f"{path}: 'audio_roots' must be a list of folder names; fix or delete it")
        kept = [r if os.path.isabs(r) else os.path.abspath(path.parent / r) for r in kept]
    merged = list(dict.fromkeys([*kept, *(os.path.abspath(r) for r in roots)]))
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"audio_roots": merged}, f, indent=2, ensure_ascii=False)
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("corpus", help=f"one of: {', '.join(CORPORA)}")
    parser.add_argument("--root", required=True, help="the corpus directory, in its published layout")
    parser.add_argument("--out", required=True, help="output directory (CutSets only; audio is referenced)")
    parser.add_argument("--splits", nargs="+", default=None, help="only these output splits")
    # Corpus options default to None so that only the ones the user gave are passed on.
    parser.add_argument("--librispeech-root", default=None, help="libri2mix: LibriSpeech for the transcripts")
    parser.add_argument("--mix-mode", default=None, choices=("min", "max"), help="libri2mix: min or max mixtures")
    parser.add_argument("--sample-rate", default=None, choices=("16k", "8k"), help="libri2mix: wav16k or wav8k")
    parser.add_argument("--lang", default=None, help="commonvoice: language directory (default en)")
    parser.add_argument("--clips-dir", default=None, help="covost: Common Voice clips directory")
    parser.add_argument("--trials", default=None, help="voxceleb: trial list file name (default veri_test2.txt)")
    parser.add_argument("--train-pairs", type=int, default=None, help="voxceleb: training pairs (default 40000)")
    parser.add_argument("--pair-seed", type=int, default=None, help="voxceleb: seed of the training pairs (default 0)")
    parser.add_argument("--test-session", type=int, default=None, help="iemocap: held-out session (default 5)")


_OPTION_ARGS = ("librispeech_root", "mix_mode", "sample_rate", "lang", "clips_dir", "trials", "test_session",
                "train_pairs", "pair_seed")


def run(args: argparse.Namespace) -> int:
    options = {k: getattr(args, k) for k in _OPTION_ARGS if getattr(args, k, None) is not None}
    summary = prepare(args.corpus, args.root, args.out, splits=args.splits, **options)
    for split, counts in summary["counts"].items():
        for task, n in counts.items():
            print(f"{split}/{task}: {n} samples -> {cuts_path(args.out, split, task)}")
    if summary["skipped"]:
        print("skipped: " + ", ".join(f"{r}={n}" for r, n in summary["skipped"].items()))
    for note in summary["notes"]:
        print(f"note: {note}")
    if not summary["counts"]:
        print(f"no samples written for {summary['corpus']} under {summary['root']} (see {args.out}/summary.json)")
        return 1
    return 0
