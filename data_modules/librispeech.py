"""LibriSpeech: asr, gr and the asr+gr composites (gr_asr, asr_gr, json), via Lhotse's recipe.

Published layout (openslr.org/12, one tarball per subset, all unpacking into ``LibriSpeech/``)::

    LibriSpeech/SPEAKERS.TXT                      ;ID |SEX| SUBSET |MINUTES| NAME
    LibriSpeech/{subset}/{speaker}/{chapter}/{speaker}-{chapter}.trans.txt
    LibriSpeech/{subset}/{speaker}/{chapter}/{speaker}-{chapter}-{utt:04d}.flac

Recordings and transcripts come from Lhotse's LibriSpeech recipe: its per-line parser
(``lhotse.recipes.librispeech.parse_utterance``) over the official subsets (``dev-clean``,
``test-other``, ``train-clean-100``, ... and the mini ``dev-clean-2``/``train-clean-5``). The
loop over the transcript lines is here rather than ``prepare_librispeech``'s, because that one
stops the whole preparation at the first flac no audio backend can read and drops a missing
flac with only a log line: here each such utterance is skipped and counted (``unreadable_audio``,
``missing_audio``) and the rest are written.
Output splits are those subset names, plus ``train``: the union of every ``train-*`` subset
present, which the experiment YAMLs train on. Transcripts keep LibriSpeech's upper case (WER
normalisation lower-cases both sides). The recipe does not read SPEAKERS.TXT, so gender is
read here (``F`` -> ``Female``, ``M`` -> ``Male``); utterances of speakers missing there still
get ``asr`` but are skipped (``no_gender``) for the gender tasks.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from lhotse import Recording, SupervisionSegment
from lhotse.audio import AudioLoadingError
from lhotse.recipes.librispeech import LIBRISPEECH, MINI_LIBRISPEECH, parse_utterance

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


def transcript_lines(part_dir: Path) -> list[str]:
    """Every ``<utterance id> <TRANSCRIPT>`` line of a subset's ``*.trans.txt`` files, in id order
    (the same across runs and filesystems)."""
    lines = []
    for trans in part_dir.rglob("*.trans.txt"):
        lines += [line.strip() for line in trans.read_text(encoding="utf-8").splitlines() if line.strip()]
    return sorted(lines)


def transcripts(part_dir: Path) -> dict[str, str]:
    """Utterance id -> transcript of a subset, from its transcript files alone (no audio read)."""
    return {utt: text[0] if text else "" for utt, *text in (line.split(maxsplit=1) for line in transcript_lines(part_dir))}


def utterances(part_dir: Path) -> Iterator[tuple[str, tuple[Recording, SupervisionSegment] | str]]:
    """``(utterance id, (recording, supervision))`` of a subset in utterance-id order, or
    ``(utterance id, reason)`` for one that cannot be used."""
    for line in transcript_lines(part_dir):
        utt, *text = line.split(maxsplit=1)
        if not text:
            yield utt, "empty_target"
            continue
        try:
            parsed = parse_utterance(part_dir, line, {})
        except AudioLoadingError:  # raised once every audio backend has failed on the flac
            yield utt, "unreadable_audio"
            continue
        yield utt, parsed if parsed is not None else "missing_audio"


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
    for part in parts:
        for utt, parsed in utterances(root / part):
            for split in outputs[part]:
                if isinstance(parsed, str):
                    writer.skip(split, utt, parsed)
                else:
                    _write_utterance(writer, split, *parsed, genders.get(parsed[1].speaker))


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
