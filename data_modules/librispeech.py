"""LibriSpeech: asr, gr and the asr+gr composites (gr_asr, asr_gr, json), via Lhotse's recipe.

Published layout (openslr.org/12, one tarball per subset, all unpacking into ``LibriSpeech/``)::

    LibriSpeech/SPEAKERS.TXT                      ;ID |SEX| SUBSET |MINUTES| NAME
    LibriSpeech/{subset}/{speaker}/{chapter}/{speaker}-{chapter}.trans.txt
    LibriSpeech/{subset}/{speaker}/{chapter}/{speaker}-{chapter}-{utt:04d}.flac

Recordings and transcripts come from ``lhotse.recipes.prepare_librispeech``, which reads the
official subset names (``dev-clean``, ``test-other``, ``train-clean-100``, ... and the mini
``dev-clean-2``/``train-clean-5``) and drops utterances whose flac is missing (logged by Lhotse).
Output splits are those subset names, plus ``train``: the union of every ``train-*`` subset
present, which the experiment YAMLs train on. Transcripts keep LibriSpeech's upper case (WER
normalisation lower-cases both sides). The recipe does not read SPEAKERS.TXT, so gender is
read here (``F`` -> ``Female``, ``M`` -> ``Male``); utterances of speakers missing there still
get ``asr`` but are skipped (``no_gender``) for the gender tasks.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from lhotse import Recording, RecordingSet, SupervisionSegment, SupervisionSet
from lhotse.recipes import prepare_librispeech
from lhotse.recipes.librispeech import LIBRISPEECH, MINI_LIBRISPEECH

from ahamask_lightning.tasks import composite_target

from .prepare import CutWriter, layout_error

LAYOUT = ("LibriSpeech/{subset}/{speaker}/{chapter}/{speaker}-{chapter}.trans.txt + .flac files, "
          "and LibriSpeech/SPEAKERS.TXT")
SUBSETS = (*LIBRISPEECH, *MINI_LIBRISPEECH)
GENDER = {"F": "Female", "M": "Male"}
TASKS = ("asr", "gr", "gr_asr", "asr_gr", "json")


def find_root(root: Path) -> Path:
    """``root`` itself, or ``root/LibriSpeech`` when given the directory the tarballs were unpacked in."""
    if not subsets(root) and (root / "LibriSpeech").is_dir():
        return root / "LibriSpeech"
    return root


def subsets(root: Path) -> list[str]:
    """The official subset directories present under ``root``, in Lhotse's order."""
    return [s for s in SUBSETS if (root / s).is_dir()]


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


def utterances(root: Path, parts: list[str]) -> dict[str, Iterator[tuple[Recording, SupervisionSegment]]]:
    """Subset -> its ``(recording, supervision)`` pairs in utterance-id order, from Lhotse's recipe."""
    manifests = prepare_librispeech(root, dataset_parts=parts)
    return {part: _pairs(manifests[part]["recordings"], manifests[part]["supervisions"])
            for part in parts if part in manifests}


def _pairs(recordings: RecordingSet, supervisions: SupervisionSet) -> Iterator[tuple[Recording, SupervisionSegment]]:
    # Sorted so the CutSets are the same across runs and filesystems (the recipe walks rglob order).
    for supervision in sorted(supervisions, key=lambda s: s.id):
        yield recordings[supervision.recording_id], supervision


def prepare_corpus(root: Path, writer: CutWriter) -> None:
    root = find_root(root)
    found = subsets(root)
    if not found:
        raise layout_error("librispeech", root, LAYOUT, f"no subset directory ({', '.join(SUBSETS)})")
    genders = read_speakers(root / "SPEAKERS.TXT")
    if not genders:
        writer.note("SPEAKERS.TXT missing or empty: only asr CutSets were written")
    outputs = {part: [s for s in (part, "train" if part.startswith("train-") else None) if s and writer.wanted(s)]
               for part in found}
    parts = [part for part in found if outputs[part]]
    if not parts:
        return
    for part, pairs in utterances(root, parts).items():
        for recording, supervision in pairs:
            for split in outputs[part]:
                _write_utterance(writer, split, recording, supervision, genders.get(supervision.speaker))


def _write_utterance(writer: CutWriter, split: str, recording: Recording, supervision: SupervisionSegment,
                     gender: str | None) -> None:
    utt, text = supervision.id, supervision.text or ""
    common = {"speaker": supervision.speaker, "gender": gender, "language": supervision.language}
    if not writer.add(split, "asr", utt, recording, text, **common):
        return  # empty transcript: nothing the composites could use either
    if gender is None:
        writer.skip(split, utt, "no_gender", task="gr")
        return
    writer.add(split, "gr", utt, recording, gender, **common)
    for task in ("gr_asr", "asr_gr", "json"):
        writer.add(split, task, utt, recording, composite_target(task, text, gender), **common)
