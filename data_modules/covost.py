"""CoVoST 2 English -> Chinese: speech translation (s2tt).

Published layout: Common Voice (English) clips plus the CoVoST 2 tables::

    clips/{path}                               (Common Voice mp3; or en/clips/)
    covost_v2.en_zh-CN.{train,dev,test}.tsv    path<TAB>sentence<TAB>translation<TAB>client_id
    (or the single covost_v2.en_zh-CN.tsv with a ``split`` column, as released)

Clips are referenced as they are: Common Voice ships mp3, which libsndfile reads only
from version 1.1 on (otherwise the loader needs torchaudio/ffmpeg); durations of clips
whose header cannot be read are left out. ``meta.sentence`` keeps the English transcript.
"""
from __future__ import annotations

import csv
import sys
from collections.abc import Iterator
from pathlib import Path

from .prepare import ManifestWriter, layout_error

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


def prepare_corpus(root: Path, writer: ManifestWriter, *, clips_dir: str | None = None) -> None:
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

    mp3 = False
    for split, row in rows():
        rel = (row.get("path") or "").strip()
        sid = f"covost_{Path(rel).stem}"
        audio = clips / rel
        if not rel or not audio.is_file():
            writer.skip(split, sid, "missing_audio")
            continue
        mp3 = mp3 or audio.suffix.lower() == ".mp3"
        meta = {"sentence": (row.get("sentence") or "").strip(), "client_id": row.get("client_id") or ""}
        writer.add(split, "s2tt", sid, str(audio), row.get("translation") or "", writer.duration(audio), meta)
    if mp3:
        writer.note("covost: audio is Common Voice mp3, referenced as is (decoding needs libsndfile>=1.1 "
                    "or torchaudio with ffmpeg)")
