"""Clotho (v1/v2): audio captioning (aac), written like AudioCaps.

Published layout (Zenodo: the caption CSVs and one ``clotho_audio_{split}.7z`` per split)::

    clotho_captions_{development,validation,evaluation}.csv   file_name,caption_1,...,caption_5
    {development,validation,evaluation}/{file_name}

Output splits use the project's names: development -> ``train`` (one line per caption),
validation -> ``val`` and evaluation -> ``test`` (one line per clip, ``text`` = caption_1,
``meta.references`` = all five). The Clotho split name is kept in ``meta.clotho_split``.

Lhotse 1.33 has no Clotho recipe (``lhotse.recipes`` was checked), hence this reader.
"""
from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

from .audiocaps import write_captions
from .prepare import CutWriter, layout_error

LAYOUT = ("Clotho clotho_captions_{development,validation,evaluation}.csv (file_name, caption_1..caption_5) "
          "+ {development,validation,evaluation}/{file_name}")
SPLITS = {"development": "train", "validation": "val", "evaluation": "test"}


def _find(root: Path, *candidates: str) -> Path | None:
    for c in candidates:
        if (root / c).exists():
            return root / c
    return None


def prepare_corpus(root: Path, writer: CutWriter) -> None:
    tables = {name: _find(root, f"clotho_captions_{name}.csv", f"clotho_csv_files/clotho_captions_{name}.csv")
              for name in SPLITS}
    if not any(tables.values()):
        raise layout_error("clotho", root, LAYOUT, "no clotho_captions_*.csv")
    for name, table in tables.items():
        split = SPLITS[name]
        if table is None or not writer.wanted(split):
            continue
        audio_dir = _find(root, name, f"clotho_audio_{name}", f"clotho_audio_files/{name}", f"audio/{name}")
        if audio_dir is None:
            writer.note(f"Clotho audio directory {name}/ not found: every {split} clip counted missing")
        with open(table, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
        write_captions(writer, split, _clips(rows, audio_dir, name), per_caption=split == "train")


def _clips(rows: list[dict], audio_dir: Path | None, name: str) -> Iterator[tuple[str, Path | None, list[str], dict]]:
    for row in rows:
        file_name = (row.get("file_name") or "").strip()
        captions = [row[k] for k in sorted(row, key=_caption_index) if k and k.startswith("caption")]
        audio = audio_dir / file_name if audio_dir is not None and file_name else None
        if audio is not None and not audio.is_file():
            audio = None
        yield f"clotho_{Path(file_name).stem}", audio, captions, {"file_name": file_name, "clotho_split": name}


def _caption_index(key: str | None) -> int:
    # caption_1 .. caption_5 in numeric order, whatever order the CSV lists them in.
    tail = (key or "").rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else 0
