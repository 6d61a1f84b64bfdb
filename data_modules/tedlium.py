"""TED-LIUM (release 3, also 2): out-of-domain gender (gr) and asr on talk segments, via Lhotse.

Published layout (``TEDLIUM_release-3/``, whose classic split lives under ``legacy/``;
``TEDLIUM_release2/`` has the same split directories at the top)::

    legacy/{train,dev,test}/stm/{talk}.stm     talk 1 speaker start end <o,f0,male> transcript
    legacy/{train,dev,test}/sph/{talk}.sph

Recordings and segments come from ``lhotse.recipes.prepare_tedlium`` (release 3, ``legacy/``)
or ``prepare_tedlium2`` (split directories at the top), which need one ``.sph`` per ``.stm`` in
a split (a split where they differ stops with one line naming it), drop the
``ignore_time_segment_in_scoring`` segments and keep the transcripts as published (lower case,
``<unk>`` tokens, split contractions such as ``it 's``). A sample is a cut of the whole-talk
recording: ``cut.start``/``cut.duration`` select the segment. Its id stays
``{talk}_{start in cs:07d}_{end in cs:07d}``.

Lhotse reads ``.sph`` only through the ``sph2pipe`` binary (``lhotse install-sph2pipe`` fetches
it). Without it on ``PATH``, the recipe runs under Lhotse's libsndfile backend, which reads
TED-LIUM's uncompressed NIST files, and a note says that loading the cuts then needs
``LHOTSE_AUDIO_BACKEND=LibsndfileBackend`` (or sph2pipe) too.

The recipes drop the stm label (``<o,f0,male>``), which holds the speaker's gender, so it is
read here from the same line the recipe numbered (segment id ``{talk}-{line index}``).
Segments without ``male``/``female`` there are skipped for gr (``no_gender``).
"""
from __future__ import annotations

import shutil
from contextlib import nullcontext
from pathlib import Path

from lhotse.audio import audio_backend
from lhotse.recipes import prepare_tedlium, prepare_tedlium2

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


def read_genders(stm: Path) -> dict[str, str]:
    """Segment id (``{talk}-{line index}``, as Lhotse's recipe numbers them) -> gender from the stm label."""
    genders = {}
    for index, line in enumerate(stm.read_text(encoding="utf-8", errors="replace").splitlines()):
        fields = line.split()
        if len(fields) > 5 and fields[5].startswith("<"):
            parts = fields[5].strip("<>").split(",")
            gender = GENDER.get(parts[2].strip().lower()) if len(parts) >= 3 else None
            if gender:
                genders[f"{fields[0]}-{index}"] = gender
    return genders


def prepare_corpus(root: Path, writer: CutWriter) -> None:
    base, splits = split_dirs(root)
    if not splits:
        raise layout_error("tedlium", root, LAYOUT, "no legacy/{split}/stm or {split}/stm")
    wanted = [s for s in splits if writer.wanted(s)]
    for split in wanted:
        stms = sorted((splits[split] / "stm").glob("*.stm"))
        sphs = sorted((splits[split] / "sph").glob("*.sph"))
        if [p.stem for p in stms] != [p.stem for p in sphs]:
            lacking = sorted({p.stem for p in stms} ^ {p.stem for p in sphs})
            raise ValueError(f"tedlium: {splits[split]} needs one sph/{{talk}}.sph per stm/{{talk}}.stm "
                             f"(Lhotse's recipe); unmatched: {', '.join(lacking[:5])}")
    if not wanted:
        return
    recipe = prepare_tedlium if base.name == "legacy" else prepare_tedlium2
    sph2pipe = shutil.which("sph2pipe") is not None
    if not sph2pipe:
        writer.note("tedlium: sph2pipe is not on PATH, so the .sph headers were read with libsndfile; "
                    "load these cuts with LHOTSE_AUDIO_BACKEND=LibsndfileBackend or after "
                    "`lhotse install-sph2pipe`")
    with nullcontext() if sph2pipe else audio_backend("LibsndfileBackend"):
        corpus = recipe(base.parent if base.name == "legacy" else base, dataset_parts=wanted)
    for split in wanted:
        genders: dict[str, str] = {}
        for stm in sorted((splits[split] / "stm").glob("*.stm")):
            genders.update(read_genders(stm))
        recordings, supervisions = corpus[split]["recordings"], corpus[split]["supervisions"]
        for segment in sorted(supervisions, key=lambda s: (s.recording_id, s.start)):
            talk, start, end = segment.recording_id, segment.start, segment.end
            sid = f"{talk}_{round(start * 100):07d}_{round(end * 100):07d}"
            gender = genders.get(segment.id)
            recording = recordings[talk]
            common = {"start": start, "duration": segment.duration, "speaker": segment.speaker,
                      "gender": gender, "language": segment.language}
            writer.add(split, "asr", sid, recording, segment.text or "", **common)
            if gender is None:
                writer.skip(split, sid, "no_gender", task="gr")
            else:
                writer.add(split, "gr", sid, recording, gender, **common)
