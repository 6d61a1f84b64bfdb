"""CoVoST 2 English -> Chinese: speech translation (s2tt).

Published layout: Common Voice (English) clips plus the CoVoST 2 tables::

    clips/{path}                               (Common Voice mp3; or en/clips/)
    covost_v2.en_zh-CN.{train,dev,test}.tsv    path<TAB>sentence<TAB>translation<TAB>client_id
    (or the single covost_v2.en_zh-CN.tsv with a ``split`` column, as released)

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

from .prepare import CutWriter, layout_error, read_recording

LAYOUT = "CoVoST2 covost_v2.en_zh-CN.{train,dev,test}.tsv (path, sentence, translation, client_id) + clips/*.mp3"
PAIR = "en_zh-CN"
SPLITS = ("train", "dev", "test")


def read_tsv(path: Path) -> Iterator[dict[str, str]]:
    """Rows of a Common Voice / CoVoST table. Quotes are literal text there, not CSV quoting."""
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    with open(path, newline="", encoding="utf-8") as f:
        yield from csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)


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
                    for row in read_tsv(p):
                        yield split, row
        else:  # the released single table: its ``split`` column also holds "train_covost" etc.
            for row in read_tsv(combined):
                split = (row.get("split") or "").strip()
                if split in SPLITS and writer.wanted(split):
                    yield split, row

    for split, row in rows():
        rel = (row.get("path") or "").strip()
        sid = f"covost_{Path(rel).stem}"
        audio = clips / rel
        if not rel or not audio.is_file():
            writer.skip(split, sid, "missing_audio")
            continue
        recording = read_recording(audio, recording_id=sid)
        if recording is None:
            writer.skip(split, sid, "unreadable_audio")
            continue
        meta = {"sentence": (row.get("sentence") or "").strip()}  # the English source, for reference
        writer.add(split, "s2tt", sid, recording, row.get("translation") or "", speaker=row.get("client_id") or None,
                   language="English", meta=meta)  # the spoken language; the target is Chinese
