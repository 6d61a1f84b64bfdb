"""Corpus preparers, part 3: VoxCeleb1 gender and speaker-verification trials, and the training
pairs drawn from dev speakers only."""
from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from corpus_helpers import SR, cut_targets, read_cuts, write_audio, write_text
from lhotse import MonoCut, Recording

from data_modules import voxceleb
from data_modules.prepare import add_arguments, prepare, run


def test_voxceleb(tmp_path):
    root = tmp_path / "VoxCeleb1"
    seconds = {"id10270/x6uYqmx31kE/00001.wav": 0.1, "id10270/8jEAjG6SegY/00008.wav": 0.25,
               "id10300/ZnPRfzsm4m0/00002.wav": 0.3, "id10001/1zcIwhmdeo4/00001.wav": 0.15}
    for rel, s in seconds.items():
        write_audio(root / "wav" / rel, s)
    trials = [("1", "id10270/x6uYqmx31kE/00001.wav", "id10270/8jEAjG6SegY/00008.wav"),
              ("0", "id10270/x6uYqmx31kE/00001.wav", "id10300/ZnPRfzsm4m0/00002.wav"),
              ("0", "id10270/x6uYqmx31kE/00001.wav", "id10309/missing/00001.wav")]
    write_text(root / "veri_test2.txt", "".join(" ".join(t) + "\n" for t in trials))
    write_text(root / "veri_test.txt", "1 id10300/ZnPRfzsm4m0/00002.wav id10300/ZnPRfzsm4m0/00002.wav\n")
    meta = {"id10001": ("m", "dev"), "id10270": ("m", "test"), "id10300": ("f", "test")}
    write_text(root / "vox1_meta.csv", "VoxCeleb1 ID\tVGGFace1 ID\tGender\tNationality\tSet\n"
          + "".join(f"{spk}\tName\t{g}\tUSA\t{s} \n" for spk, (g, s) in meta.items()))
    out = tmp_path / "out"
    summary = prepare("voxceleb", root, out)
    assert summary["skipped"] == {"missing_audio": 1}
    present = [(n, t) for n, t in enumerate(trials, start=1) if t[1] in seconds and t[2] in seconds]
    asv = read_cuts(out, "test", "asv", [root])
    assert cut_targets(asv) == {f"veri_test2_{n:06d}": "Yes" if t[0] == "1" else "No" for n, t in present}
    for n, (_, enrol, test) in present:
        cut = asv[f"veri_test2_{n:06d}"]
        assert cut.duration == pytest.approx(seconds[enrol])
        assert isinstance(cut.custom["audio_b"], Recording)
        assert cut.custom["audio_b"].sources[0].source == str(root / "wav" / test)
        # the whole second clip, although it is longer than the first
        assert cut.load_audio_b().shape == (1, round(seconds[test] * SR))
    clip_of = {rel[:-len(".wav")].replace("/", "_"): rel for rel in seconds}  # gr sample id -> clip
    for split in ("dev", "test"):
        gr = read_cuts(out, split, "gr", [root])
        # every clip of a speaker whose Set is this split, with the metadata's gender
        assert cut_targets(gr) == {sid: {"m": "Male", "f": "Female"}[meta[rel.split("/")[0]][0]]
                                for sid, rel in clip_of.items() if meta[rel.split("/")[0]][1] == split}
        for sid, cut in gr.items():
            assert cut.duration == pytest.approx(seconds[clip_of[sid]])
            assert cut.supervisions[0].speaker == clip_of[sid].split("/")[0]
    assert summary["counts"] == {"dev": {"gr": 1}, "test": {"asv": 2, "gr": 3}}
    original = prepare("voxceleb", root, tmp_path / "out2", trials="veri_test.txt", splits=["test"])
    assert cut_targets(read_cuts(tmp_path / "out2", "test", "asv", [root])) == {"veri_test_000001": "Yes"}
    assert original["counts"]["test"]["asv"] == 1


def _pair_speakers(cut: MonoCut) -> tuple[str, str]:
    """The speakers of a pair's two clips, read from their paths (wav/{speaker}/{youtube}/{n}.wav)."""
    paths = (cut.recording.sources[0].source, cut.custom["audio_b"].sources[0].source)
    return Path(paths[0]).parts[-3], Path(paths[1]).parts[-3]


def _pairs(out: Path, root: Path) -> list[tuple[str, str, str, str]]:
    """(id, clip A, clip B, target) of every training pair, audio of both clips loaded and checked."""
    pairs = []
    for cut in read_cuts(out, "train", "asv", [root]).values():
        other = cut.custom["audio_b"]
        assert isinstance(other, Recording) and cut.custom["audio_b_unaligned"] is True
        assert cut.load_audio_b().shape == (1, other.num_samples)  # the whole clip B, whatever A's length
        pairs.append((cut.id, cut.recording.sources[0].source, other.sources[0].source, cut.supervisions[0].text))
    return pairs


