"""Corpus prepare steps: tiny fake corpora in each release's published layout -> AHAMask CutSets.

Every fake tree keeps its own metadata (transcripts, labels, clip lengths); the expected targets
are computed from that metadata, the way the JSONL preparers defined them, and compared with
what the CutSets hold.
"""
from __future__ import annotations

import argparse
import json
import shutil
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from lhotse import CutSet, MonoCut, Recording
from lhotse.audio import audio_backend

from ahamask_lightning.tasks import composite_target, format_label, get_task
from ahamask_lightning.tasks.parsing import BAR
from data_modules import voxceleb
from data_modules.prepare import CORPORA, add_arguments, prepare, run

SR = 16000
CUSTOM_KEYS = {"task", "instruction", "meta", "audio_b", "audio_b_unaligned"}


def _audio(path: Path, seconds: float = 0.1, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    noise = np.random.default_rng(len(str(path))).normal(0, 0.1, round(SR * seconds)).astype("float32")
    sf.write(str(path), noise, SR, format=fmt)
    return path


def _text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _cuts(out: Path, split: str, task: str, roots: list[Path]) -> dict[str, MonoCut]:
    """The CutSet of ``split``/``task``, checked cut by cut against the AHAMask cut convention."""
    path = out / "manifests" / split / f"{task}.cuts.jsonl.gz"
    cuts = {}
    for cut in CutSet.from_file(path):
        assert isinstance(cut, MonoCut), cut
        assert cut.id not in cuts
        assert get_task(cut.custom["task"]).name == task and set(cut.custom) <= CUSTOM_KEYS, cut.custom
        assert "instruction" not in cut.custom  # the corpus preparers have never written one
        (supervision,) = cut.supervisions
        assert supervision.text and supervision.text == " ".join(supervision.text.split())
        assert supervision.start == 0 and supervision.duration == pytest.approx(cut.duration)
        source = Path(cut.recording.sources[0].source)
        assert source.is_absolute() and any(source.is_relative_to(r) for r in roots), source
        audio = cut.load_audio()
        assert audio.shape == (1, cut.num_samples) and cut.num_samples == round(cut.duration * SR)
        assert np.abs(audio).max() > 0.01  # the noise written, not silence or padding
        cuts[cut.id] = cut
    return cuts


def _targets(cuts: dict[str, MonoCut]) -> dict[str, str]:
    return {i: c.supervisions[0].text for i, c in cuts.items()}


def _librispeech(root: Path) -> dict[str, dict]:
    """Fake LibriSpeech; returns utterance id -> subset, speaker, transcript, seconds (None: no flac)."""
    _text(root / "SPEAKERS.TXT", ";ID  |SEX| SUBSET           |MINUTES| NAME\n"
          "19   | F | train-clean-100  | 25.19 | Kara Shallenberg\n"
          "26   | M | train-clean-100  | 25.08 | |CBW|Simon\n")
    chapters = {("dev-clean", "19", "198"): ["HELLO WORLD", "GOOD MORNING"],
                ("dev-clean", "26", "495"): ["A MAN SPOKE"],
                ("test-clean", "99", "100"): ["NOBODY KNOWS ME"],
                ("train-clean-100", "26", "496"): ["TRAIN ONE", "NO AUDIO HERE"]}
    utts = {}
    for (subset, spk, ch), texts in chapters.items():
        d = root / subset / spk / ch
        lines = []
        for i, text in enumerate(texts):
            utt = f"{spk}-{ch}-{i:04d}"
            lines.append(f"{utt} {text}")
            seconds = None if text == "NO AUDIO HERE" else 0.1 + 0.05 * len(utts)
            if seconds is not None:
                _audio(d / f"{utt}.flac", seconds, fmt="FLAC")
            utts[utt] = {"subset": subset, "speaker": spk, "text": text, "seconds": seconds}
        _text(d / f"{spk}-{ch}.trans.txt", "\n".join(lines) + "\n")
    return utts


LIBRISPEECH_GENDERS = {"19": "Female", "26": "Male"}


def _expected_librispeech(utts: dict[str, dict], subsets: set[str]) -> dict[str, dict[str, str]]:
    """Targets per task, as the JSONL preparer defined them: asr for every utterance with audio,
    gr and the composites for those whose speaker SPEAKERS.TXT names."""
    expected: dict[str, dict[str, str]] = {}
    for utt, u in utts.items():
        if u["subset"] not in subsets or u["seconds"] is None:
            continue
        expected.setdefault("asr", {})[utt] = u["text"]
        gender = LIBRISPEECH_GENDERS.get(u["speaker"])
        if gender:
            expected.setdefault("gr", {})[utt] = gender
            for task in ("gr_asr", "asr_gr", "json"):
                expected.setdefault(task, {})[utt] = composite_target(task, u["text"], gender)
    return expected


def test_librispeech(tmp_path):
    corpus = tmp_path / "LibriSpeech"
    utts = _librispeech(corpus)
    out = tmp_path / "out"
    summary = prepare("librispeech", tmp_path, out)  # the parent of LibriSpeech/ is accepted too
    assert summary["skipped"] == {"no_gender": 1}  # speaker 99; the recipe drops the missing flac
    for split, subsets in (("dev-clean", {"dev-clean"}), ("test-clean", {"test-clean"}),
                           ("train-clean-100", {"train-clean-100"}), ("train", {"train-clean-100"})):
        expected = _expected_librispeech(utts, subsets)
        assert summary["counts"][split] == {task: len(t) for task, t in expected.items()}
        for task, targets in expected.items():
            cuts = _cuts(out, split, task, [corpus])
            assert _targets(cuts) == targets
            for utt, cut in cuts.items():
                assert cut.duration == pytest.approx(utts[utt]["seconds"])
                assert cut.supervisions[0].speaker == utts[utt]["speaker"]
                assert cut.supervisions[0].gender == LIBRISPEECH_GENDERS.get(utts[utt]["speaker"])
    json_cut = _cuts(out, "dev-clean", "json", [corpus])["26-495-0000"]
    assert get_task("json").parse(json_cut.supervisions[0].text) == {"gender": "Male", "transcript": "A MAN SPOKE"}
    assert json.loads((out / "summary.json").read_text())["counts"] == summary["counts"]
    assert json.loads((out / "corpus.json").read_text()) == {"audio_roots": [str(tmp_path)]}


def test_librispeech_splits_filter_and_run(tmp_path, capsys):
    _librispeech(tmp_path / "LibriSpeech")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out = tmp_path / "out"
    args = parser.parse_args(["librispeech", "--root", str(tmp_path / "LibriSpeech"), "--out", str(out),
                              "--splits", "test-clean"])
    assert run(args) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[0] == f"test-clean/asr: 1 samples -> {out / 'manifests/test-clean/asr.cuts.jsonl.gz'}"
    assert sorted(p.name for p in (out / "manifests").iterdir()) == ["test-clean"]


def test_iemocap(tmp_path):
    root = tmp_path / "IEMOCAP_full_release"
    dialogs = {1: ("Ses01F_impro01", [("F000", "neu"), ("M001", "exc"), ("F002", "fru"), ("M003", "hap")]),
               2: ("Ses02M_script01_1", [("F000", "sad"), ("M001", "xxx")]),
               5: ("Ses05F_impro02", [("F000", "ang"), ("M001", "exc"), ("F002", "fru")])}
    seconds = {}
    for n, (dialog, utts) in dialogs.items():
        session = root / f"Session{n}"
        lines = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
        for i, (turn, code) in enumerate(utts):
            utt = f"{dialog}_{turn}"
            lines += [f"[{i}.5000 - {i + 1}.2500]\t{utt}\t{code}\t[2.5000, 2.5000, 2.5000]",
                      f"C-E1:\t{code.title()};\t()", ""]
            seconds[utt] = 0.1 + 0.05 * len(seconds)
            _audio(session / "sentences" / "wav" / dialog / f"{utt}.wav", seconds[utt])
        _text(session / "dialog" / "EmoEvaluation" / f"{dialog}.txt", "\n".join(lines))

    def expected(test_session: int) -> dict[str, dict[str, str]]:
        # the 4-class protocol: exc merged into happy, every other label dropped
        by_split: dict[str, dict[str, str]] = {"train": {}, "test": {}}
        for n, (dialog, utts) in dialogs.items():
            for turn, code in utts:
                if code in ("neu", "hap", "exc", "sad", "ang"):
                    by_split["test" if n == test_session else "train"][f"{dialog}_{turn}"] = format_label("ser", code)
        return by_split

    out = tmp_path / "out"
    summary = prepare("iemocap", tmp_path, out)
    assert summary["skipped"] == {"dropped_label:fru": 2, "dropped_label:xxx": 1}
    for split, targets in expected(5).items():
        cuts = _cuts(out, split, "ser", [tmp_path])
        assert _targets(cuts) == targets and summary["counts"][split] == {"ser": len(targets)}
        for utt, cut in cuts.items():
            assert cut.duration == pytest.approx(seconds[utt])
            assert cut.supervisions[0].gender == {"F": "Female", "M": "Male"}[utt[-4]]
    assert expected(5)["train"]["Ses01F_impro01_M001"] == "happy"  # the merge, spelled out once
    assert set(expected(5)["train"].values()) | set(expected(5)["test"].values()) <= set(get_task("ser").labels)
    held_out = prepare("iemocap", root, tmp_path / "out1", test_session=1)
    assert _targets(_cuts(tmp_path / "out1", "test", "ser", [root])) == expected(1)["test"]
    assert held_out["counts"] == {"train": {"ser": 3}, "test": {"ser": 3}}


def test_voxceleb(tmp_path):
    root = tmp_path / "VoxCeleb1"
    seconds = {"id10270/x6uYqmx31kE/00001.wav": 0.1, "id10270/8jEAjG6SegY/00008.wav": 0.25,
               "id10300/ZnPRfzsm4m0/00002.wav": 0.3, "id10001/1zcIwhmdeo4/00001.wav": 0.15}
    for rel, s in seconds.items():
        _audio(root / "wav" / rel, s)
    trials = [("1", "id10270/x6uYqmx31kE/00001.wav", "id10270/8jEAjG6SegY/00008.wav"),
              ("0", "id10270/x6uYqmx31kE/00001.wav", "id10300/ZnPRfzsm4m0/00002.wav"),
              ("0", "id10270/x6uYqmx31kE/00001.wav", "id10309/missing/00001.wav")]
    _text(root / "veri_test2.txt", "".join(" ".join(t) + "\n" for t in trials))
    _text(root / "veri_test.txt", "1 id10300/ZnPRfzsm4m0/00002.wav id10300/ZnPRfzsm4m0/00002.wav\n")
    meta = {"id10001": ("m", "dev"), "id10270": ("m", "test"), "id10300": ("f", "test")}
    _text(root / "vox1_meta.csv", "VoxCeleb1 ID\tVGGFace1 ID\tGender\tNationality\tSet\n"
          + "".join(f"{spk}\tName\t{g}\tUSA\t{s} \n" for spk, (g, s) in meta.items()))
    out = tmp_path / "out"
    summary = prepare("voxceleb", root, out)
    assert summary["skipped"] == {"missing_audio": 1}
    present = [(n, t) for n, t in enumerate(trials, start=1) if t[1] in seconds and t[2] in seconds]
    asv = _cuts(out, "test", "asv", [root])
    assert _targets(asv) == {f"veri_test2_{n:06d}": "Yes" if t[0] == "1" else "No" for n, t in present}
    for n, (_, enrol, test) in present:
        cut = asv[f"veri_test2_{n:06d}"]
        assert cut.duration == pytest.approx(seconds[enrol])
        assert isinstance(cut.custom["audio_b"], Recording)
        assert cut.custom["audio_b"].sources[0].source == str(root / "wav" / test)
        # the whole second clip, although it is longer than the first
        assert cut.load_audio_b().shape == (1, round(seconds[test] * SR))
    clip_of = {rel[:-len(".wav")].replace("/", "_"): rel for rel in seconds}  # gr sample id -> clip
    for split in ("dev", "test"):
        gr = _cuts(out, split, "gr", [root])
        # every clip of a speaker whose Set is this split, with the metadata's gender
        assert _targets(gr) == {sid: {"m": "Male", "f": "Female"}[meta[rel.split("/")[0]][0]]
                                for sid, rel in clip_of.items() if meta[rel.split("/")[0]][1] == split}
        for sid, cut in gr.items():
            assert cut.duration == pytest.approx(seconds[clip_of[sid]])
            assert cut.supervisions[0].speaker == clip_of[sid].split("/")[0]
    assert summary["counts"] == {"dev": {"gr": 1}, "test": {"asv": 2, "gr": 3}}
    original = prepare("voxceleb", root, tmp_path / "out2", trials="veri_test.txt", splits=["test"])
    assert _targets(_cuts(tmp_path / "out2", "test", "asv", [root])) == {"veri_test_000001": "Yes"}
    assert original["counts"]["test"]["asv"] == 1


def _pair_speakers(cut: MonoCut) -> tuple[str, str]:
    """The speakers of a pair's two clips, read from their paths (wav/{speaker}/{youtube}/{n}.wav)."""
    paths = (cut.recording.sources[0].source, cut.custom["audio_b"].sources[0].source)
    return Path(paths[0]).parts[-3], Path(paths[1]).parts[-3]


def _pairs(out: Path, root: Path) -> list[tuple[str, str, str, str]]:
    """(id, clip A, clip B, target) of every training pair, audio of both clips loaded and checked."""
    pairs = []
    for cut in _cuts(out, "train", "asv", [root]).values():
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
            _audio(root / "wav" / speaker / f"yt{i % 2}" / f"{i:05d}.wav", 0.1 + 0.05 * ((n + i) % 3))
    _text(root / "wav" / "id10002" / "yt0" / "00099.wav", "not audio")  # unreadable: skipped, never paired
    test_clips = ["id10270/a/00001.wav", "id10270/b/00002.wav", "id10300/c/00001.wav"]
    for rel in test_clips:
        _audio(root / "wav" / rel)
    _audio(root / "wav" / "id10500" / "d" / "00001.wav")  # in no metadata row and no trial
    _text(root / "veri_test2.txt", f"1 {test_clips[0]} {test_clips[1]}\n0 {test_clips[0]} {test_clips[2]}\n")
    # id10300 is marked dev, but a trial names it: it must stay out of training all the same
    meta = {**dict.fromkeys(dev, ("m", "dev")), "id10270": ("f", "test"), "id10300": ("f", "dev")}
    _text(root / "vox1_meta.csv", "VoxCeleb1 ID\tVGGFace1 ID\tGender\tNationality\tSet\n"
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


def test_audiocaps(tmp_path):
    root = tmp_path / "audiocaps"
    _text(root / "train.csv", "audiocap_id,youtube_id,start_time,caption\n"
          '91139,r1nicOVtvkQ,130,"A woman talks, then a dog barks"\n'
          "58146,UDGBjjwyaqE,20,Water flows\n")
    _text(root / "test.csv", "audiocap_id,youtube_id,start_time,caption\n"
          "103549,7fmOlUlwoNg,20,Rain falls on a roof\n103548,7fmOlUlwoNg,20,Heavy rain pours\n"
          "103541,gone0000000,0,Never downloaded\n")
    _audio(root / "train" / "91139.wav", 0.2)  # named by audiocap_id
    _audio(root / "test" / "7fmOlUlwoNg.wav", 0.3)  # named by youtube id
    out = tmp_path / "out"
    summary = prepare("audiocaps", root, out)
    assert summary["counts"] == {"test": {"aac": 1}, "train": {"aac": 1}}
    assert summary["skipped"] == {"missing_audio": 2}
    test = _cuts(out, "test", "aac", [root])
    # val/test: one cut per clip, the first caption as target and all of them as references
    assert _targets(test) == {"audiocaps_7fmOlUlwoNg": "Rain falls on a roof"}
    assert test["audiocaps_7fmOlUlwoNg"].custom["meta"]["references"] == ["Rain falls on a roof", "Heavy rain pours"]
    assert test["audiocaps_7fmOlUlwoNg"].duration == pytest.approx(0.3)
    train = _cuts(out, "train", "aac", [root])
    assert _targets(train) == {"audiocaps_r1nicOVtvkQ": "A woman talks, then a dog barks"}
    assert train["audiocaps_r1nicOVtvkQ"].duration == pytest.approx(0.2)


def test_clotho(tmp_path):
    root = tmp_path / "clotho"
    header = "file_name,caption_1,caption_2,caption_3,caption_4,caption_5\n"
    _text(root / "clotho_captions_development.csv", header + '"birds, morning.wav",c1,c2,c3,c4,c5\n')
    _text(root / "clotho_captions_evaluation.csv", header + "rain.wav,e1,e2,e3,e4,e5\nlost.wav,x,x,x,x,x\n")
    _audio(root / "development" / "birds, morning.wav", 0.2)
    _audio(root / "evaluation" / "rain.wav", 0.15)
    out = tmp_path / "out"
    summary = prepare("clotho", root, out)
    assert summary["counts"] == {"test": {"aac": 1}, "train": {"aac": 5}}
    assert summary["skipped"] == {"missing_audio": 1}
    train = _cuts(out, "train", "aac", [root])  # development: one cut per caption
    assert _targets(train) == {f"clotho_birds, morning_{i}": f"c{i + 1}" for i in range(5)}
    assert all(c.duration == pytest.approx(0.2) for c in train.values())
    test = _cuts(out, "test", "aac", [root])["clotho_rain"]
    assert test.supervisions[0].text == "e1" and test.custom["meta"]["references"] == ["e1", "e2", "e3", "e4", "e5"]
    assert test.custom["meta"]["clotho_split"] == "evaluation" and test.duration == pytest.approx(0.15)


def _covost(root: Path, clips: Path) -> dict[str, dict[str, str]]:
    header = "path\tsentence\ttranslation\tclient_id\n"
    _text(root / "covost_v2.en_zh-CN.train.tsv", header + 'common_voice_en_1.wav\tHe said "hi".\t他说"嗨"。\tc1\n')
    _text(root / "covost_v2.en_zh-CN.test.tsv", header + "common_voice_en_2.wav\tGood.\t好。\tc2\n"
          "common_voice_en_3.wav\tLost.\t丢失。\tc3\n")
    _audio(clips / "common_voice_en_1.wav", 0.2)
    _audio(clips / "common_voice_en_2.wav", 0.1)
    return {"train": {"covost_common_voice_en_1": '他说"嗨"。'}, "test": {"covost_common_voice_en_2": "好。"}}


def test_covost(tmp_path):
    root = tmp_path / "covost"
    expected = _covost(root, root / "clips")
    out = tmp_path / "out"
    summary = prepare("covost", root, out)
    assert summary["counts"] == {"test": {"s2tt": 1}, "train": {"s2tt": 1}}
    assert summary["skipped"] == {"missing_audio": 1}
    for split, targets in expected.items():
        assert _targets(_cuts(out, split, "s2tt", [root])) == targets
    train = _cuts(out, "train", "s2tt", [root])["covost_common_voice_en_1"]
    assert train.custom["meta"]["sentence"] == 'He said "hi".' and train.duration == pytest.approx(0.2)


def test_libri2mix(tmp_path):
    utts = _librispeech(tmp_path / "LibriSpeech")  # next to Libri2Mix/, where LibriMix puts it
    base = tmp_path / "Libri2Mix" / "wav16k" / "min"
    ids = ["19-198-0001_26-495-0000", "26-495-0000_99-100-0000", "19-198-0000_26-495-0099"]
    rows = ["mixture_ID,mixture_path,source_1_path,source_2_path,length"]
    for i, mix in enumerate(ids):
        _audio(base / "dev" / "mix_clean" / f"{mix}.wav", 0.2 + 0.1 * i)
        rows.append(f"{mix},/gone/{mix}.wav,/gone/s1/{mix}.wav,/gone/s2/{mix}.wav,{round((0.2 + 0.1 * i) * SR)}")
    _text(base / "metadata" / "mixture_dev_mix_clean.csv", "\n".join(rows) + "\n")
    out = tmp_path / "out"
    summary = prepare("libri2mix", tmp_path, out)
    # source 1 first; sources are found in any subset (26-495-0000 is dev-clean, 99-100-0000 test-clean)
    expected = {mix: BAR.join(utts[u]["text"] for u in mix.split("_"))
                for mix in ids if all(u in utts and utts[u]["seconds"] for u in mix.split("_"))}
    assert summary["counts"] == {"dev": {"osr": len(expected)}} and len(expected) == 2
    assert summary["skipped"] == {"missing_transcript": 1}  # utterance 0099 does not exist
    osr = _cuts(out, "dev", "osr", [tmp_path])
    assert _targets(osr) == expected
    assert osr[ids[1]].duration == pytest.approx(0.3)
    with pytest.raises(FileNotFoundError, match="--librispeech-root"):
        prepare("libri2mix", tmp_path, out, librispeech_root=str(tmp_path / "nowhere"))


@pytest.mark.parametrize("release, split_dir", [("TEDLIUM_release-3", "legacy/test"), ("TEDLIUM_release2", "test")])
def test_tedlium(tmp_path, release, split_dir):
    root = tmp_path / release  # release 3 keeps the classic split under legacy/ (prepare_tedlium), 2 at the top
    d = root / split_dir
    stm = {"AlGore_2009": [(0.50, 2.25, "<o,f0,male>", "i 'm here today"),
                           (2.25, 3.00, "<o,,unknown>", "ignore_time_segment_in_scoring"),
                           (3.00, 4.00, "<o,f0,unknown>", "some words")],
           "JaneDoe_2010": [(1.00, 2.00, "<o,f0,female>", "hello there")]}
    for talk, segments in stm.items():
        _text(d / "stm" / f"{talk}.stm", "".join(f"{talk} 1 {talk} {s:.2f} {e:.2f} {label} {text}\n"
                                                 for s, e, label, text in segments))
        _audio(d / "sph" / f"{talk}.sph", 4.5, fmt="NIST")
    out = tmp_path / "out"
    summary = prepare("tedlium", root, out)
    # Lhotse reads .sph through the sph2pipe binary only; without it, libsndfile (as the note says)
    sph2pipe = shutil.which("sph2pipe") is not None
    assert any("LHOTSE_AUDIO_BACKEND=LibsndfileBackend" in n for n in summary["notes"]) != sph2pipe
    expected = {"asr": {}, "gr": {}}
    for talk, segments in stm.items():
        for s, e, label, text in segments:
            sid = f"{talk}_{round(s * 100):07d}_{round(e * 100):07d}"
            if text != "ignore_time_segment_in_scoring":
                expected["asr"][sid] = text
                if label.split(",")[2] in ("male>", "female>"):
                    expected["gr"][sid] = label.split(",")[2][:-1].title()
    assert summary["counts"] == {"test": {"asr": 3, "gr": 2}} and summary["skipped"] == {"no_gender": 1}
    for task, targets in expected.items():
        with nullcontext() if sph2pipe else audio_backend("LibsndfileBackend"):
            cuts = _cuts(out, "test", task, [root])
            assert _targets(cuts) == targets
            for sid, cut in cuts.items():
                talk, start, end = sid.rsplit("_", 2)
                assert (cut.start, cut.end) == pytest.approx((int(start) / 100, int(end) / 100))
                # the segment of the whole-talk recording, sample for sample
                whole, _ = sf.read(str(d / "sph" / f"{talk}.sph"), dtype="float32")
                np.testing.assert_allclose(cut.load_audio()[0], whole[round(cut.start * SR):round(cut.end * SR)],
                                           atol=1e-4)
    assert expected["gr"]["AlGore_2009_0000050_0000225"] == "Male"


def test_tedlium_unmatched_talks_stop_with_one_line(tmp_path):
    d = tmp_path / "legacy" / "dev"
    _text(d / "stm" / "A_2001.stm", "A_2001 1 A_2001 0.00 0.50 <o,f0,male> hi\n")
    _text(d / "stm" / "B_2002.stm", "B_2002 1 B_2002 0.00 0.50 <o,f0,male> hi\n")
    _audio(d / "sph" / "A_2001.sph", 1.0, fmt="NIST")
    with pytest.raises(ValueError, match=r"unmatched: B_2002$") as err:
        prepare("tedlium", tmp_path, tmp_path / "out")
    assert "\n" not in str(err.value)


CV_HEADER = "client_id\tpath\tsentence_id\tsentence\tsentence_domain\tup_votes\tdown_votes\tage\tgender\taccents\t" \
            "variant\tlocale\tsegment\n"


def _cv_row(client: str, path: str, sentence: str, gender: str) -> str:
    return f"{client}\t{path}\tsid\t{sentence}\t\t2\t0\ttwenties\t{gender}\tUS\t\ten\t\n"


def test_commonvoice(tmp_path):
    root = tmp_path / "cv-corpus-17.0" / "en"
    genders = {"a": "male", "b": "female_feminine", "c": "male_masculine", "d": "do_not_wish_to_say", "e": ""}
    rows = "".join(_cv_row(f"c{k}", f"cv_{k}.mp3", f"Sentence {k}.", g) for k, g in genders.items())
    _text(root / "test.tsv", CV_HEADER + rows + _cv_row("cz", "missing.mp3", "Gone.", "male"))
    _text(root / "validated.tsv", CV_HEADER + rows)
    for i, k in enumerate(genders):
        _audio(root / "clips" / f"cv_{k}.mp3", 0.5 + 0.25 * i, fmt="MP3")
    out = tmp_path / "out"
    summary = prepare("commonvoice", root.parent, out, lang="en")  # cv-corpus dir + lang
    expected_asr = {f"cv_en_cv_{k}": f"Sentence {k}." for k in genders}
    expected_gr = {f"cv_en_cv_{k}": {"male": "Male", "male_masculine": "Male", "female_feminine": "Female"}[g]
                   for k, g in genders.items() if g in ("male", "male_masculine", "female_feminine")}
    assert summary["counts"] == {"test": {"asr": 5, "gr": 3}}  # validated only when asked for
    assert summary["skipped"] == {"missing_audio": 1, "no_gender": 1, "other_gender": 1}
    assert any("mp3" in note for note in summary["notes"])
    asr = _cuts(out, "test", "asr", [root])
    assert _targets(asr) == expected_asr and _targets(_cuts(out, "test", "gr", [root])) == expected_gr
    for i, k in enumerate(genders):
        assert asr[f"cv_en_cv_{k}"].duration == pytest.approx(0.5 + 0.25 * i, abs=0.03)  # mp3 frames
        assert asr[f"cv_en_cv_{k}"].supervisions[0].speaker == f"c{k}"
    only = prepare("commonvoice", root, tmp_path / "out2", splits=["validated"])
    assert only["counts"] == {"validated": {"asr": 5, "gr": 3}}


def test_commonvoice_old_columns_stop_with_one_line(tmp_path):
    root = tmp_path / "en"
    _text(root / "test.tsv", "client_id\tpath\tsentence\tup_votes\tdown_votes\tage\tgender\taccent\n"
          "c1\tcv_a.mp3\tHello.\t2\t0\t\tmale\t\n")
    (root / "clips").mkdir()
    with pytest.raises(ValueError, match=r"test\.tsv: missing column\(s\) accents, variant;") as err:
        prepare("commonvoice", root, tmp_path / "out")
    assert "\n" not in str(err.value)


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown corpus 'nope'; known corpora: librispeech, iemocap") as err:
        prepare("nope", tmp_path, tmp_path / "out")
    assert all(name in str(err.value) for name in CORPORA)
    missing = tmp_path / "no_such_dir"
    with pytest.raises(FileNotFoundError) as err:
        prepare("librispeech", missing, tmp_path / "out")
    message = str(err.value)
    assert str(missing) in message and "SPEAKERS.TXT" in message and "\n" not in message
    for corpus in CORPORA:  # an existing but empty directory names the expected layout too
        with pytest.raises(FileNotFoundError, match="expected") as err:
            prepare(corpus, tmp_path, tmp_path / "out")
        assert str(tmp_path) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ValueError, match="does not take option"):
        prepare("iemocap", tmp_path, tmp_path / "out", lang="en")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "corpus.json").write_text('{"audio_root": "/corpora"}')  # wrong key: one line
    _librispeech(tmp_path / "LibriSpeech")
    with pytest.raises(ValueError, match=r"corpus\.json: expected \{\"audio_roots\": \[folders\]\}"):
        prepare("librispeech", tmp_path / "LibriSpeech", tmp_path / "bad", splits=["test-clean"])


