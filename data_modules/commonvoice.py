"""Common Voice: out-of-domain gender (gr), plus asr from the same rows.

Published layout (``cv-corpus-{version}/{lang}/``)::

    {train,dev,test,validated}.tsv   client_id path ... sentence ... gender ...
    clips/{path}                     (mp3)

Each table row is read here and its clip with Lhotse's ``Recording.from_file``. Lhotse's
``prepare_commonvoice`` was checked and not used: it stops the whole preparation at the first
clip no audio backend can read (an mp3 cut short), and it needs the columns of the releases
since 15.0 (``age``, ``accents``, ``variant``) although only ``client_id``, ``path``,
``sentence`` and ``gender`` are used. Here a missing clip counts as ``missing_audio``, an
unreadable one as ``unreadable_audio``, and the other rows are written; a table without the four
columns stops with one line naming it.

``root`` may be the language directory or the ``cv-corpus-*`` directory (with ``lang``,
default ``en``). Output splits are the table names; by default ``train``, ``dev`` and
``test`` (``validated`` is their superset and is read only when asked for with
``--splits validated``). Gender: ``male``/``female`` and the newer releases'
``male_masculine``/``female_feminine``; other answers count as ``other_gender``, empty
ones as ``no_gender`` (gr only; asr keeps the row). Clips are mp3, referenced as they are.
"""
from __future__ import annotations

from pathlib import Path

from .covost import read_tsv
from .prepare import CutWriter, layout_error

LAYOUT = "Common Voice {lang}/{train,dev,test,validated}.tsv (client_id, path, sentence, gender) + {lang}/clips/"
DEFAULT_TABLES = ("train", "dev", "test")
TABLES = ("train", "dev", "test", "validated", "other", "invalidated")
COLUMNS = ("client_id", "path", "sentence", "gender")  # what is read of each row
GENDER = {"male": "Male", "female": "Female", "male_masculine": "Male", "female_feminine": "Female"}


def _has_tables(path: Path) -> bool:
    return any((path / f"{t}.tsv").is_file() for t in TABLES)


def prepare_corpus(root: Path, writer: CutWriter, *, lang: str | None = None) -> None:
    if not _has_tables(root) and (root / (lang or "en")).is_dir():
        root = root / (lang or "en")
    if not _has_tables(root):
        raise layout_error("commonvoice", root, LAYOUT, "no train/dev/test/validated.tsv")
    if not (root / "clips").is_dir():
        raise layout_error("commonvoice", root, LAYOUT, f"no clips directory {root / 'clips'}")
    lang = root.name
    tables = [t for t in (TABLES if writer.splits else DEFAULT_TABLES)
              if writer.wanted(t) and (root / f"{t}.tsv").is_file()]
    for table in tables:
        with open(root / f"{table}.tsv", encoding="utf-8") as f:
            header = f.readline().rstrip("\r\n").split("\t")
        missing = [c for c in COLUMNS if c not in header]
        if missing:
            raise ValueError(f"{root / f'{table}.tsv'}: missing column(s) {', '.join(missing)}; "
                             f"expected {', '.join(COLUMNS)}")
    mp3 = False
    for split in tables:
        for row in read_tsv(root / f"{split}.tsv"):
            rel = (row.get("path") or "").strip()
            stem = Path(rel).stem
            sid = f"cv_{lang}_{stem}"
            audio = root / "clips" / rel
            recording = writer.recording(split, sid, audio if rel else "", recording_id=stem)
            if recording is None:
                continue
            mp3 = mp3 or audio.suffix.lower() == ".mp3"
            raw_gender = (row.get("gender") or "").strip().lower()
            gender = GENDER.get(raw_gender)
            common = {"speaker": (row.get("client_id") or "").strip() or None, "gender": gender, "language": lang}
            writer.add(split, "asr", sid, recording, row.get("sentence") or "", **common)
            if gender:
                writer.add(split, "gr", sid, recording, gender, **common)
            else:
                writer.skip(split, sid, "other_gender" if raw_gender else "no_gender", task="gr")
    if mp3:
        writer.note("commonvoice: clips are mp3, referenced as is (decoding needs libsndfile>=1.1 or "
                    "torchaudio with ffmpeg)")