def test_voxceleb_train_pairs(tmp_path, capsys):
    root = tmp_path / "VoxCeleb1"
    dev = {"id10001": 3, "id10002": 3, "id10003": 2, "id10004": 4}  # speaker -> clips
    for n, (speaker, clips) in enumerate(dev.items()):
        for i in range(clips):
            write_audio(root / "wav" / speaker / f"yt{i % 2}" / f"{i:05d}.wav", 0.1 + 0.05 * ((n + i) % 3))
    write_text(root / "wav" / "id10002" / "yt0" / "00099.wav", "not audio")  # unreadable: skipped, never paired
    test_clips = ["id10270/a/00001.wav", "id10270/b/00002.wav", "id10300/c/00001.wav"]
    for rel in test_clips:
        write_audio(root / "wav" / rel)
    write_audio(root / "wav" / "id10500" / "d" / "00001.wav")  # in no metadata row and no trial
    write_text(root / "veri_test2.txt", f"1 {test_clips[0]} {test_clips[1]}\n0 {test_clips[0]} {test_clips[2]}\n")
    # id10300 is marked dev, but a trial names it: it must stay out of training all the same
    meta = {**dict.fromkeys(dev, ("m", "dev")), "id10270": ("f", "test"), "id10300": ("f", "dev")}
    write_text(root / "vox1_meta.csv", "VoxCeleb1 ID\tVGGFace1 ID\tGender\tNationality\tSet\n"
          + "".join(f"{spk}\tName\t{g}\tUSA\t{s}\n" for spk, (g, s) in meta.items()))

    def check(out: Path, count: int, speakers: set[str]) -> list[tuple[str, str, str, str]]:
        pairs = _pairs(out, root)
        assert len(pairs) == count and sum(t == "Yes" for *_, t in pairs) == count // 2
        assert len({frozenset(p[1:3]) for p in pairs}) == count  # no pair twice
        for pair_id, a, b, target in pairs:
            spk_a, spk_b = Path(a).parts[-3], Path(b).parts[-3]
            assert a != b and (target == "Yes") == (spk_a == spk_b), pair_id
            assert {spk_a, spk_b} <= speakers, pair_id
            assert "00099" not in a + b
        return pairs

    out = tmp_path / "out"
    summary = prepare("voxceleb", root, out, train_pairs=10, pair_seed=3)
    unreadable = {"split": "train", "id": "id10002_yt0_00099", "reason": "unreadable_audio", "task": "asv"}
    assert summary["counts"]["train"] == {"asv": 10}
    assert all(item == unreadable for item in summary["skipped_items"] if item["split"] == "train")
    pairs = check(out, 10, set(dev))
    assert {s for p in pairs for s in (Path(p[1]).parts[-3], Path(p[2]).parts[-3])} == set(dev)
    # the same seed gives the same file; another seed other pairs
    prepare("voxceleb", root, tmp_path / "again", train_pairs=10, pair_seed=3)
    assert _pairs(tmp_path / "again", root) == pairs
    prepare("voxceleb", root, tmp_path / "seed4", train_pairs=10, pair_seed=4)
    assert _pairs(tmp_path / "seed4", root) != pairs
    # more pairs than the speakers give: both halves cut to the 3 + 3 + 1 + 6 distinct same-speaker pairs
    short = prepare("voxceleb", root, tmp_path / "short", train_pairs=100, pair_seed=0)
    check(tmp_path / "short", 26, set(dev))
    assert [item for item in short["skipped_items"] if item["split"] == "train"] == [unreadable]
    assert any("only 13 same- and 13 different-speaker training pairs" in note for note in short["notes"])
    # without vox1_meta.csv: every speaker folder that no trial names
    (root / "vox1_meta.csv").unlink()
    held_out = voxceleb.trial_speakers(root / "veri_test2.txt")
    assert held_out == {"id10270", "id10300"}
    assert voxceleb.train_speakers(voxceleb.wav_roots(root), {}, held_out) == [*dev, "id10500"]
    no_meta = prepare("voxceleb", root, tmp_path / "nometa", train_pairs=20, pair_seed=0)
    check(tmp_path / "nometa", 20, {*dev, "id10500"})
    assert no_meta["counts"] == {"test": {"asv": 2}, "train": {"asv": 20}}
    # the command line passes the count and the seed through
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["voxceleb", "--root", str(root), "--out", str(tmp_path / "cli"), "--splits", "train",
                              "--train-pairs", "6", "--pair-seed", "1"])
    assert run(args) == 0
    assert "train/asv: 6 samples" in capsys.readouterr().out
    check(tmp_path / "cli", 6, {*dev, "id10500"})
    with pytest.raises(ValueError, match="train_pairs must be 0 or more"):
        prepare("voxceleb", root, tmp_path / "bad", train_pairs=-2)
