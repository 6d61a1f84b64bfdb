"""VoxCeleb1: speaker-verification pairs (asv) and out-of-domain gender (gr).

Published layout (the dev and test zips unpack into one ``wav/`` tree)::

    wav/{speaker id}/{youtube id}/{nnnnn}.wav
    veri_test2.txt | veri_test.txt     1 id10270/x6uYqmx31kE/00001.wav id10270/8jEAjG6SegY/00008.wav
    vox1_meta.csv                      VoxCeleb1 ID<TAB>VGGFace1 ID<TAB>Gender<TAB>Nationality<TAB>Set

``asv``: one cut per trial, the enrolment clip as its recording and the test clip as
``custom["audio_b"]``; target ``Yes`` (label 1) or ``No`` (label 0), split ``test``. The
cleaned list ``veri_test2.txt`` is preferred over the original ``veri_test.txt``; ``trials``
names another (e.g. ``list_test_hard2.txt``).

``asv`` split ``train``: pairs drawn from the training speakers, in the same pair form as the
trials. The training speakers are those whose ``Set`` in ``vox1_meta.csv`` is ``dev`` or, without
that column, every speaker under ``wav/``; either way a speaker named in the trial list is never
used, so no test speaker is heard in training. ``train_pairs`` (default 40000, about the size of
the official trial list; 0 writes none; an odd count loses one) pairs are written, half
same-speaker (``Yes``: a speaker drawn uniformly, then two of its clips) and half different-speaker
(``No``: two speakers, one clip each), no pair twice, in an order shuffled by ``pair_seed``
(default 0): the same seed and tree give the same file. Clips that cannot be read are skipped
(``unreadable_audio``) and others drawn; if the speakers cannot give that many distinct pairs, both
halves are cut to the smaller one and a note says so.

``gr`` (only with ``vox1_meta.csv``): every utterance of a speaker with gender ``m``/``f``, in
the split named by the metadata's ``Set`` column (``dev`` or ``test``). Also accepted:
``vox1_dev_wav/wav`` and ``vox1_test_wav/wav`` as kept from the zips.

Lhotse's ``prepare_voxceleb`` (1.33) was checked and does not fit: on every call it downloads
the trial list from openslr.org into the working directory (so it fails offline and ignores the
``veri_test2.txt`` next to the audio), and it reads only ``wav/`` with every speaker listed in
``vox1_meta.csv``. The clips are read with Lhotse's ``Recording.from_file`` here instead.
"""
from __future__ import annotations

import random
from pathlib import Path

from lhotse import Recording

from .prepare import CutWriter, layout_error, read_recording

LAYOUT = ("VoxCeleb1/wav/{id}/{youtube}/{nnnnn}.wav with veri_test2.txt or veri_test.txt "
          "(and optionally vox1_meta.csv)")
TRIAL_LISTS = ("veri_test2.txt", "veri_test.txt")
WAV_DIRS = ("wav", "vox1_test_wav/wav", "vox1_dev_wav/wav", "test/wav", "dev/wav")
GENDER = {"m": "Male", "f": "Female"}
DEFAULT_TRAIN_PAIRS = 40_000
MAX_DRAWS_PER_PAIR = 20  # repeats and unreadable clips are redrawn; give up on a speaker pool this small


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


