"""Common Voice: out-of-domain gender (gr), plus asr from the same rows, via Lhotse's recipe.

Published layout (``cv-corpus-{version}/{lang}/``)::

    {train,dev,test,validated}.tsv   client_id path ... sentence ... age gender accents variant ...
    clips/{path}                     (mp3)

Recordings and supervisions come from ``lhotse.recipes.prepare_commonvoice``, which reads
``{lang}/clips/`` (so clips elsewhere are not supported) and needs the columns of the releases
since 15.0 (``client_id``, ``path``, ``sentence``, ``age``, ``gender``, ``accents``,
``variant``); a table without them stops with one line naming it. Rows whose clip is missing are
dropped by the recipe and counted here as ``missing_audio``.

``root`` may be the language directory or the ``cv-corpus-*`` directory (with ``lang``,
default ``en``). Output splits are the table names; by default ``train``, ``dev`` and
``test`` (``validated`` is their superset and is read only when asked for with
``--splits validated``). Gender: ``male``/``female`` and the newer releases'
``male_masculine``/``female_feminine``; other answers count as ``other_gender``, empty
ones as ``no_gender`` (gr only; asr keeps the row). Clips are mp3, referenced as they are.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from lhotse.audio import AudioLoadingError
from lhotse.recipes import prepare_commonvoice

from .covost import read_tsv
from .prepare import CutWriter, layout_error

LAYOUT = ("Common Voice {lang}/{train,dev,test,validated}.tsv (client_id, path, sentence, age, gender, accents, "
          "variant) + {lang}/clips/")
DEFAULT_TABLES = ("train", "dev", "test")
TABLES = ("train", "dev", "test", "validated", "other", "invalidated")
COLUMNS = ("client_id", "path", "sentence", "age", "gender", "accents", "variant")  # what the recipe reads
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
    lang = root.name  # the recipe reads corpus_dir/{lang}/
    tables = [t for t in (TABLES if writer.splits else DEFAULT_TABLES)
              if writer.wanted(t) and (root / f"{t}.tsv").is_file()]
    for table in tables:
        with open(root / f"{table}.tsv", encoding="utf-8") as f:
            header = f.readline().rstrip("\r\n").split("\t")
        missing = [c for c in COLUMNS if c not in header]
        if missing:
            raise ValueError(f"{root / f'{table}.tsv'}: missing column(s) {', '.join(missing)}; "
                             f"Lhotse's Common Voice recipe reads {', '.join(COLUMNS)}")
    if not tables:
        return
    with tempfile.TemporaryDirectory() as recipe_out:  # the recipe insists on writing its own manifests
        try:
            manifests = prepare_commonvoice(root.parent, recipe_out, languages=[lang], splits=tables)[lang]
        except AudioLoadingError as err:
            raise ValueError(f"commonvoice: a clip under {root / 'clips'} could not be read: "
                             f"{str(err).splitlines()[0]}") from None
    mp3 = False
    for split in tables:
        recordings, supervisions = manifests[split]["recordings"], manifests[split]["supervisions"]
        kept = set()
        for supervision in sorted(supervisions, key=lambda s: s.id):
            kept.add(supervision.id)
            recording = recordings[supervision.recording_id]
            mp3 = mp3 or recording.sources[0].source.lower().endswith(".mp3")
            sid = f"cv_{lang}_{supervision.id}"
            raw_gender = (supervision.gender or "").strip().lower()
            gender = GENDER.get(raw_gender)
            common = {"speaker": supervision.speaker, "gender": gender, "language": supervision.language}
            writer.add(split, "asr", sid, recording, supervision.text or "", **common)
            if gender:
                writer.add(split, "gr", sid, recording, gender, **common)
            else:
                writer.skip(split, sid, "other_gender" if raw_gender else "no_gender", task="gr")
        for row in read_tsv(root / f"{split}.tsv"):  # what the recipe dropped: clips not found
            stem = Path((row.get("path") or "").strip()).stem
            if stem not in kept:
                writer.skip(split, f"cv_{lang}_{stem}", "missing_audio")
    if mp3:
        writer.note("commonvoice: clips are mp3, referenced as is (decoding needs libsndfile>=1.1 or "
                    "torchaudio with ffmpeg)")
