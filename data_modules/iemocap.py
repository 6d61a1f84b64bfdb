"""IEMOCAP: 4-class speech emotion recognition (ser).

Published layout (``IEMOCAP_full_release/``)::

    Session{1..5}/sentences/wav/{dialog}/{utterance}.wav
    Session{1..5}/dialog/EmoEvaluation/{dialog}.txt
        [6.2901 - 8.2357]<TAB>Ses01F_impro01_F000<TAB>neu<TAB>[2.5000, 2.5000, 2.5000]

The usual 4-class protocol: ``neu``, ``hap`` + ``exc`` (merged as happy), ``sad``, ``ang``;
every other consensus label (``fru``, ``sur``, ``fea``, ``dis``, ``oth``, ``xxx``) is
dropped and counted as ``dropped_label:<code>``. Labels are written with
``format_label("ser", code)`` so targets are the task's own strings. Sessions 1-4
are ``train``, the held-out session (5 unless ``test_session`` says otherwise) is ``test``.
The speaker's gender (the letter before the turn number, ``..._F000``) goes on the supervision.

Lhotse 1.33 has no IEMOCAP recipe (``lhotse.recipes`` was checked), hence this reader; the
clips are read with Lhotse's ``Recording.from_file``.
"""
from __future__ import annotations

import re
from pathlib import Path

from ahamask_lightning.tasks import format_label

from .prepare import CutWriter, layout_error

LAYOUT = ("IEMOCAP_full_release/Session{1..5}/sentences/wav/{dialog}/{utt}.wav and "
          "Session{n}/dialog/EmoEvaluation/{dialog}.txt")
KEPT = ("neu", "hap", "exc", "sad", "ang")
GENDER = {"F": "Female", "M": "Male"}
# "[start - end]<tab>utterance<tab>label<tab>[V, A, D]"; only these summary lines start with '['.
LINE = re.compile(r"^\[\s*([\d.]+)\s*-\s*([\d.]+)\s*\]\s+(\S+)\s+(\S+)")


def read_evaluation(path: Path) -> list[tuple[str, str, float, float]]:
    """``(utterance, label code, start, end)`` for each utterance of one dialog."""
    rows = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        m = LINE.match(line)
        if m:
            rows.append((m.group(3), m.group(4).lower(), float(m.group(1)), float(m.group(2))))
    return rows


def prepare_corpus(root: Path, writer: CutWriter, *, test_session: int = 5) -> None:
    if not (root / "Session1").is_dir() and (root / "IEMOCAP_full_release").is_dir():
        root = root / "IEMOCAP_full_release"
    sessions = sorted(p for p in root.glob("Session[0-9]*") if p.is_dir())
    if not sessions:
        raise layout_error("iemocap", root, LAYOUT, "no Session{n} directory")
    if not any(p.name == f"Session{test_session}" for p in sessions):
        writer.note(f"held-out Session{test_session} is absent: the test split is empty")
    for session in sessions:
        number = int(session.name[len("Session"):])
        split = "test" if number == test_session else "train"
        if not writer.wanted(split):
            continue
        evaluations = sorted((session / "dialog" / "EmoEvaluation").glob("*.txt"))
        if not evaluations:
            writer.skip(split, session.name, "missing_emo_evaluation")
        for evaluation in evaluations:
            if evaluation.name.startswith("."):  # macOS "._" resource forks ship in some copies
                continue
            dialog = evaluation.stem
            for utt, code, _start, _end in read_evaluation(evaluation):
                if code not in KEPT:
                    writer.skip(split, utt, f"dropped_label:{code}")
                    continue
                audio = session / "sentences" / "wav" / dialog / f"{utt}.wav"
                recording = writer.recording(split, utt, audio)
                if recording is None:
                    continue
                letter = utt.rsplit("_", 1)[-1][:1]  # the turn's actor: F or M of this session
                writer.add(split, "ser", utt, recording, format_label("ser", code),
                           speaker=f"Ses{number:02d}{letter}" if letter in GENDER else None,
                           gender=GENDER.get(letter), language="English")
