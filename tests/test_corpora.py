"""Corpus preparers, part 1: the emotion, captioning, translation and mixture corpora, and the
errors every preparer shares. Each fake corpus is built in its release's published layout with its own
metadata; the expected targets come from that metadata and are compared with the CutSets written.
Speech corpora: ``test_corpora_speech.py``; VoxCeleb: ``test_corpora_voxceleb.py``."""
from __future__ import annotations

import json

import pytest
from corpus_helpers import (
    SR,
    cut_targets,
    fake_covost,
    fake_librispeech,
    read_cuts,
    write_audio,
    write_covost_tsv,
    write_text,
)

from ahamask_lightning.tasks import format_label, get_task
from ahamask_lightning.tasks.parsing import BAR
from data_modules.prepare import CORPORA, prepare


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
            write_audio(session / "sentences" / "wav" / dialog / f"{utt}.wav", seconds[utt])
        write_text(session / "dialog" / "EmoEvaluation" / f"{dialog}.txt", "\n".join(lines))

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
        cuts = read_cuts(out, split, "ser", [tmp_path])
        assert cut_targets(cuts) == targets and summary["counts"][split] == {"ser": len(targets)}
        for utt, cut in cuts.items():
            assert cut.duration == pytest.approx(seconds[utt])
            assert cut.supervisions[0].gender == {"F": "Female", "M": "Male"}[utt[-4]]
    assert expected(5)["train"]["Ses01F_impro01_M001"] == "happy"  # the merge, spelled out once
    assert set(expected(5)["train"].values()) | set(expected(5)["test"].values()) <= set(get_task("ser").labels)
    held_out = prepare("iemocap", root, tmp_path / "out1", test_session=1)
    assert cut_targets(read_cuts(tmp_path / "out1", "test", "ser", [root])) == expected(1)["test"]
    assert held_out["counts"] == {"train": {"ser": 3}, "test": {"ser": 3}}


def test_audiocaps(tmp_path):
    root = tmp_path / "audiocaps"
    write_text(root / "train.csv", "audiocap_id,youtube_id,start_time,caption\n"
          '91139,r1nicOVtvkQ,130,"A woman talks, then a dog barks"\n'
          "58146,UDGBjjwyaqE,20,Water flows\n"
          "70001,wholeVideo0,2,A car passes\n70002,shortVideo0,9,A bell rings\n")
    write_text(root / "test.csv", "audiocap_id,youtube_id,start_time,caption\n"
          "103549,7fmOlUlwoNg,20,Rain falls on a roof\n103548,7fmOlUlwoNg,20,Heavy rain pours\n"
          "103541,gone0000000,0,Never downloaded\n")
    write_audio(root / "train" / "91139.wav", 0.2)  # named by audiocap_id
    write_audio(root / "test" / "7fmOlUlwoNg.wav", 0.3)  # named by youtube id
    write_audio(root / "train" / "wholeVideo0.wav", 14.0)  # a whole video, not the 10 s clip
    write_audio(root / "train" / "shortVideo0.wav", 14.0)  # ... ending before start_time + 10 s
    out = tmp_path / "out"
    summary = prepare("audiocaps", root, out)
    assert summary["counts"] == {"test": {"aac": 1}, "train": {"aac": 2}}
    assert summary["skipped"] == {"missing_audio": 2, "start_time_past_end": 1}
    whole = read_cuts(out, "train", "aac", [root])["audiocaps_wholeVideo0"]
    assert (whole.start, whole.duration) == (2.0, 10.0)  # the clip the captions describe
    test = read_cuts(out, "test", "aac", [root])
    # val/test: one cut per clip, the first caption as target and all of them as references
    assert cut_targets(test) == {"audiocaps_7fmOlUlwoNg": "Rain falls on a roof"}
    assert test["audiocaps_7fmOlUlwoNg"].custom["meta"]["references"] == ["Rain falls on a roof", "Heavy rain pours"]
    assert test["audiocaps_7fmOlUlwoNg"].duration == pytest.approx(0.3)
    train = read_cuts(out, "train", "aac", [root])
    assert cut_targets(train) == {"audiocaps_r1nicOVtvkQ": "A woman talks, then a dog barks",
                                  "audiocaps_wholeVideo0": "A car passes"}
    assert train["audiocaps_r1nicOVtvkQ"].duration == pytest.approx(0.2)


