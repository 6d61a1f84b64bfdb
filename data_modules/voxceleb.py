"""VoxCeleb1: speaker-verification pairs (asv) and out-of-domain gender (gr).

Published layout (the dev and test zips unpack into one ``wav/`` tree)::

    wav/{speaker id}/{youtube id}/{nnnnn}.wav
    veri_test2.txt | veri_test.txt     1 id10270/x6uYqmx31kE/00001.wav id10270/8jEAjG6SegY/00008.wav
    vox1_meta.csv                      VoxCeleb1 ID<TAB>VGGFace1 ID<TAB>Gender<TAB>Nationality<TAB>Set

``asv``: one sample per trial, ``audio`` = [enrolment, test], target ``Yes`` (label 1)
or ``No`` (label 0), split ``test``. The cleaned list ``veri_test2.txt`` is preferred
over the original ``veri_test.txt``; ``trials`` names another (e.g. ``list_test_hard2.txt``).
``gr`` (only with ``vox1_meta.csv``): every utterance of a speaker with gender ``m``/``f``,
in the split named by the metadata's ``Set`` column (``dev`` or ``test``).
Also accepted: ``vox1_dev_wav/wav`` and ``vox1_test_wav/wav`` as kept from the zips.
"""
from __future__ import annotations

from pathlib import Path

from .prepare import ManifestWriter, layout_error

LAYOUT = ("VoxCeleb1/wav/{id}/{youtube}/{nnnnn}.wav with veri_test2.txt or veri_test.txt "
          "(and optionally vox1_meta.csv)")
TRIAL_LISTS = ("veri_test2.txt", "veri_test.txt")
WAV_DIRS = ("wav", "vox1_test_wav/wav", "vox1_dev_wav/wav", "test/wav", "dev/wav")
GENDER = {"m": "Male", "f": "Female"}


def wav_roots(root: Path) -> list[Path]:
    return [root / d for d in WAV_DIRS if (root / d).is_dir()]


def _find(roots: list[Path], rel: str) -> Path | None:
    for r in roots:
        if (r / rel).is_file():
            return r / rel
    return None


def _first_file(root: Path, names: tuple[str, ...]) -> Path | None:
    for name in names:
        for candidate in (root / name, root / "meta" / name):
            if candidate.is_file():
                return candidate
    return None


def read_meta(path: Path) -> dict[str, tuple[str, str]]:
    """Speaker id -> (``Male``/``Female``, set) from ``vox1_meta.csv`` (tab-separated, one header row)."""
    speakers = {}
    for i, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines()):
        fields = [f.strip() for f in line.split("\t")]
        if i == 0 and fields and fields[0].lower().startswith("voxceleb"):
            continue
        if len(fields) >= 5 and fields[2].lower() in GENDER:
            speakers[fields[0]] = (GENDER[fields[2].lower()], fields[4].lower() or "test")
    return speakers


def prepare_corpus(root: Path, writer: ManifestWriter, *, trials: str | None = None) -> None:
    roots = wav_roots(root)
    if not roots:
        raise layout_error("voxceleb", root, LAYOUT, "no wav/ directory")
    trial_path = None
    if trials is not None:
        trial_path = Path(trials) if Path(trials).is_absolute() else _first_file(root, (trials,))
        if trial_path is None or not trial_path.is_file():
            raise layout_error("voxceleb", root, LAYOUT, f"trial list {trials} missing")
    else:
        trial_path = _first_file(root, TRIAL_LISTS)
    meta_path = _first_file(root, ("vox1_meta.csv",))
    if trial_path is None and meta_path is None:
        raise layout_error("voxceleb", root, LAYOUT, "neither a trial list nor vox1_meta.csv")
    if trial_path is not None:
        _trials(trial_path, roots, writer)
    else:
        writer.note("no trial list (veri_test2.txt / veri_test.txt): asv manifests not written")
    if meta_path is not None:
        _gender(read_meta(meta_path), roots, writer)
    else:
        writer.note("vox1_meta.csv absent: gr manifests not written")


def _trials(path: Path, roots: list[Path], writer: ManifestWriter) -> None:
    split = "test"
    if not writer.wanted(split):
        return
    durations: dict[Path, float | None] = {}  # each test utterance appears in ~10 trials
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        sid = f"{path.stem}_{n:06d}"
        if len(fields) != 3 or fields[0] not in ("0", "1"):
            writer.skip(split, sid, "malformed_trial")
            continue
        a, b = _find(roots, fields[1]), _find(roots, fields[2])
        if a is None or b is None:
            writer.skip(split, sid, "missing_audio")
            continue
        for p in (a, b):
            if p not in durations:
                durations[p] = writer.duration(p)
        da, db = durations[a], durations[b]
        meta = {"enroll": fields[1], "test": fields[2], "trial_list": path.name,
                "same_speaker": fields[0] == "1"}
        writer.add(split, "asv", sid, [str(a), str(b)], "Yes" if fields[0] == "1" else "No",
                   da + db if da and db else None, meta)


def _gender(speakers: dict[str, tuple[str, str]], roots: list[Path], writer: ManifestWriter) -> None:
    for speaker, (gender, split) in sorted(speakers.items()):
        if not writer.wanted(split):
            continue
        for r in roots:
            spk_dir = r / speaker
            if not spk_dir.is_dir():
                continue
            for wav in sorted(spk_dir.glob("*/*.wav")):
                rel = f"{speaker}/{wav.parent.name}/{wav.stem}"
                writer.add(split, "gr", rel.replace("/", "_"), str(wav), gender, writer.duration(wav),
                           {"speaker": speaker, "video": wav.parent.name, "gender": gender})
