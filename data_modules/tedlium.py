"""TED-LIUM (release 3, also 1/2): out-of-domain gender (gr) and asr on talk segments.

Published layout (``TEDLIUM_release-3/``; the classic split lives under ``legacy/``)::

    {train,dev,test}/stm/{talk}.stm     talk 1 speaker start end <o,f0,male> transcript
    {train,dev,test}/sph/{talk}.sph
    legacy/{train,dev,test}/...         (release 3; used when no top-level split exists)

Samples are segments of a whole-talk recording: ``audio`` is the talk's ``.sph`` and
``meta.start``/``meta.end`` (seconds) the segment; cutting it out is the loader's job.
Gender comes from the stm label's third field (``male``/``female``); segments without
one are skipped for gr (``no_gender``). ``ignore_time_segment_in_scoring`` segments are
not speech and are counted as ``ignored_segment``. Transcripts are kept as published
(lower case, ``<unk>`` tokens, split contractions such as ``it 's``).
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from .prepare import ManifestWriter, layout_error

LAYOUT = "TEDLIUM {train,dev,test}/stm/*.stm (talk 1 speaker start end <o,f0,male> text) + {split}/sph/*.sph"
SPLITS = ("train", "dev", "test")
GENDER = {"male": "Male", "female": "Female"}
IGNORE = "ignore_time_segment_in_scoring"


def split_dirs(root: Path) -> dict[str, Path]:
    for base in (root, root / "legacy"):
        found = {s: base / s for s in SPLITS if (base / s / "stm").is_dir()}
        if found:
            return found
    return {}


def read_stm(path: Path) -> Iterator[tuple[str, float, float, str | None, str]]:
    """``(talk, start, end, gender or None, transcript)`` per segment line."""
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip() or line.startswith(";;"):
            continue
        fields = line.split(None, 6)
        if len(fields) < 6:
            continue
        # The <...> label is optional in the stm format; without it field 6 starts the transcript.
        if fields[5].startswith("<"):
            label, text = fields[5], fields[6] if len(fields) > 6 else ""
        else:
            label, text = "", " ".join(fields[5:])
        parts = label.strip("<>").split(",")
        gender = GENDER.get(parts[2].strip().lower()) if len(parts) >= 3 else None
        try:
            start, end = float(fields[3]), float(fields[4])
        except ValueError:
            continue
        yield fields[0], start, end, gender, text.strip()


def prepare_corpus(root: Path, writer: ManifestWriter) -> None:
    splits = split_dirs(root)
    if not splits:
        raise layout_error("tedlium", root, LAYOUT, "no {train,dev,test}/stm or legacy/{split}/stm")
    for split, d in splits.items():
        if not writer.wanted(split):
            continue
        for stm in sorted((d / "stm").glob("*.stm")):
            sph = d / "sph" / f"{stm.stem}.sph"
            for talk, start, end, gender, text in read_stm(stm):
                sid = f"{talk}_{round(start * 100):07d}_{round(end * 100):07d}"
                if text == IGNORE:
                    writer.skip(split, sid, "ignored_segment")
                    continue
                if not sph.is_file():
                    writer.skip(split, sid, "missing_audio")
                    continue
                meta = {"talk": talk, "start": start, "end": end}
                if gender:
                    meta["gender"] = gender
                if end <= start:
                    writer.skip(split, sid, "empty_segment")
                    continue
                writer.add(split, "asr", sid, str(sph), text, end - start, meta)
                if gender is None:
                    writer.skip(split, sid, "no_gender", task="gr")
                else:
                    writer.add(split, "gr", sid, str(sph), gender, end - start, meta)
