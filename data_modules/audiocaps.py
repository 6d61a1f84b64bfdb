"""AudioCaps: audio captioning (aac).

Published layout: the caption CSVs of the AudioCaps repository (``dataset/`` there) and
the clips you fetched from YouTube, one directory per split::

    {train,val,test}.csv          audiocap_id,youtube_id,start_time,caption
    {train,val,test}/{youtube_id}.wav   (or {audiocap_id}.wav, Y{youtube_id}.wav, .flac)

Train has one caption per clip and gets one line per caption. Val and test have five
per clip and get one line per clip: ``text`` is the first caption (CSV order) and
``meta.references`` holds all of them for the caption metrics. Clips that were never
downloaded (YouTube removals are common) are counted as ``missing_audio``. A file much longer
than 10 s is taken as the whole video: its 10 s from ``start_time`` are the clip.

Lhotse 1.33 has no AudioCaps recipe (``lhotse.recipes`` was checked), hence this reader; the
clips are read with Lhotse's ``Recording.from_file``.
"""
from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from pathlib import Path

from .prepare import CutWriter, layout_error

LAYOUT = "AudioCaps {train,val,test}.csv (audiocap_id,youtube_id,start_time,caption) + {split}/{youtube_id}.wav"
SPLITS = ("train", "val", "test")
EXTENSIONS = (".wav", ".flac")
CLIP_SECONDS = 10.0  # an AudioCaps clip: 10 s of the YouTube video from start_time


def write_captions(writer: CutWriter, split: str, clips: Iterable[tuple[str, Path | None, list[str], dict]],
                   per_caption: bool, clip_seconds: float | None = None) -> None:
    """Shared with Clotho. ``clips``: (clip id, audio or None when missing, captions, meta).

    ``clip_seconds`` (AudioCaps: 10): a file clearly longer than that is a whole downloaded video,
    so the clip is its ``clip_seconds`` from ``meta.start_time`` (skipped as ``start_time_past_end``
    when the file ends before them)."""
    for clip_id, audio, captions, meta in clips:
        captions = [c.strip() for c in captions if c and c.strip()]
        if audio is None:
            writer.skip(split, clip_id, "missing_audio")
            continue
        if not captions:
            writer.skip(split, clip_id, "no_caption")
            continue
        recording = writer.recording(split, clip_id, audio)
        if recording is None:
            continue
        span: dict = {}
        offset = meta.get("start_time")
        if clip_seconds and offset is not None and recording.duration > clip_seconds + 0.5:
            if offset + clip_seconds > recording.duration + 0.01:
                writer.skip(split, clip_id, "start_time_past_end")
                continue
            span = {"start": offset, "duration": clip_seconds}
            writer.note(f"files longer than {clip_seconds:g} s are taken as whole videos: their {clip_seconds:g} s "
                        "from start_time are used")
        meta = {**meta, "references": captions}  # every caption of the clip, for the caption metrics
        if per_caption:
            for i, caption in enumerate(captions):
                sid = clip_id if len(captions) == 1 else f"{clip_id}_{i}"
                writer.add(split, "aac", sid, recording, caption, meta=meta, **span)
        else:
            writer.add(split, "aac", clip_id, recording, captions[0], meta=meta, **span)


def _csv_path(root: Path, split: str) -> Path | None:
    for d in (root, root / "dataset", root / "csv"):
        if (d / f"{split}.csv").is_file():
            return d / f"{split}.csv"
    return None


def _audio(root: Path, split: str, names: tuple[str, ...]) -> Path | None:
    for d in (root / split, root / "audio" / split):
        for name in names:
            for ext in EXTENSIONS:
                if (d / f"{name}{ext}").is_file():
                    return d / f"{name}{ext}"
    return None


def prepare_corpus(root: Path, writer: CutWriter) -> None:
    found = {s: _csv_path(root, s) for s in SPLITS}
    if not any(found.values()):
        raise layout_error("audiocaps", root, LAYOUT, "no train/val/test.csv")
    for split, path in found.items():
        if path is None or not writer.wanted(split):
            continue
        clips: dict[str, dict] = {}  # youtube id -> captions, in CSV order (dicts keep insertion order)
        with open(path, newline="", encoding="utf-8-sig") as f:
            for row in csv.DictReader(f):
                ytid = (row.get("youtube_id") or "").strip()
                if not ytid:
                    writer.skip(split, row.get("audiocap_id") or "?", "malformed_row")
                    continue
                clip = clips.setdefault(ytid, {"ids": [], "captions": [], "start": row.get("start_time")})
                clip["ids"].append((row.get("audiocap_id") or "").strip())
                clip["captions"].append(row.get("caption") or "")
        write_captions(writer, split, _clip_rows(root, split, clips), per_caption=split == "train",
                       clip_seconds=CLIP_SECONDS)


def _clip_rows(root: Path, split: str, clips: dict[str, dict]) -> Iterator[tuple[str, Path | None, list[str], dict]]:
    for ytid, clip in clips.items():
        audio = _audio(root, split, (ytid, f"Y{ytid}", *clip["ids"]))
        meta = {"youtube_id": ytid, "start_time": _number(clip["start"]), "audiocap_ids": clip["ids"]}
        yield f"audiocaps_{ytid}", audio, clip["captions"], meta


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "") else None
    except ValueError:
        return None