def test_clotho(tmp_path):
    root = tmp_path / "clotho"
    header = "file_name,caption_1,caption_2,caption_3,caption_4,caption_5\n"
    write_text(root / "clotho_captions_development.csv", header + '"birds, morning.wav",c1,c2,c3,c4,c5\n')
    write_text(root / "clotho_captions_evaluation.csv", header + "rain.wav,e1,e2,e3,e4,e5\nlost.wav,x,x,x,x,x\n")
    write_audio(root / "development" / "birds, morning.wav", 0.2)
    write_audio(root / "evaluation" / "rain.wav", 0.15)
    out = tmp_path / "out"
    summary = prepare("clotho", root, out)
    assert summary["counts"] == {"test": {"aac": 1}, "train": {"aac": 5}}
    assert summary["skipped"] == {"missing_audio": 1}
    train = read_cuts(out, "train", "aac", [root])  # development: one cut per caption
    assert cut_targets(train) == {f"clotho_birds, morning_{i}": f"c{i + 1}" for i in range(5)}
    assert all(c.duration == pytest.approx(0.2) for c in train.values())
    test = read_cuts(out, "test", "aac", [root])["clotho_rain"]
    assert test.supervisions[0].text == "e1" and test.custom["meta"]["references"] == ["e1", "e2", "e3", "e4", "e5"]
    assert test.custom["meta"]["clotho_split"] == "evaluation" and test.duration == pytest.approx(0.15)


def test_covost(tmp_path):
    root = tmp_path / "covost"
    expected = fake_covost(root, root / "clips")
    out = tmp_path / "out"
    summary = prepare("covost", root, out)
    assert summary["counts"] == {"test": {"s2tt": 1}, "train": {"s2tt": 1}}
    assert summary["skipped"] == {"missing_audio": 1}
    for split, targets in expected.items():
        assert cut_targets(read_cuts(out, split, "s2tt", [root])) == targets
    train = read_cuts(out, "train", "s2tt", [root])["covost_common_voice_en_1"]
    assert train.custom["meta"]["sentence"] == 'He said "hi".' and train.duration == pytest.approx(0.2)
    assert '\\"' in (root / "covost_v2.en_zh-CN.train.tsv").read_text()  # the file holds it escaped


def test_covost_released_table(tmp_path):
    """The single released table: train is ``train`` and ``train_covost`` rows (as CoVoST's own
    split script takes it); sentence and speaker come from Common Voice's validated.tsv."""
    root = tmp_path / "covost"
    rows = [["path", "translation", "split"], ["a.wav", '他说"嗨"。', "train"], ["b.wav", "好。", "train_covost"],
            ["c.wav", "丢。", "dev"], ["d.wav", "拜。", "test"], ["e.wav", "无。", "excluded"]]
    write_covost_tsv(root / "covost_v2.en_zh-CN.tsv", rows)
    write_text(root / "validated.tsv", "client_id\tpath\tsentence\nc1\ta.wav\tHe said hi.\nc2\tb.wav\tGood.\n")
    for name in "abcde":
        write_audio(root / "clips" / f"{name}.wav", 0.1)
    summary = prepare("covost", root, tmp_path / "out")
    assert summary["counts"] == {"train": {"s2tt": 2}, "dev": {"s2tt": 1}, "test": {"s2tt": 1}}
    train = read_cuts(tmp_path / "out", "train", "s2tt", [root])
    assert cut_targets(train) == {"covost_a": '他说"嗨"。', "covost_b": "好。"}
    assert train["covost_b"].custom["meta"]["sentence"] == "Good." and train["covost_b"].supervisions[0].speaker == "c2"


