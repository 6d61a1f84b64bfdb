"""Where a manifest's audio paths point, and the corpus they must stay in.

Relative audio paths resolve against ``audio_root`` when it is given. Otherwise they resolve
against the first of (manifest directory, its parent, its grandparent) in which the file exists;
this matches the generator's layout ``OUT/manifests/<split>/<task>.jsonl`` with paths relative
to ``OUT`` while still accepting manifests that sit next to their audio.

Audio paths are confined to the corpus (reason ``path_outside_root`` otherwise): a relative path
may not climb above the root it resolves against (``../x.wav``), and an absolute path must lie
inside ``audio_root`` when it is given, else inside the manifest's directory or a root recorded
in a ``corpus.json`` (:data:`CORPUS_FILE`) in the nearest ancestor folder of the manifest that
holds one. ``ahamask data prepare`` writes that file (``{"audio_roots": ["/corpora/LibriSpeech"]}``)
because its manifests name the raw corpus by absolute path, outside the output folder; relative
entries resolve against the file's folder. The check is on the normalised path, so symbolic links
inside the corpus are still followed. ``allow_outside_root`` lifts it.
"""
from __future__ import annotations

import json
import os


class OutsideRootError(ValueError):
    """An audio path that leaves the corpus root (see the module docstring)."""


CORPUS_FILE = "corpus.json"  # written by ``ahamask data prepare`` into its output folder


def read_corpus_file(path: str) -> list[str]:
    """The absolute audio roots listed in a ``corpus.json``; ValueError naming the file when malformed."""
    expected = 'expected a JSON object {"audio_roots": ["/path/to/corpus", ...]}'
    try:
        with open(path, encoding="utf-8") as fh:
            obj = json.load(fh)
    except (OSError, ValueError, RecursionError) as err:
        raise ValueError(f"{path}: cannot read ({err}); {expected}") from None
    roots = obj.get("audio_roots") if isinstance(obj, dict) else None
    if not isinstance(roots, list) or not roots or not all(isinstance(r, str) and r for r in roots):
        raise ValueError(f"{path}: 'audio_roots' is missing or not a list of paths; {expected}")
    here = os.path.dirname(os.path.abspath(path))
    return [os.path.normpath(os.path.join(here, os.path.expanduser(r))) for r in roots]


def recorded_roots(manifest: str) -> list[str]:
    """Audio roots recorded for ``manifest``: the nearest ancestor folder's ``corpus.json``, or none."""
    folder = os.path.dirname(os.path.abspath(manifest))
    while True:
        path = os.path.join(folder, CORPUS_FILE)
        if os.path.isfile(path):
            return read_corpus_file(path)
        parent = os.path.dirname(folder)
        if parent == folder:
            return []
        folder = parent


def _inside(path: str, root: str) -> bool:
    return os.path.commonpath([path, root]) == root


class PathResolver:
    """Resolves a manifest's relative audio paths and confines them (see the module docstring)."""

    def __init__(self, manifest: str, audio_root: str | None = None, allow_outside_root: bool = False) -> None:
        # the same root for joining relative paths as for confining absolute ones (``~`` expanded)
        self.audio_root = os.path.abspath(os.path.expanduser(audio_root)) if audio_root is not None else None
        self.allow_outside_root = allow_outside_root
        here = os.path.dirname(os.path.abspath(manifest))
        parent = os.path.dirname(here)
        self.candidates = [here, parent, os.path.dirname(parent)]
        # Where absolute paths must lie: the documented root if given, else the manifest's folder
        # and the roots ``prepare`` recorded (not read when nothing is checked).
        if self.audio_root is not None:
            self.roots = [self.audio_root]
        else:
            self.roots = [here] + ([] if allow_outside_root else recorded_roots(manifest))
        self._hit: str | None = None  # the candidate that worked last: one stat per line in the usual case

    def __call__(self, path: str) -> str:
        """The path to open; raises :class:`OutsideRootError` for a path that leaves the corpus."""
        path = os.path.expanduser(path)
        if not self.allow_outside_root:
            self._confine(path)
        if os.path.isabs(path):
            return path
        if self.audio_root is not None:
            return os.path.join(self.audio_root, path)
        if self._hit is not None:
            full = os.path.join(self._hit, path)
            if os.path.lexists(full):
                return full
        for root in self.candidates:
            full = os.path.join(root, path)
            # lexists: a broken link or a link loop is found too, and reported as what it is
            if os.path.lexists(full):
                self._hit = root
                return full
        # Not found anywhere: report it against the most likely root so the message is useful.
        return os.path.join(self._hit or self.candidates[0], path)

    def _confine(self, path: str) -> None:
        if os.path.isabs(path):
            normal = os.path.normpath(path)
            if not any(_inside(normal, root) for root in self.roots):
                raise OutsideRootError(f"{path} is outside {' and '.join(self.roots)}")
            return
        first = os.path.normpath(path).split(os.sep, 1)[0]
        if first == os.pardir:
            raise OutsideRootError(f"{path} climbs above the corpus root")
