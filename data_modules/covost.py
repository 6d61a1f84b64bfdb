"""CoVoST 2 English -> Chinese: speech translation (s2tt).

Published layout: Common Voice (English) clips plus the CoVoST 2 tables::

    clips/{path}                               (Common Voice mp3; or en/clips/)
    covost_v2.en_zh-CN.{train,dev,test}.tsv    path<TAB>sentence<TAB>translation<TAB>client_id
    (or the single covost_v2.en_zh-CN.tsv with a ``split`` column, as released)

The per-split tables are what CoVoST's ``get_covost_splits.py`` writes; it reads and writes every
table with ``\`` as the escape character and no quoting, so ``\"`` in a file is a ``"`` of the
text. Its train split is the rows whose ``split`` is ``train`` or ``train_covost``, and it takes
``sentence`` and ``client_id`` from Common Voice's ``validated.tsv``: the released single table
carries only ``path``, ``translation`` and ``split``, so those two come from a ``validated.tsv``
beside the clips folder when there is one.

Clips are referenced as they are: Common Voice ships mp3, which libsndfile reads only
from version 1.1 on (Lhotse falls back to torchaudio/ffmpeg); a clip whose header no backend
can read is counted as ``unreadable_audio``. ``meta.sentence`` keeps the English transcript.

Lhotse 1.33 has no CoVoST recipe (``lhotse.recipes`` was checked), hence this reader; the
clips are read with Lhotse's ``Recording.from_file``.
"""
from __future__ import annotations

import csv
import sys
from collections.abc import Iterator
from pathlib import Path

from .prepare import CutWriter, layout_error

LAYOUT = "CoVoST2 covost_v2.en_zh-CN.{train,dev,test}.tsv (path, sentence, translation, client_id) + clips/*.mp3"
PAIR = "en_zh-CN"
SPLITS = ("train", "dev", "test")
# the released table's split names -> ours (get_covost_splits.py trains on both "train" kinds)
RELEASED_SPLITS = {"train": "train", "train_covost": "train", "dev": "dev", "test": "test"}


def read_tsv(path: Path, escapechar: str | None = None) -> Iterator[dict[str, str]]:
    """Rows of a Common Voice / CoVoST table. Quotes are literal text there, not CSV quoting;
    CoVoST's own tables escape with ``escapechar`` (``\\``), Common Voice's do not."""
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    with open(path, newline="", encoding="utf-8") as f:
        yield from csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE, escapechar=escapechar)


def read_covost_tsv(path: Path) -> Iterator[dict[str, str]]:
    return read_tsv(path, escapechar="\\")


def common_voice_rows(clips: Path) -> dict[str, dict[str, str]]:
    """path -> the Common Voice ``validated.tsv`` row beside ``clips`` (empty when there is none),
    read as ``get_covost_splits.py`` reads it: with CoVoST's escape character too."""
    validated = clips.parent / "validated.tsv"
    if not validated.is_file():
        return {}
    return {(row.get("path") or "").strip(): row for row in read_covost_tsv(validated)}


def find_clips(root: Path, clips_dir: str | None, lang: str = "en") -> Path | None:
    if clips_dir is not None:
        return Path(clips_dir) if Path(clips_dir).is_dir() else None
    for candidate in (root / "clips", root / lang / "clips"):
        if candidate.is_dir():
            return candidate
    return None


def prepare_corpus(root: Path, writer: CutWriter, *, clips_dir: str | None = None) -> None:
    per_split = {s: root / f"covost_v2.{PAIR}.{s}.tsv" for s in SPLITS}
    combined = root / f"covost_v2.{PAIR}.tsv"
    if not any(p.is_file() for p in per_split.values()) and not combined.is_file():
        raise layout_error("covost", root, LAYOUT, f"no covost_v2.{PAIR}*.tsv")
    clips = find_clips(root, clips_dir)
    if clips is None:
        raise layout_error("covost", root, LAYOUT, f"no clips directory ({clips_dir or 'clips/ or en/clips/'})")
    writer.add_audio_root(clips)  # --clips-dir may be outside root

    def rows() -> Iterator[tuple[str, dict[str, str]]]:
        if any(p.is_file() for p in per_split.values()):
            for split, p in per_split.items():
                if p.is_file() and writer.wanted(split):
                    for row in read_covost_tsv(p):
                        yield split, row
        else:  # the released single table: sentence and client_id come from Common Voice
            common_voice = common_voice_rows(clips)
            for row in read_covost_tsv(combined):
                split = RELEASED_SPLITS.get((row.get("split") or "").strip())
                if split is not None and writer.wanted(split):
                    source = common_voice.get((row.get("path") or "").strip(), {})
                    yield split, {"sentence": source.get("sentence", ""), "client_id": source.get("client_id", ""),
                                  **{k: v for k, v in row.items() if v}}

    for split, row in rows():
        rel = (row.get("path") or "").strip()
        sid = f"covost_{Path(rel).stem}"
        recording = writer.recording(split, sid, clips / rel if rel else "")
        if recording is None:
            continue
        meta = {"sentence": (row.get("sentence") or "").strip()}  # the English source, for reference
        writer.add(split, "s2tt", sid, recording, row.get("translation") or "", speaker=row.get("client_id") or None,
                   language="English", meta=meta)  # the spoken language; the target is Chinese