def prepare_corpus(root: Path, writer: CutWriter, *, trials: str | None = None,
                   train_pairs: int = DEFAULT_TRAIN_PAIRS, pair_seed: int = 0) -> None:
    if train_pairs < 0:
        raise ValueError(f"voxceleb: train_pairs must be 0 or more, got {train_pairs}")
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
        writer.note("no trial list (veri_test2.txt / veri_test.txt): test asv CutSet not written")
    meta = read_meta(meta_path) if meta_path is not None else {}
    if train_pairs and writer.wanted("train"):
        if meta or trial_path is not None:
            held_out = trial_speakers(trial_path) if trial_path is not None else set()
            TrainPairs(clips, train_speakers(roots, meta, held_out), writer).write(
                train_pairs // 2, random.Random(pair_seed))
        else:
            writer.note("neither a Set column in vox1_meta.csv nor a trial list to tell the test speakers: "
                        "train asv CutSet not written")
    if meta_path is not None:
        _gender(meta, clips, writer)
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


def trial_speakers(path: Path) -> set[str]:
    """Every speaker named in a trial list (both sides of every well-formed line)."""
    speakers = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        fields = line.split()
        if len(fields) == 3:
            speakers.update(rel.split("/", 1)[0] for rel in fields[1:])
    return speakers


def train_speakers(roots: list[Path], meta: dict[str, tuple[str, str]], held_out: set[str]) -> list[str]:
    """The ``dev`` speakers of ``vox1_meta.csv`` (or, without it, every speaker folder), minus ``held_out``."""
    if meta:
        candidates = {speaker for speaker, (_, split) in meta.items() if split == "dev"}
    else:
        candidates = {d.name for r in roots for d in r.iterdir() if d.is_dir()}
    return sorted(candidates - held_out)


class TrainPairs:
    """Balanced same / different speaker pairs of the training speakers' clips (see the module docstring)."""

    def __init__(self, clips: Clips, speakers: list[str], writer: CutWriter) -> None:
        self.clips = clips
        self.writer = writer
        # trial-list style paths ("id10001/1zcIwhmdeo4/00001.wav"), in file order, first root wins
        self.pool = {s: list(dict.fromkeys(f"{s}/{w.parent.name}/{w.name}" for r in clips.roots
                                           for w in sorted((r / s).glob("*/*.wav"))))
                     for s in speakers}
        self.pool = {s: rels for s, rels in self.pool.items() if rels}
        self._eligible: dict[bool, list[str]] = {}  # same_speaker -> speakers to draw from; reset on a pool change

    def write(self, half: int, rng: random.Random) -> None:
        same = self._draw(half, rng, same_speaker=True)
        different = self._draw(half, rng, same_speaker=False)
        n = min(len(same), len(different))
        if n < half:
            self.writer.note(f"only {n} same- and {n} different-speaker training pairs from {len(self.pool)} "
                             f"training speakers ({2 * half} asked for)")
        pairs = [(True, *p) for p in same[:n]] + [(False, *p) for p in different[:n]]
        rng.shuffle(pairs)
        for i, (is_same, enrol, test) in enumerate(pairs, start=1):
            self.writer.add("train", "asv", f"train_pair_{i:06d}", enrol, "Yes" if is_same else "No", audio_b=test)

    def _draw(self, count: int, rng: random.Random, *, same_speaker: bool) -> list[tuple[Recording, Recording]]:
        pairs: list[tuple[Recording, Recording]] = []
        seen: set[frozenset[str]] = set()
        for _ in range(MAX_DRAWS_PER_PAIR * count):
            if len(pairs) == count:
                break
            if same_speaker not in self._eligible:
                self._eligible[same_speaker] = [s for s, rels in self.pool.items() if len(rels) >= 1 + same_speaker]
            speakers = self._eligible[same_speaker]
            if len(speakers) < (1 if same_speaker else 2):
                break
            if same_speaker:
                a, b = rng.sample(self.pool[rng.choice(speakers)], 2)
            else:
                a, b = (rng.choice(self.pool[s]) for s in rng.sample(speakers, 2))
            key = frozenset((a, b))
            if key in seen:
                continue
            enrol, test = self._recording(a), self._recording(b)
            if enrol is not None and test is not None:
                seen.add(key)
                pairs.append((enrol, test))
        return pairs

    def _recording(self, rel: str) -> Recording | None:
        recording = self.clips.get(rel)
        if recording is None:  # drop it from the pool so it is not drawn again
            speaker = rel.split("/", 1)[0]
            self.pool[speaker].remove(rel)
            if not self.pool[speaker]:
                del self.pool[speaker]
            self._eligible.clear()
            self.writer.skip("train", _utterance_id(rel), "unreadable_audio", task="asv")
        return recording


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