def test_clips_dir_outside_root_is_recorded(tmp_path):
    """corpus.json names every folder the cuts read from, and keeps an earlier corpus's roots."""
    root = tmp_path / "covost"
    clips = tmp_path / "elsewhere" / "clips"
    expected = _covost(root, clips)
    _text(root / "covost_v2.en_zh-CN.dev.tsv", "path\tsentence\ttranslation\tclient_id\n"
          "../escape.wav\tOut.\t出。\tc9\n")
    _audio(clips.parent / "escape.wav")  # exists, but a table row must not leave clips/
    out = tmp_path / "out"
    summary = prepare("covost", root, out, clips_dir=str(clips))
    assert summary["counts"] == {"test": {"s2tt": 1}, "train": {"s2tt": 1}}
    assert summary["skipped"] == {"missing_audio": 1, "outside_audio_roots": 1}
    assert json.loads((out / "corpus.json").read_text()) == {"audio_roots": [str(root), str(clips)]}
    assert _targets(_cuts(out, "train", "s2tt", [clips])) == expected["train"]
    # a second corpus prepared into the same folder keeps the first one's roots
    _librispeech(tmp_path / "LibriSpeech")
    prepare("librispeech", tmp_path / "LibriSpeech", out, splits=["dev-clean"])
    assert json.loads((out / "corpus.json").read_text())["audio_roots"] == [
        str(root), str(clips), str(tmp_path / "LibriSpeech")]
    assert _targets(_cuts(out, "test", "s2tt", [clips])) == expected["test"]
