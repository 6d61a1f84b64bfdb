"""Libri2Mix: overlapped speech recognition (osr) on the clean two-speaker mixtures.

Published layout (as written by the LibriMix generation scripts)::

    Libri2Mix/wav16k/{min,max}/{train-100,train-360,dev,test}/mix_clean/{mixture_ID}.wav
    Libri2Mix/wav16k/{min,max}/metadata/mixture_{split}_mix_clean.csv
        mixture_ID,mixture_path,source_1_path,source_2_path,length

A mixture ID joins the two LibriSpeech utterance ids (``4077-13754-0001_5142-36377-0020``),
source 1 first. The target is the osr format ``"transcript 1|transcript 2"`` with the
transcripts read from LibriSpeech's ``*.trans.txt`` files
(``librispeech_root``; by default a ``LibriSpeech/`` next to ``Libri2Mix/``, which is where
the generation scripts put it). The metadata's absolute paths point at the machine that
generated the mixtures, so the mixture is located from its ID first and ``mixture_path`` is
only a fallback.

Lhotse's own ``prepare_librimix`` (1.33) was checked and does not fit: it does not read the
generated mixtures above but re-mixes LibriSpeech with WHAM! noise on the fly from the LibriMix
metadata, needs WHAM! and LibriSpeech CutSets prepared beforehand, supports only 16 kHz ``max``
mixtures and returns MixedCuts, not one clip per sample.
"""
from __future__ import annotations

import csv
from pathlib import Path

from ahamask_lightning.tasks.parsing import BAR

from .librispeech import find_root, subsets, transcripts
from .prepare import CutWriter, layout_error

LAYOUT = ("Libri2Mix/wav16k/{min,max}/{train-100,dev,test}/mix_clean/*.wav + "
          "Libri2Mix/wav16k/{min,max}/metadata/mixture_{split}_mix_clean.csv")
# The LibriSpeech subset each Libri2Mix split draws from (read first for transcripts).
SOURCE_SUBSET = {"train-100": "train-clean-100", "train-360": "train-clean-360", "dev": "dev-clean",
                 "test": "test-clean"}


class Transcripts:
    """Utterance id -> LibriSpeech transcript, one subset at a time, from its transcript files.

    A mixture's sources come from the subset :data:`SOURCE_SUBSET` names; any other subset
    present is read only when a source is not found there.
    """

    def __init__(self, root: Path) -> None:
        self.root = find_root(root)
        self.subsets = subsets(self.root)
        self._loaded: set[str] = set()
        self._texts: dict[str, str] = {}

    def _load(self, parts: list[str]) -> None:
        parts = [p for p in parts if p in self.subsets and p not in self._loaded]
        if parts:
            for part in parts:
                self._texts.update(transcripts(self.root / part))
            self._loaded.update(parts)

    def get(self, utt: str, prefer: str | None = None) -> str | None:
        if prefer is not None:
            self._load([prefer])
        if utt not in self._texts:
            self._load(self.subsets)
        return self._texts.get(utt)


def _librispeech(root: Path, option: str | None) -> Path:
    if option is not None:
        if not Path(option).is_dir():
            raise FileNotFoundError(f"libri2mix: --librispeech-root {option} is not a directory "
                                    "(expected LibriSpeech/{subset}/{speaker}/{chapter}/*.trans.txt)")
        return Path(option).absolute()
    tried = [root / "LibriSpeech", root.parent / "LibriSpeech", root.parent.parent / "LibriSpeech"]
    for candidate in tried:
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("libri2mix needs LibriSpeech transcripts: pass --librispeech-root "
                            f"(tried {', '.join(str(t) for t in tried)})")


def prepare_corpus(root: Path, writer: CutWriter, *, librispeech_root: str | None = None,
                   mix_mode: str = "min", sample_rate: str = "16k") -> None:
    if (root / "Libri2Mix").is_dir():
        root = root / "Libri2Mix"
    base = root / f"wav{sample_rate}" / mix_mode
    tables = sorted((base / "metadata").glob("mixture_*_mix_clean.csv")) if base.is_dir() else []
    if not tables:
        raise layout_error("libri2mix", root, LAYOUT, f"no wav{sample_rate}/{mix_mode}/metadata/"
                           "mixture_*_mix_clean.csv")
    transcripts = Transcripts(_librispeech(root, librispeech_root))
    for table in tables:
        split = table.name[len("mixture_"):-len("_mix_clean.csv")]
        if not writer.wanted(split):
            continue
        with open(table, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        for row in rows:
            mix_id = (row.get("mixture_ID") or "").strip()
            sources = mix_id.split("_")
            if len(sources) != 2:
                writer.skip(split, mix_id or "?", "malformed_mixture_id")
                continue
            audio = base / split / "mix_clean" / f"{mix_id}.wav"
            if not audio.is_file():
                audio = Path(row.get("mixture_path") or "")
            recording = writer.recording(split, mix_id, audio)
            if recording is None:
                continue
            texts = [transcripts.get(u, prefer=SOURCE_SUBSET.get(split)) for u in sources]
            if any(not t for t in texts):
                writer.skip(split, mix_id, "missing_transcript")
                continue
            writer.add(split, "osr", mix_id, recording, BAR.join(texts), language="English")
