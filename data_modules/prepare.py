"""Manifests for public corpora read in their original published layout.

``ahamask data prepare CORPUS --root DIR --out DIR`` writes
``OUT/manifests/{split}/{task}.jsonl`` (one sample per line, instruction-free),
``OUT/summary.json`` (counts per split/task, skipped items with reasons, notes),
``OUT/skipped.jsonl`` (every skipped item) and ``OUT/corpus.json`` (the audio roots
read from). Audio is never copied: manifests hold absolute paths into the corpus,
which therefore has to stay where it is. The data layer confines absolute audio
paths to a manifest's folder; ``corpus.json`` adds the raw corpus to that, so the
prepared manifests pass by default and a path outside the corpus is still rejected.

>>> summary = prepare("librispeech", "/corpora/LibriSpeech", "data/librispeech")  # doctest: +SKIP
>>> summary["counts"]["test-clean"]["gr"]  # doctest: +SKIP
2620

Each corpus lives in its own module exposing ``LAYOUT`` (one line, quoted in the
missing-root error) and ``prepare_corpus(root, writer, **options)``. The modules
import the helpers below, so they are loaded lazily to keep the import acyclic.
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

from ahamask_lightning.data.manifest import CORPUS_FILE, read_corpus_file
from ahamask_lightning.tasks import get_task

MAX_SKIPPED_IN_SUMMARY = 200  # the full list goes to skipped.jsonl; keep summary.json readable


class ManifestWriter:
    """Streams manifest lines to ``OUT/manifests/{split}/{task}.jsonl`` and counts them.

    Files are opened on first use (truncating earlier runs' files of the same name), so a
    corpus with 280k utterances never holds its manifests in memory.
    """

    def __init__(self, out: str | os.PathLike, splits: Collection[str] | None = None,
                 durations: bool = True, audio_roots: Iterable[str | os.PathLike] = ()) -> None:
        self.out = Path(out)
        self.audio_roots: list[str] = []  # every audio path written must lie inside one of them
        for root in audio_roots:
            self.add_audio_root(root)
        self.splits = set(splits) if splits else None
        self.durations = durations
        self.counts: dict[str, Counter] = {}
        self.skipped: Counter = Counter()
        self.notes: list[str] = []
        self._files: dict[tuple[str, str], Any] = {}
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

    def add(self, split: str, task: str, id: str, audio: str | list[str], text: str,
            duration: float | None = None, meta: dict[str, Any] | None = None) -> bool:
        """Write one sample; returns False (and records a skip) when it cannot be used."""
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
        ids.add(id)
        paths = [os.path.abspath(p) for p in audio] if isinstance(audio, (list, tuple)) else os.path.abspath(audio)
        outside = [p for p in (paths if isinstance(paths, list) else [paths])
                   if not any(os.path.commonpath([p, root]) == root for root in self.audio_roots)]
        if outside:
            # the data layer would reject it as path_outside_root (e.g. a table row naming ../x.wav)
            self.skip(split, id, "outside_audio_roots", task=task)
            self.note(f"audio outside {', '.join(self.audio_roots)} is skipped, e.g. {outside[0]}")
            return False
        line: dict[str, Any] = {"id": id, "audio": paths, "task": task, "text": text}
        if duration is not None and duration > 0:
            line["duration"] = round(float(duration), 3)
        line["meta"] = meta or {}
        key = (split, task)
        if key not in self._files:
            path = self.out / "manifests" / split / f"{task}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            # Kept open across calls (closed in close()): one handle per manifest, not one per line.
            self._files[key] = open(path, "w", encoding="utf-8")  # noqa: SIM115
        self._files[key].write(json.dumps(line, ensure_ascii=False) + "\n")
        self.counts.setdefault(split, Counter())[task] += 1
        return True

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

    def duration(self, path: str | os.PathLike) -> float | None:
        """Seconds of an audio file from its header, or None (disabled, or a format libsndfile lacks)."""
        if not self.durations:
            return None
        import soundfile as sf

        try:
            info = sf.info(str(path))
        except (RuntimeError, OSError, ValueError, TypeError):  # mp3 on old libsndfile, shorten sph, bad headers
            return None
        return info.frames / info.samplerate if info.samplerate else None

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()
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

    def __call__(self, root: Path, writer: ManifestWriter, **options: Any) -> None:
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
            splits: Iterable[str] | None = None, durations: bool = True, **options: Any) -> dict[str, Any]:
    """Write manifests for ``corpus`` found at ``root`` into ``out``; returns the summary.

    ``splits`` restricts the output splits (names as written, e.g. ``test-clean``);
    ``durations=False`` skips reading audio headers (faster on slow disks);
    ``options`` are the corpus module's keyword options (e.g. ``librispeech_root``).
    """
    entry = _corpus(corpus)
    root_path = Path(root).expanduser()
    if not root_path.is_dir():
        raise FileNotFoundError(f"{entry.module_name} root not found: {root_path} (expected {entry.layout})")
    unknown = sorted(set(options) - set(entry.options()))
    if unknown:
        raise ValueError(f"{entry.module_name} does not take option(s) {', '.join(unknown)}; "
                         f"its options: {', '.join(entry.options()) or 'none'}")
    writer = ManifestWriter(out, splits=list(splits) if splits else None, durations=durations,
                            audio_roots=[root_path])
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

    Earlier roots stay because their manifests may still be in ``out`` (another corpus, other splits).
    """
    path = Path(out) / CORPUS_FILE
    kept = read_corpus_file(str(path)) if path.is_file() else []
    merged = list(dict.fromkeys([*kept, *(os.path.abspath(r) for r in roots)]))
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"audio_roots": merged}, f, indent=2, ensure_ascii=False)
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("corpus", help=f"one of: {', '.join(CORPORA)}")
    parser.add_argument("--root", required=True, help="the corpus directory, in its published layout")
    parser.add_argument("--out", required=True, help="output directory (manifests only; audio is referenced)")
    parser.add_argument("--splits", nargs="+", default=None, help="only these output splits")
    parser.add_argument("--no-durations", dest="durations", action="store_false",
                        help="do not read audio headers for durations")
    # Corpus options default to None so that only the ones the user gave are passed on.
    parser.add_argument("--librispeech-root", default=None, help="libri2mix: LibriSpeech for the transcripts")
    parser.add_argument("--mix-mode", default=None, choices=("min", "max"), help="libri2mix: min or max mixtures")
    parser.add_argument("--sample-rate", default=None, choices=("16k", "8k"), help="libri2mix: wav16k or wav8k")
    parser.add_argument("--lang", default=None, help="commonvoice: language directory (default en)")
    parser.add_argument("--clips-dir", default=None, help="covost/commonvoice: Common Voice clips directory")
    parser.add_argument("--trials", default=None, help="voxceleb: trial list file name (default veri_test2.txt)")
    parser.add_argument("--test-session", type=int, default=None, help="iemocap: held-out session (default 5)")


_OPTION_ARGS = ("librispeech_root", "mix_mode", "sample_rate", "lang", "clips_dir", "trials", "test_session")


def run(args: argparse.Namespace) -> int:
    options = {k: getattr(args, k) for k in _OPTION_ARGS if getattr(args, k, None) is not None}
    summary = prepare(args.corpus, args.root, args.out, splits=args.splits,
                      durations=getattr(args, "durations", True), **options)
    for split, counts in summary["counts"].items():
        for task, n in counts.items():
            print(f"{split}/{task}: {n} samples -> {Path(args.out) / 'manifests' / split / (task + '.jsonl')}")
    if summary["skipped"]:
        print("skipped: " + ", ".join(f"{r}={n}" for r, n in summary["skipped"].items()))
    for note in summary["notes"]:
        print(f"note: {note}")
    if not summary["counts"]:
        print(f"no samples written for {summary['corpus']} under {summary['root']} (see {args.out}/summary.json)")
        return 1
    return 0
