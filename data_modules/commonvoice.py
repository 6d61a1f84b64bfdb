"""Common Voice: out-of-domain gender (gr), plus asr from the same rows.

Published layout (``cv-corpus-{version}/{lang}/``)::

    {train,dev,test,validated}.tsv   client_id path sentence up_votes down_votes age gender accent ...
    clips/{path}                     (mp3)

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
from .prepare import ManifestWriter, layout_error

LAYOUT = "Common Voice {lang}/{train,dev,test,validated}.tsv (client_id, path, sentence, ..., gender) + {lang}/clips/"
DEFAULT_TABLES = ("train", "dev", "test")
TABLES = ("train", "dev", "test", "validated", "other", "invalidated")
GENDER = {"male": "Male", "female": "Female", "male_masculine": "Male", "female_feminine": "Female"}


def prepare_corpus(root: Path, writer: ManifestWriter, *, lang: str = "en", clips_dir: str | None = None) -> None:
    if not any((root / f"{t}.tsv").is_file() for t in TABLES) and (root / lang).is_dir():
        root = root / lang
    if not any((root / f"{t}.tsv").is_file() for t in TABLES):
        raise layout_error("commonvoice", root, LAYOUT, "no train/dev/test/validated.tsv")
    tables = [t for t in (TABLES if writer.splits else DEFAULT_TABLES)
              if writer.wanted(t) and (root / f"{t}.tsv").is_file()]
    clips = Path(clips_dir) if clips_dir else root / "clips"
    if not clips.is_dir():
        raise layout_error("commonvoice", root, LAYOUT, f"no clips directory {clips}")
    writer.add_audio_root(clips)  # --clips-dir may be outside root
    mp3 = False
    for split in tables:
        for row in read_tsv(root / f"{split}.tsv"):
            rel = (row.get("path") or "").strip()
            sid = f"cv_{lang}_{Path(rel).stem}"
            audio = clips / rel
            if not rel or not audio.is_file():
                writer.skip(split, sid, "missing_audio")
                continue
            mp3 = mp3 or audio.suffix.lower() == ".mp3"
            raw_gender = (row.get("gender") or "").strip().lower()
            gender = GENDER.get(raw_gender)
            meta = {"client_id": row.get("client_id") or "", "age": row.get("age") or "",
                    "accent": row.get("accent") or row.get("accents") or "", "lang": lang}
            if gender:
                meta["gender"] = gender
            duration = writer.duration(audio)
            writer.add(split, "asr", sid, str(audio), row.get("sentence") or "", duration, meta)
            if gender:
                writer.add(split, "gr", sid, str(audio), gender, duration, meta)
            else:
                writer.skip(split, sid, "other_gender" if raw_gender else "no_gender", task="gr")
    if mp3:
        writer.note("commonvoice: clips are mp3, referenced as is (decoding needs libsndfile>=1.1 or "
                    "torchaudio with ffmpeg)")
