"""TED-LIUM (release 3, also 2): out-of-domain gender (gr) and asr on talk segments.

Published layout (``TEDLIUM_release-3/``, whose classic split lives under ``legacy/``;
``TEDLIUM_release2/`` has the same split directories at the top)::

    legacy/{train,dev,test}/stm/{talk}.stm     talk 1 speaker start end <o,f0,male> transcript
    legacy/{train,dev,test}/sph/{talk}.sph

Each stm line is read as Lhotse's ``prepare_tedlium``/``prepare_tedlium2`` read it
(``ignore_time_segment_in_scoring`` lines dropped, ``{NOISE}`` written ``[NOISE]``, transcripts otherwise as published: lower case, ``<unk>`` tokens, split contractions
such as ``it 's``), and each talk's ``.sph`` becomes a Lhotse ``Recording``. The recipes
themselves are not called: they read every ``.sph`` header of a split first and stop the whole
preparation at the first unreadable one (and at a split whose ``.sph`` and ``.stm`` counts
differ), and their stm parser is private. Here a talk whose ``.sph`` is missing or unreadable
is skipped and each of its segments counted (``missing_audio``/``unreadable_audio``). A sample is a
cut of the whole-talk recording: ``cut.start``/``cut.duration`` select the segment. Its id is
``{talk}_{start in cs:07d}_{end in cs:07d}``.

Lhotse reads ``.sph`` only through the ``sph2pipe`` binary (``lhotse install-sph2pipe`` fetches
it). Without it on ``PATH``, the headers are read with Lhotse's libsndfile backend, which reads
TED-LIUM's uncompressed NIST files, and a note says that loading the cuts then needs
``LHOTSE_AUDIO_BACKEND=LibsndfileBackend`` (or sph2pipe) too.

The recipes drop the stm label (``<o,f0,male>``), which holds the speaker's gender; it is read
here from the same line. Segments without ``male``/``female`` there are skipped for gr
(``no_gender``).
"""
from __future__ import annotations

import shutil
from contextlib import nullcontext
from pathlib import Path

from lhotse.audio import audio_backend

from .prepare import CutWriter, layout_error

LAYOUT = "TEDLIUM legacy/{train,dev,test}/stm/*.stm (talk 1 speaker start end <o,f0,male> text) + .../sph/*.sph"
SPLITS = ("train", "dev", "test")
GENDER = {"male": "Male", "female": "Female"}


def split_dirs(root: Path) -> tuple[Path, dict[str, Path]]:
    """The folder holding the split directories (``legacy/`` or ``root``) and the splits present."""
    for base in (root / "legacy", root):
        found = {s: base / s for s in SPLITS if (base / s / "stm").is_dir()}
        if found:
            return base, found
    return root, {}


def read_segments(stm: Path) -> list[dict]:
    """The scored segments of one talk's stm file, in time order (see the module docstring)."""
    segments = []
    for line in stm.read_text(encoding="utf-8", errors="replace").splitlines():
        fields = line.split()
        if len(fields) < 6:
            continue
        text = " ".join(fields[6:]).replace("{NOISE}", "[NOISE]")
        if text == "ignore_time_segment_in_scoring":
            continue
        label = fields[5].strip("<>").split(",") if fields[5].startswith("<") else []
        start, end = float(fields[3]), float(fields[4])
        segments.append({"id": f"{fields[0]}_{round(start * 100):07d}_{round(end * 100):07d}", "talk": fields[0],
                         "start": start, "duration": round(end - start, 8), "text": text,
                         "gender": GENDER.get(label[2].strip().lower()) if len(label) >= 3 else None})
    return sorted(segments, key=lambda seg: seg["start"])


def prepare_corpus(root: Path, writer: CutWriter) -> None:
    _, splits = split_dirs(root)
    if not splits:
        raise layout_error("tedlium", root, LAYOUT, "no legacy/{split}/stm or {split}/stm")
    sph2pipe = shutil.which("sph2pipe") is not None
    if not sph2pipe:
        writer.note("tedlium: sph2pipe is not on PATH, so the .sph headers were read with libsndfile; "
                    "load these cuts with LHOTSE_AUDIO_BACKEND=LibsndfileBackend or after "
                    "`lhotse install-sph2pipe`")
    for split in (s for s in splits if writer.wanted(s)):
        for stm in sorted((splits[split] / "stm").glob("*.stm")):
            segments = read_segments(stm)
            with nullcontext() if sph2pipe else audio_backend("LibsndfileBackend"):
                recording = writer.recording(split, stm.stem, splits[split] / "sph" / f"{stm.stem}.sph",
                                             recording_id=stm.stem, samples=[seg["id"] for seg in segments])
            if recording is None:
                continue
            for seg in segments:
                common = {"start": seg["start"], "duration": seg["duration"], "speaker": seg["talk"],
                          "gender": seg["gender"], "language": "English"}
                writer.add(split, "asr", seg["id"], recording, seg["text"], **common)
                if seg["gender"] is None:
                    writer.skip(split, seg["id"], "no_gender", task="gr")
                else:
                    writer.add(split, "gr", seg["id"], recording, seg["gender"], **common)
