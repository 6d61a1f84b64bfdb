"""Corpus prepare steps: tiny fake corpora in each release's published layout -> manifests."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ahamask_lightning.data.datamodule import ManifestDataModule
from ahamask_lightning.data.manifest import PathResolver, Reject, SampleRecord, parse_line
from ahamask_lightning.tasks import TASKS, composite_target, get_task
from data_modules.prepare import CORPORA, add_arguments, prepare, run

SR = 16000


def _audio(path: Path, seconds: float = 0.1, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    noise = np.random.default_rng(len(str(path))).normal(0, 0.01, int(SR * seconds)).astype("float32")
    sf.write(str(path), noise, SR, format=fmt)
    return path


def _text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _read(out: Path, split: str, task: str) -> list[dict]:
    path = out / "manifests" / split / f"{task}.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    # every line must be a valid sample for the data layer with its default confinement: the
    # absolute paths into the raw corpus pass through the root prepare recorded in OUT/corpus.json
    for n, line in enumerate(lines, start=1):
        record = parse_line(line, str(path), n, PathResolver(str(path)), TASKS)
        assert isinstance(record, SampleRecord), record
        assert all(Path(a).is_file() for a in record.audio)
    return [json.loads(line) for line in lines]


def _by_id(rows: list[dict]) -> dict[str, dict]:
    return {r["id"]: r for r in rows}


def _librispeech(root: Path) -> Path:
    _text(root / "SPEAKERS.TXT", ";ID  |SEX| SUBSET           |MINUTES| NAME\n"
          "19   | F | train-clean-100  | 25.19 | Kara Shallenberg\n"
          "26   | M | train-clean-100  | 25.08 | |CBW|Simon\n")
    chapters = {("dev-clean", "19", "198"): ["HELLO WORLD", "GOOD MORNING"],
                ("dev-clean", "26", "495"): ["A MAN SPOKE"],
                ("test-clean", "99", "100"): ["NOBODY KNOWS ME"],
                ("train-clean-100", "26", "496"): ["TRAIN ONE", "NO AUDIO HERE"]}
    for (subset, spk, ch), texts in chapters.items():
        d = root / subset / spk / ch
        lines = []
        for i, text in enumerate(texts):
            utt = f"{spk}-{ch}-{i:04d}"
            lines.append(f"{utt} {text}")
            if text != "NO AUDIO HERE":
                _audio(d / f"{utt}.flac", fmt="FLAC")
        _text(d / f"{spk}-{ch}.trans.txt", "\n".join(lines) + "\n")
    return root


def test_librispeech(tmp_path):
    _librispeech(tmp_path / "LibriSpeech")
    out = tmp_path / "out"
    summary = prepare("librispeech", tmp_path, out)  # the parent of LibriSpeech/ is accepted too
    assert summary["counts"]["dev-clean"] == {"asr": 3, "gr": 3, "gr_asr": 3, "asr_gr": 3, "json": 3}
    assert summary["counts"]["test-clean"] == {"asr": 1}  # speaker 99 has no SPEAKERS.TXT line
    assert summary["counts"]["train"] == summary["counts"]["train-clean-100"] == {
        "asr": 1, "gr": 1, "gr_asr": 1, "asr_gr": 1, "json": 1}
    assert summary["skipped"] == {"missing_audio": 2, "no_gender": 1}  # train + train-clean-100, speaker 99
    gr = _by_id(_read(out, "dev-clean", "gr"))
    assert gr["19-198-0000"]["text"] == "Female" and gr["26-495-0000"]["text"] == "Male"
    asr = _by_id(_read(out, "dev-clean", "asr"))["19-198-0001"]
    assert asr["text"] == "GOOD MORNING" and asr["task"] == "asr" and "instruction" not in asr
    assert Path(asr["audio"]).is_absolute() and Path(asr["audio"]).is_file()
    assert asr["duration"] == pytest.approx(0.1, abs=1e-3)
    assert asr["meta"] == {"speaker": "19", "chapter": "198", "subset": "dev-clean", "gender": "Female"}
    for task in ("gr_asr", "asr_gr", "json"):
        row = _by_id(_read(out, "dev-clean", task))["26-495-0000"]
        assert row["text"] == composite_target(task, "A MAN SPOKE", "Male")
        assert get_task(task).parse(row["text"]) == {"gender": "Male", "transcript": "A MAN SPOKE"}
    assert _read(out, "train", "asr") == _read(out, "train-clean-100", "asr")
    assert json.loads((out / "summary.json").read_text())["counts"] == summary["counts"]


def test_librispeech_splits_filter_and_run(tmp_path, capsys):
    _librispeech(tmp_path / "LibriSpeech")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out = tmp_path / "out"
    args = parser.parse_args(["librispeech", "--root", str(tmp_path / "LibriSpeech"), "--out", str(out),
                              "--splits", "test-clean", "--no-durations"])
    assert run(args) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[0].startswith("test-clean/asr: 1 samples")
    assert sorted(p.name for p in (out / "manifests").iterdir()) == ["test-clean"]
    assert "duration" not in _read(out, "test-clean", "asr")[0]


def test_iemocap(tmp_path):
    root = tmp_path / "IEMOCAP_full_release"
    dialogs = {1: ("Ses01F_impro01", [("F000", "neu"), ("M001", "exc"), ("F002", "fru"), ("M003", "hap")]),
               2: ("Ses02M_script01_1", [("F000", "sad"), ("M001", "xxx")]),
               5: ("Ses05F_impro02", [("F000", "ang"), ("M001", "exc"), ("F002", "fru")])}
    for n, (dialog, utts) in dialogs.items():
        session = root / f"Session{n}"
        lines = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
        for i, (turn, code) in enumerate(utts):
            utt = f"{dialog}_{turn}"
            lines += [f"[{i}.5000 - {i + 1}.2500]\t{utt}\t{code}\t[2.5000, 2.5000, 2.5000]",
                      f"C-E1:\t{code.title()};\t()", ""]
            _audio(session / "sentences" / "wav" / dialog / f"{utt}.wav")
        _text(session / "dialog" / "EmoEvaluation" / f"{dialog}.txt", "\n".join(lines))
    out = tmp_path / "out"
    summary = prepare("iemocap", tmp_path, out)
    assert summary["counts"] == {"train": {"ser": 4}, "test": {"ser": 2}}
    assert summary["skipped"] == {"dropped_label:fru": 2, "dropped_label:xxx": 1}
    train, test = _by_id(_read(out, "train", "ser")), _by_id(_read(out, "test", "ser"))
    assert {r["meta"]["session"] for r in train.values()} == {1, 2}
    assert {r["meta"]["session"] for r in test.values()} == {5}
    assert train["Ses01F_impro01_M001"]["text"] == "happy"  # exc merged into happy
    assert train["Ses01F_impro01_M003"]["text"] == "happy"
    assert train["Ses01F_impro01_F000"]["text"] == "neutral"
    assert test["Ses05F_impro02_F000"]["text"] == "angry" and train["Ses02M_script01_1_F000"]["text"] == "sad"
    assert {r["text"] for r in [*train.values(), *test.values()]} <= set(get_task("ser").labels)
    assert train["Ses01F_impro01_M001"]["meta"]["gender"] == "Male"
    held_out = prepare("iemocap", root, tmp_path / "out1", test_session=1)
    assert held_out["counts"] == {"train": {"ser": 3}, "test": {"ser": 3}}


def test_voxceleb(tmp_path):
    root = tmp_path / "VoxCeleb1"
    for rel in ("id10270/x6uYqmx31kE/00001.wav", "id10270/8jEAjG6SegY/00008.wav", "id10300/ZnPRfzsm4m0/00002.wav",
                "id10001/1zcIwhmdeo4/00001.wav"):
        _audio(root / "wav" / rel)
    _text(root / "veri_test2.txt", "1 id10270/x6uYqmx31kE/00001.wav id10270/8jEAjG6SegY/00008.wav\n"
          "0 id10270/x6uYqmx31kE/00001.wav id10300/ZnPRfzsm4m0/00002.wav\n"
          "0 id10270/x6uYqmx31kE/00001.wav id10309/missing/00001.wav\n")
    _text(root / "veri_test.txt", "1 id10300/ZnPRfzsm4m0/00002.wav id10300/ZnPRfzsm4m0/00002.wav\n")
    _text(root / "vox1_meta.csv", "VoxCeleb1 ID\tVGGFace1 ID\tGender\tNationality\tSet\n"
          "id10001\tA.J._Buckley\tm\tIreland\tdev\nid10270\tEric_Stonestreet\tm\tUSA\ttest \n"
          "id10300\tJessica_Alba\tf\tUSA\ttest\n")
    out = tmp_path / "out"
    summary = prepare("voxceleb", root, out)
    assert summary["counts"] == {"dev": {"gr": 1}, "test": {"asv": 2, "gr": 3}}
    assert summary["skipped"] == {"missing_audio": 1}
    asv = _read(out, "test", "asv")
    assert [r["text"] for r in asv] == ["Yes", "No"]  # from veri_test2.txt, not veri_test.txt
    assert asv[1]["audio"] == [str(root / "wav/id10270/x6uYqmx31kE/00001.wav"),
                               str(root / "wav/id10300/ZnPRfzsm4m0/00002.wav")]
    assert asv[0]["duration"] == pytest.approx(0.2, abs=1e-3)
    gr = {r["meta"]["speaker"]: r["text"] for r in _read(out, "test", "gr")}
    assert gr == {"id10270": "Male", "id10300": "Female"}
    original = prepare("voxceleb", root, tmp_path / "out2", trials="veri_test.txt", splits=["test"])
    assert original["counts"]["test"]["asv"] == 1


def test_audiocaps(tmp_path):
    root = tmp_path / "audiocaps"
    _text(root / "train.csv", "audiocap_id,youtube_id,start_time,caption\n"
          '91139,r1nicOVtvkQ,130,"A woman talks, then a dog barks"\n'
          "58146,UDGBjjwyaqE,20,Water flows\n")
    _text(root / "test.csv", "audiocap_id,youtube_id,start_time,caption\n"
          "103549,7fmOlUlwoNg,20,Rain falls on a roof\n103548,7fmOlUlwoNg,20,Heavy rain pours\n"
          "103541,gone0000000,0,Never downloaded\n")
    _audio(root / "train" / "91139.wav")  # named by audiocap_id
    _audio(root / "test" / "7fmOlUlwoNg.wav")  # named by youtube id
    out = tmp_path / "out"
    summary = prepare("audiocaps", root, out)
    assert summary["counts"] == {"test": {"aac": 1}, "train": {"aac": 1}}
    assert summary["skipped"] == {"missing_audio": 2}
    test = _read(out, "test", "aac")[0]
    assert test["text"] == "Rain falls on a roof"
    assert test["meta"]["references"] == ["Rain falls on a roof", "Heavy rain pours"]
    assert _read(out, "train", "aac")[0]["text"] == "A woman talks, then a dog barks"


def test_clotho(tmp_path):
    root = tmp_path / "clotho"
    header = "file_name,caption_1,caption_2,caption_3,caption_4,caption_5\n"
    _text(root / "clotho_captions_development.csv", header + '"birds, morning.wav",c1,c2,c3,c4,c5\n')
    _text(root / "clotho_captions_evaluation.csv", header + "rain.wav,e1,e2,e3,e4,e5\nlost.wav,x,x,x,x,x\n")
    _audio(root / "development" / "birds, morning.wav")
    _audio(root / "evaluation" / "rain.wav")
    out = tmp_path / "out"
    summary = prepare("clotho", root, out)
    assert summary["counts"] == {"test": {"aac": 1}, "train": {"aac": 5}}
    assert summary["skipped"] == {"missing_audio": 1}
    assert [r["text"] for r in _read(out, "train", "aac")] == ["c1", "c2", "c3", "c4", "c5"]
    test = _read(out, "test", "aac")[0]
    assert test["text"] == "e1" and test["meta"]["references"] == ["e1", "e2", "e3", "e4", "e5"]
    assert test["meta"]["clotho_split"] == "evaluation"


def test_covost(tmp_path):
    root = tmp_path / "covost"
    header = "path\tsentence\ttranslation\tclient_id\n"
    _text(root / "covost_v2.en_zh-CN.train.tsv", header + 'common_voice_en_1.wav\tHe said "hi".\t他说"嗨"。\tc1\n')
    _text(root / "covost_v2.en_zh-CN.test.tsv", header + "common_voice_en_2.wav\tGood.\t好。\tc2\n"
          "common_voice_en_3.wav\tLost.\t丢失。\tc3\n")
    _audio(root / "clips" / "common_voice_en_1.wav")
    _audio(root / "clips" / "common_voice_en_2.wav")
    out = tmp_path / "out"
    summary = prepare("covost", root, out)
    assert summary["counts"] == {"test": {"s2tt": 1}, "train": {"s2tt": 1}}
    assert summary["skipped"] == {"missing_audio": 1}
    train = _read(out, "train", "s2tt")[0]
    assert train["text"] == '他说"嗨"。' and train["meta"]["sentence"] == 'He said "hi".'
    assert train["id"] == "covost_common_voice_en_1"


def test_libri2mix(tmp_path):
    _librispeech(tmp_path / "LibriSpeech")  # next to Libri2Mix/, where LibriMix puts it
    base = tmp_path / "Libri2Mix" / "wav16k" / "min"
    ids = ["19-198-0001_26-495-0000", "26-495-0000_99-100-0000", "19-198-0000_26-495-0099"]
    rows = ["mixture_ID,mixture_path,source_1_path,source_2_path,length"]
    for mix in ids:
        _audio(base / "dev" / "mix_clean" / f"{mix}.wav")
        rows.append(f"{mix},/gone/{mix}.wav,/gone/s1/{mix}.wav,/gone/s2/{mix}.wav,24000")
    _text(base / "metadata" / "mixture_dev_mix_clean.csv", "\n".join(rows) + "\n")
    out = tmp_path / "out"
    summary = prepare("libri2mix", tmp_path, out)
    assert summary["counts"] == {"dev": {"osr": 2}}
    assert summary["skipped"] == {"missing_transcript": 1}  # utterance 0099 does not exist
    osr = _by_id(_read(out, "dev", "osr"))
    assert osr[ids[0]]["text"] == "GOOD MORNING|A MAN SPOKE"
    assert osr[ids[1]]["text"] == "A MAN SPOKE|NOBODY KNOWS ME"  # found in test-clean, source order kept
    assert osr[ids[0]]["duration"] == pytest.approx(1.5)  # length column / 16 kHz
    with pytest.raises(FileNotFoundError, match="--librispeech-root"):
        prepare("libri2mix", tmp_path, out, librispeech_root=str(tmp_path / "nowhere"))


def test_tedlium(tmp_path):
    root = tmp_path / "TEDLIUM_release-3"
    d = root / "legacy" / "test"
    _text(d / "stm" / "AlGore_2009.stm", "AlGore_2009 1 AlGore_2009 0.50 2.25 <o,f0,male> i 'm here today\n"
          "AlGore_2009 1 inter_segment_gap 2.25 3.00 <o,,unknown> ignore_time_segment_in_scoring\n"
          "AlGore_2009 1 AlGore_2009 3.00 4.00 <o,f0,unknown> some words\n")
    _text(d / "stm" / "JaneDoe_2010.stm", "JaneDoe_2010 1 JaneDoe_2010 1.00 2.00 <o,f0,female> hello there\n")
    _audio(d / "sph" / "AlGore_2009.sph", fmt="NIST")
    _audio(d / "sph" / "JaneDoe_2010.sph", fmt="NIST")
    out = tmp_path / "out"
    summary = prepare("tedlium", root, out)
    assert summary["counts"] == {"test": {"asr": 3, "gr": 2}}
    assert summary["skipped"] == {"ignored_segment": 1, "no_gender": 1}
    gr = _read(out, "test", "gr")
    assert [(r["meta"]["talk"], r["text"]) for r in gr] == [("AlGore_2009", "Male"), ("JaneDoe_2010", "Female")]
    assert gr[0]["meta"]["start"] == 0.5 and gr[0]["meta"]["end"] == 2.25 and gr[0]["duration"] == 1.75
    assert gr[0]["audio"].endswith("legacy/test/sph/AlGore_2009.sph")
    assert _read(out, "test", "asr")[0]["text"] == "i 'm here today"


def test_commonvoice(tmp_path):
    root = tmp_path / "cv-corpus-17.0" / "en"
    header = "client_id\tpath\tsentence\tup_votes\tdown_votes\tage\tgender\taccents\n"
    genders = {"a": "male", "b": "female_feminine", "c": "male_masculine", "d": "do_not_wish_to_say", "e": ""}
    rows = "".join(f"c{k}\tcv_{k}.mp3\tSentence {k}.\t2\t0\ttwenties\t{g}\tUS\n" for k, g in genders.items())
    _text(root / "test.tsv", header + rows + "cz\tmissing.mp3\tGone.\t2\t0\t\tmale\t\n")
    _text(root / "validated.tsv", header + rows)
    for k in genders:
        _text(root / "clips" / f"cv_{k}.mp3", "not really mp3")  # referenced, never decoded here
    out = tmp_path / "out"
    summary = prepare("commonvoice", root.parent, out, lang="en")  # cv-corpus dir + lang
    assert summary["counts"] == {"test": {"asr": 5, "gr": 3}}  # validated only when asked for
    assert summary["skipped"] == {"missing_audio": 1, "no_gender": 1, "other_gender": 1}
    assert any("mp3" in note for note in summary["notes"])
    gr = {r["id"]: r["text"] for r in _read(out, "test", "gr")}
    assert gr == {"cv_en_cv_a": "Male", "cv_en_cv_b": "Female", "cv_en_cv_c": "Male"}
    only = prepare("commonvoice", root, tmp_path / "out2", splits=["validated"])
    assert only["counts"] == {"validated": {"asr": 5, "gr": 3}}


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


def test_recorded_root_confines_prepared_manifests(tmp_path):
    """corpus.json lets the prepared manifests through; a path outside the recorded root stays rejected."""
    corpus = _librispeech(tmp_path / "LibriSpeech")
    out = tmp_path / "out"
    prepare("librispeech", corpus, out, splits=["dev-clean"])
    assert json.loads((out / "corpus.json").read_text()) == {"audio_roots": [str(corpus)]}
    manifest = out / "manifests" / "dev-clean" / "asr.jsonl"
    row = json.loads(manifest.read_text().splitlines()[0])
    sibling = _audio(tmp_path / "LibriSpeech2" / "x.flac", fmt="FLAC")  # shares the prefix, not the folder
    for outside in (str(sibling), str(corpus / ".." / "LibriSpeech2" / "x.flac")):
        record = parse_line(json.dumps({**row, "audio": outside}), str(manifest), 1, PathResolver(str(manifest)), TASKS)
        assert isinstance(record, Reject) and record.reason == "path_outside_root", record
        assert str(corpus) in record.detail
    # without corpus.json the raw corpus is outside the manifest's folder again
    (out / "corpus.json").unlink()
    record = parse_line(json.dumps(row), str(manifest), 1, PathResolver(str(manifest)), TASKS)
    assert isinstance(record, Reject) and record.reason == "path_outside_root"


def test_prepared_corpus_streams_through_the_datamodule(tmp_path):
    corpus = _librispeech(tmp_path / "LibriSpeech")
    out = tmp_path / "out"
    prepare("librispeech", corpus, out, splits=["dev-clean"])
    dm = ManifestDataModule(val=str(out / "manifests" / "dev-clean" / "gr.jsonl"), batch_size=8, min_seconds=0.1)
    dm.setup("validate")
    batches = list(dm.val_dataloader()[0])
    assert sum(len(b) for b in batches) == 3 and dm.reject_summary() == {}
    (out / "corpus.json").write_text('{"audio_root": "/corpora"}')  # wrong key: one clear line at setup
    with pytest.raises(ValueError, match=r"corpus\.json: 'audio_roots' is missing"):
        ManifestDataModule(val=str(out / "manifests" / "dev-clean" / "gr.jsonl")).setup("validate")


def test_clips_dir_outside_root_is_recorded(tmp_path):
    root = tmp_path / "cv-corpus" / "en"
    header = "client_id\tpath\tsentence\tup_votes\tdown_votes\tage\tgender\taccents\n"
    _text(root / "test.tsv", header + "c1\tcv_a.mp3\tHello.\t2\t0\t\tmale\t\nc2\t../escape.mp3\tBye.\t2\t0\t\tmale\t\n")
    clips = tmp_path / "elsewhere" / "clips"
    _text(clips / "cv_a.mp3", "not really mp3")
    _text(clips.parent / "escape.mp3", "not really mp3")  # exists, but a table row must not leave clips/
    out = tmp_path / "out"
    summary = prepare("commonvoice", root, out, clips_dir=str(clips))
    assert summary["counts"] == {"test": {"asr": 1, "gr": 1}}
    assert summary["skipped"] == {"outside_audio_roots": 2}
    assert json.loads((out / "corpus.json").read_text()) == {"audio_roots": [str(root), str(clips)]}
    assert _read(out, "test", "asr")[0]["audio"] == str(clips / "cv_a.mp3")
    # a second corpus prepared into the same folder keeps the first one's roots
    _librispeech(tmp_path / "LibriSpeech")
    prepare("librispeech", tmp_path / "LibriSpeech", out, splits=["dev-clean"])
    assert json.loads((out / "corpus.json").read_text())["audio_roots"] == [
        str(root), str(clips), str(tmp_path / "LibriSpeech")]
    assert _read(out, "test", "gr")[0]["text"] == "Male"