def test_libri2mix(tmp_path):
    utts = fake_librispeech(tmp_path / "LibriSpeech")  # next to Libri2Mix/, where LibriMix puts it
    base = tmp_path / "Libri2Mix" / "wav16k" / "min"
    ids = ["19-198-0001_26-495-0000", "26-495-0000_99-100-0000", "19-198-0000_26-495-0099"]
    rows = ["mixture_ID,mixture_path,source_1_path,source_2_path,length"]
    for i, mix in enumerate(ids):
        write_audio(base / "dev" / "mix_clean" / f"{mix}.wav", 0.2 + 0.1 * i)
        rows.append(f"{mix},/gone/{mix}.wav,/gone/s1/{mix}.wav,/gone/s2/{mix}.wav,{round((0.2 + 0.1 * i) * SR)}")
    write_text(base / "metadata" / "mixture_dev_mix_clean.csv", "\n".join(rows) + "\n")
    out = tmp_path / "out"
    summary = prepare("libri2mix", tmp_path, out)
    # source 1 first; sources are found in any subset (26-495-0000 is dev-clean, 99-100-0000 test-clean)
    expected = {mix: BAR.join(utts[u]["text"] for u in mix.split("_"))
                for mix in ids if all(u in utts and utts[u]["seconds"] for u in mix.split("_"))}
    assert summary["counts"] == {"dev": {"osr": len(expected)}} and len(expected) == 2
    assert summary["skipped"] == {"missing_transcript": 1}  # utterance 0099 does not exist
    osr = read_cuts(out, "dev", "osr", [tmp_path])
    assert cut_targets(osr) == expected
    assert osr[ids[1]].duration == pytest.approx(0.3)
    with pytest.raises(FileNotFoundError, match="--librispeech-root"):
        prepare("libri2mix", tmp_path, out, librispeech_root=str(tmp_path / "nowhere"))


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
    fake_librispeech(tmp_path / "LibriSpeech")
    with pytest.raises(ValueError, match=r"corpus\.json: expected \{\"audio_roots\": \[folders\]\}"):
        prepare("librispeech", tmp_path / "LibriSpeech", tmp_path / "bad", splits=["test-clean"])


def test_clips_dir_outside_root_is_recorded(tmp_path):
    """corpus.json names every folder the cuts read from, and keeps an earlier corpus's roots."""
    root = tmp_path / "covost"
    clips = tmp_path / "elsewhere" / "clips"
    expected = fake_covost(root, clips)
    write_text(root / "covost_v2.en_zh-CN.dev.tsv", "path\tsentence\ttranslation\tclient_id\n"
          "../escape.wav\tOut.\t出。\tc9\n")
    write_audio(clips.parent / "escape.wav")  # exists, but a table row must not leave clips/
    out = tmp_path / "out"
    summary = prepare("covost", root, out, clips_dir=str(clips))
    assert summary["counts"] == {"test": {"s2tt": 1}, "train": {"s2tt": 1}}
    assert summary["skipped"] == {"missing_audio": 1, "outside_audio_roots": 1}
    assert json.loads((out / "corpus.json").read_text()) == {"audio_roots": [str(root), str(clips)]}
    assert cut_targets(read_cuts(out, "train", "s2tt", [clips])) == expected["train"]
    # a second corpus prepared into the same folder keeps the first one's roots
    fake_librispeech(tmp_path / "LibriSpeech")
    prepare("librispeech", tmp_path / "LibriSpeech", out, splits=["dev-clean"])
    assert json.loads((out / "corpus.json").read_text())["audio_roots"] == [
        str(root), str(clips), str(tmp_path / "LibriSpeech")]
    assert cut_targets(read_cuts(out, "test", "s2tt", [clips])) == expected["test"]
