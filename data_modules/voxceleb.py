"""VoxCeleb1: speaker-verification pairs (asv) and out-of-domain gender (gr).

Published layout (the dev and test zips unpack into one ``wav/`` tree)::

    wav/{speaker id}/{youtube id}/{nnnnn}.wav
    veri_test2.txt | veri_test.txt     1 id10270/x6uYqmx31kE/00001.wav id10270/8jEAjG6SegY/00008.wav
    vox1_meta.csv                      VoxCeleb1 ID<TAB>VGGFace1 ID<TAB>Gender<TAB>Nationality<TAB>Set

``asv``: one cut per trial, the enrolment clip as its recording and the test clip as
``custom["audio_b"]``; target ``Yes`` (label 1) or ``No`` (label 0), split ``test``. The
cleaned list ``veri_test2.txt`` is preferred over the original ``veri_test.txt``; ``trials``
names another (e.g. ``list_test_hard2.txt``). ``gr`` (only with ``vox1_meta.csv``): every
utterance of a speaker with gender ``m``/``f``, in the split named by the metadata's ``Set``
column (``dev`` or ``test``). Also accepted: ``vox1_dev_wav/wav`` and ``vox1_test_wav/wav``
as kept from the zips.

Lhotse's ``prepare_voxceleb`` (1.33) was checked and does not fit: on every call it downloads
the trial list from openslr.org into the working directory (so it fails offline and ignores the
``veri_test2.txt`` next to the audio), and it reads only ``wav/`` with every speaker listed in
``vox1_meta.csv``. The clips are read with Lhotse's ``Recording.from_file`` here instead.
"""
from __future__ import annotations

from pathlib import Path

from lhotse import Recording

from .prepare import CutWriter, layout_error, read_recording

LAYOUT = ("VoxCeleb1/wav/{id}/{youtube}/{nnnnn}.wav with veri_test2.txt or veri_test.txt "
          "(and optionally vox1_meta.csv)")
TRIAL_LISTS = ("veri_test2.txt", "veri_test.txt")
WAV_DIRS = ("wav", "vox1_test_wav/wav", "vox1_dev_wav/wav", "test/wav", "dev/wav")
GENDER = {"m": "Male", "f": "Female"}


def wav_roots(root: Path) -> list[Path]:
    return [root / d for d in WAV_DIRS if (root / d).is_dir()]


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


class Clips:
    """Trial-list paths (``id10270/x6uYqmx31kE/00001.wav``) -> Recordings, each clip read once."""

    def __init__(self, roots: list[Path]) -> None:
        self.roots = roots
        self._cache: dict[str, Recording | None] = {}  # each test utterance appears in ~10 trials

    def get(self, rel: str) -> Recording | None:
        if rel not in self._cache:
            path = next((r / rel for r in self.roots if (r / rel).is_file()), None)
            self._cache[rel] = read_recording(path, recording_id=_utterance_id(rel)) if path else None
        return self._cache[rel]


def _utterance_id(rel: str) -> str:
    # id10270/x6uYqmx31kE/00001.wav -> id10270_x6uYqmx31kE_00001
    return str(Path(rel).with_suffix("")).replace("/", "_")


def prepare_corpus(root: Path, writer: CutWriter, *, trials: str | None = None) -> None:
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
    clips = Clips(roots)
    if trial_path is not None:
        _trials(trial_path, clips, writer)
    else:
        writer.note("no trial list (veri_test2.txt / veri_test.txt): asv CutSets not written")
    if meta_path is not None:
        _gender(read_meta(meta_path), clips, writer)
    else:
        writer.note("vox1_meta.csv absent: gr CutSets not written")


def _trials(path: Path, clips: Clips, writer: CutWriter) -> None:
    split = "test"
    if not writer.wanted(split):
        return
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        sid = f"{path.stem}_{n:06d}"
        if len(fields) != 3 or fields[0] not in ("0", "1"):
            writer.skip(split, sid, "malformed_trial")
            continue
        enrol, test = clips.get(fields[1]), clips.get(fields[2])
        if enrol is None or test is None:
            writer.skip(split, sid, "missing_audio")
            continue
        writer.add(split, "asv", sid, enrol, "Yes" if fields[0] == "1" else "No", audio_b=test)


def _gender(speakers: dict[str, tuple[str, str]], clips: Clips, writer: CutWriter) -> None:
    for speaker, (gender, split) in sorted(speakers.items()):
        if not writer.wanted(split):
            continue
        for r in clips.roots:
            spk_dir = r / speaker
            if not spk_dir.is_dir():
                continue
            for wav in sorted(spk_dir.glob("*/*.wav")):
                rel = f"{speaker}/{wav.parent.name}/{wav.name}"
                recording = clips.get(rel)
                if recording is None:
                    writer.skip(split, _utterance_id(rel), "unreadable_audio", task="gr")
                    continue
                writer.add(split, "gr", recording.id, recording, gender, speaker=speaker, gender=gender)
