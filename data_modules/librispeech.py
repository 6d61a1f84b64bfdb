"""LibriSpeech: asr, gr and the asr+gr composites (gr_asr, asr_gr, json).

Published layout (openslr.org/12, one tarball per subset, all unpacking into ``LibriSpeech/``)::

    LibriSpeech/SPEAKERS.TXT                      ;ID |SEX| SUBSET |MINUTES| NAME
    LibriSpeech/{subset}/{speaker}/{chapter}/{speaker}-{chapter}.trans.txt
    LibriSpeech/{subset}/{speaker}/{chapter}/{speaker}-{chapter}-{utt:04d}.flac

Output splits are the subset directory names (``train-clean-100``, ``dev-clean``,
``test-clean``, ``test-other``, ...), plus ``train``: the union of every ``train-*``
subset present, which the experiment YAMLs train on. Transcripts keep LibriSpeech's
upper case (WER normalisation lower-cases both sides). Gender comes from SPEAKERS.TXT
(``F`` -> ``Female``, ``M`` -> ``Male``); utterances of speakers missing there still
get ``asr`` but are skipped (``no_gender``) for the gender tasks.
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from ahamask_lightning.tasks import composite_target

from .prepare import ManifestWriter, layout_error

LAYOUT = ("LibriSpeech/{subset}/{speaker}/{chapter}/{speaker}-{chapter}.trans.txt + .flac files, "
          "and LibriSpeech/SPEAKERS.TXT")
SUBSET = re.compile(r"^(train|dev|test)-[a-z]+(-\d+)?$")
GENDER = {"F": "Female", "M": "Male"}
TASKS = ("asr", "gr", "gr_asr", "asr_gr", "json")


def find_root(root: Path) -> Path:
    """``root`` itself, or ``root/LibriSpeech`` when given the directory the tarballs were unpacked in."""
    if not any(SUBSET.match(p.name) for p in _dirs(root)) and (root / "LibriSpeech").is_dir():
        return root / "LibriSpeech"
    return root


def subsets(root: Path) -> list[Path]:
    return [p for p in _dirs(root) if SUBSET.match(p.name)]


def read_speakers(path: Path) -> dict[str, str]:
    """Speaker id -> ``Male``/``Female`` from SPEAKERS.TXT (empty when the file is absent)."""
    genders: dict[str, str] = {}
    if not path.is_file():
        return genders
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip() or line.lstrip().startswith(";"):
            continue
        # maxsplit: a few reader names themselves contain '|' (e.g. "|CBW|Simon").
        fields = [f.strip() for f in line.split("|", 4)]
        if len(fields) >= 2 and fields[1].upper() in GENDER:
            genders[fields[0]] = GENDER[fields[1].upper()]
    return genders


def read_transcripts(trans: Path) -> Iterator[tuple[str, str]]:
    """``(utterance id, transcript)`` pairs of one chapter's ``.trans.txt``."""
    for line in trans.read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.strip().split(" ", 1)
        if parts and parts[0]:
            yield parts[0], parts[1].strip() if len(parts) > 1 else ""


def chapters(subset: Path) -> Iterator[Path]:
    for speaker in _dirs(subset):
        yield from _dirs(speaker)


class TranscriptIndex:
    """Utterance id -> transcript, loading one chapter file at a time (for Libri2Mix targets)."""

    def __init__(self, root: Path) -> None:
        self.root = find_root(root)
        self.subsets = subsets(self.root)
        self._cache: dict[tuple[str, str], dict[str, str]] = {}

    def get(self, utt: str, prefer: str | None = None) -> str | None:
        parts = utt.split("-")
        if len(parts) != 3:
            return None
        key = (parts[0], parts[1])
        if key not in self._cache:
            self._cache[key] = {}
            # Try the subset the mixture was made from first; a chapter lives in exactly one subset.
            ordered = sorted(self.subsets, key=lambda s: s.name != prefer)
            for sub in ordered:
                trans = sub / parts[0] / parts[1] / f"{parts[0]}-{parts[1]}.trans.txt"
                if trans.is_file():
                    self._cache[key] = dict(read_transcripts(trans))
                    break
        return self._cache[key].get(utt)


def prepare_corpus(root: Path, writer: ManifestWriter) -> None:
    root = find_root(root)
    found = subsets(root)
    if not found:
        raise layout_error("librispeech", root, LAYOUT, "no train-*/dev-*/test-* subset directory")
    genders = read_speakers(root / "SPEAKERS.TXT")
    if not genders:
        writer.note("SPEAKERS.TXT missing or empty: only asr manifests were written")
    for subset in found:
        outputs = [s for s in (subset.name, "train" if subset.name.startswith("train-") else None)
                   if s and writer.wanted(s)]
        if not outputs:
            continue
        for chapter in chapters(subset):
            speaker = chapter.parent.name
            trans = chapter / f"{speaker}-{chapter.name}.trans.txt"
            if not trans.is_file():
                for split in outputs:
                    writer.skip(split, f"{speaker}-{chapter.name}", "missing_transcript")
                continue
            gender = genders.get(speaker)
            for utt, text in read_transcripts(trans):
                audio = chapter / f"{utt}.flac"
                if not audio.is_file():
                    for split in outputs:
                        writer.skip(split, utt, "missing_audio")
                    continue
                duration = writer.duration(audio)
                meta = {"speaker": speaker, "chapter": chapter.name, "subset": subset.name}
                if gender:
                    meta["gender"] = gender
                for split in outputs:
                    _write_utterance(writer, split, utt, str(audio), text, gender, duration, meta)


def _write_utterance(writer: ManifestWriter, split: str, utt: str, audio: str, text: str,
                     gender: str | None, duration: float | None, meta: dict) -> None:
    if not writer.add(split, "asr", utt, audio, text, duration, meta):
        return  # empty transcript: nothing the composites could use either
    if gender is None:
        writer.skip(split, utt, "no_gender", task="gr")
        return
    writer.add(split, "gr", utt, audio, gender, duration, meta)
    for task in ("gr_asr", "asr_gr", "json"):
        writer.add(split, task, utt, audio, composite_target(task, text, gender), duration, meta)


def _dirs(path: Path) -> list[Path]:
    # Sorted so manifests are byte-identical across runs and filesystems.
    return sorted((p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name) \
        if path.is_dir() else []
