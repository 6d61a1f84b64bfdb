"""Corpus preparers, part 2: LibriSpeech, TED-LIUM and Common Voice (through Lhotse's recipes), each
from a fake tree in its release's layout, targets compared with the tree's own metadata."""
from __future__ import annotations

import argparse
import json
import shutil
from contextlib import nullcontext

import numpy as np
import pytest
import soundfile as sf
from corpus_helpers import (
    LIBRISPEECH_GENDERS,
    SR,
    cut_targets,
    fake_librispeech,
    read_cuts,
    write_audio,
    write_text,
)
from lhotse.audio import audio_backend

from ahamask_lightning.tasks import composite_target, get_task
from data_modules.prepare import add_arguments, prepare, run


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
    utts = fake_librispeech(corpus)
    out = tmp_path / "out"
    summary = prepare("librispeech", tmp_path, out)  # the parent of LibriSpeech/ is accepted too
    # speaker 99 has no gender; the missing flac is counted in each split it belongs to
    assert summary["skipped"] == {"no_gender": 1, "missing_audio": 2}  # train-clean-100 and train
    for split, subsets in (("dev-clean", {"dev-clean"}), ("test-clean", {"test-clean"}),
                           ("train-clean-100", {"train-clean-100"}), ("train", {"train-clean-100"})):
        expected = _expected_librispeech(utts, subsets)
        assert summary["counts"][split] == {task: len(t) for task, t in expected.items()}
        for task, targets in expected.items():
            cuts = read_cuts(out, split, task, [corpus])
            assert cut_targets(cuts) == targets
            for utt, cut in cuts.items():
                assert cut.duration == pytest.approx(utts[utt]["seconds"])
                assert cut.supervisions[0].speaker == utts[utt]["speaker"]
                assert cut.supervisions[0].gender == LIBRISPEECH_GENDERS.get(utts[utt]["speaker"])
    json_cut = read_cuts(out, "dev-clean", "json", [corpus])["26-495-0000"]
    assert get_task("json").parse(json_cut.supervisions[0].text) == {"gender": "Male", "transcript": "A MAN SPOKE"}
    assert json.loads((out / "summary.json").read_text())["counts"] == summary["counts"]
    assert json.loads((out / "corpus.json").read_text()) == {"audio_roots": [str(tmp_path)]}


def test_librispeech_skips_and_counts_an_unreadable_flac(tmp_path):
    """One corrupt flac (a download cut short) is counted as unreadable_audio; every other
    utterance is written (Lhotse's prepare_librispeech stops the whole run at it)."""
    corpus = tmp_path / "LibriSpeech"
    utts = fake_librispeech(corpus)
    bad = corpus / "dev-clean" / "19" / "198" / "19-198-0001.flac"
    bad.write_bytes(b"fLaC" + bad.read_bytes()[4:40])
    summary = prepare("librispeech", corpus, tmp_path / "out", splits=["dev-clean"])
    assert summary["skipped"] == {"unreadable_audio": 1}
    written = cut_targets(read_cuts(tmp_path / "out", "dev-clean", "asr", [corpus]))
    assert written == {u: v["text"] for u, v in utts.items() if v["subset"] == "dev-clean" and u != "19-198-0001"}


def test_librispeech_splits_filter_and_run(tmp_path, capsys):
    fake_librispeech(tmp_path / "LibriSpeech")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out = tmp_path / "out"
    args = parser.parse_args(["librispeech", "--root", str(tmp_path / "LibriSpeech"), "--out", str(out),
                              "--splits", "test-clean"])
    assert run(args) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[0] == f"test-clean/asr: 1 samples -> {out / 'manifests/test-clean/asr.cuts.jsonl.gz'}"
    assert sorted(p.name for p in (out / "manifests").iterdir()) == ["test-clean"]


@pytest.mark.parametrize("release, split_dir", [("TEDLIUM_release-3", "legacy/test"), ("TEDLIUM_release2", "test")])
def test_tedlium(tmp_path, release, split_dir):
    root = tmp_path / release  # release 3 keeps the classic split under legacy/ (prepare_tedlium), 2 at the top
    d = root / split_dir
    stm = {"AlGore_2009": [(0.50, 2.25, "<o,f0,male>", "i 'm here today"),
                           (2.25, 3.00, "<o,,unknown>", "ignore_time_segment_in_scoring"),
                           (3.00, 4.00, "<o,f0,unknown>", "some words")],
           "JaneDoe_2010": [(1.00, 2.00, "<o,f0,female>", "hello there")]}
    for talk, segments in stm.items():
        write_text(d / "stm" / f"{talk}.stm", "".join(f"{talk} 1 {talk} {s:.2f} {e:.2f} {label} {text}\n"
                                                 for s, e, label, text in segments))
        write_audio(d / "sph" / f"{talk}.sph", 4.5, fmt="NIST")
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
            cuts = read_cuts(out, "test", task, [root])
            assert cut_targets(cuts) == targets
            for sid, cut in cuts.items():
                talk, start, end = sid.rsplit("_", 2)
                assert (cut.start, cut.end) == pytest.approx((int(start) / 100, int(end) / 100))
                # the segment of the whole-talk recording, sample for sample
                whole, _ = sf.read(str(d / "sph" / f"{talk}.sph"), dtype="float32")
                np.testing.assert_allclose(cut.load_audio()[0], whole[round(cut.start * SR):round(cut.end * SR)],
                                           atol=1e-4)
    assert expected["gr"]["AlGore_2009_0000050_0000225"] == "Male"


def test_tedlium_skips_and_counts_a_talk_whose_sph_is_missing_or_unreadable(tmp_path):
    """Lhotse's recipe stops the whole preparation at a corrupt .sph (and at a split whose .sph and
    .stm counts differ); here such a talk's segments are skipped and counted, the others written."""
    d = tmp_path / "legacy" / "dev"
    two = "{t} 1 {t} 0.00 0.50 <o,f0,male> hi\n{t} 1 {t} 0.50 0.90 <o,f0,female> there\n"
    for talk in ("A_2001", "B_2002", "C_2003"):
        write_text(d / "stm" / f"{talk}.stm", two.format(t=talk))
    write_audio(d / "sph" / "A_2001.sph", 1.0, fmt="NIST")
    write_audio(d / "sph" / "C_2003.sph", 1.0, fmt="NIST")
    (d / "sph" / "C_2003.sph").write_bytes((d / "sph" / "C_2003.sph").read_bytes()[:100])  # cut short
    summary = prepare("tedlium", tmp_path, tmp_path / "out")
    assert summary["counts"] == {"dev": {"asr": 2, "gr": 2}}
    assert summary["skipped"] == {"missing_audio": 2, "unreadable_audio": 2}
    skipped = [json.loads(line) for line in (tmp_path / "out" / "skipped.jsonl").read_text().splitlines()]
    assert sorted((s["id"], s["reason"]) for s in skipped) == [
        ("B_2002_0000000_0000050", "missing_audio"), ("B_2002_0000050_0000090", "missing_audio"),
        ("C_2003_0000000_0000050", "unreadable_audio"), ("C_2003_0000050_0000090", "unreadable_audio")]


CV_HEADER = "client_id\tpath\tsentence_id\tsentence\tsentence_domain\tup_votes\tdown_votes\tage\tgender\taccents\t" \
            "variant\tlocale\tsegment\n"


def _cv_row(client: str, path: str, sentence: str, gender: str) -> str:
    return f"{client}\t{path}\tsid\t{sentence}\t\t2\t0\ttwenties\t{gender}\tUS\t\ten\t\n"


def test_commonvoice(tmp_path):
    root = tmp_path / "cv-corpus-17.0" / "en"
    genders = {"a": "male", "b": "female_feminine", "c": "male_masculine", "d": "do_not_wish_to_say", "e": ""}
    rows = "".join(_cv_row(f"c{k}", f"cv_{k}.mp3", f"Sentence {k}.", g) for k, g in genders.items())
    write_text(root / "test.tsv", CV_HEADER + rows + _cv_row("cz", "missing.mp3", "Gone.", "male")
               + _cv_row("cy", "broken.mp3", "Cut short.", "male"))
    write_text(root / "clips" / "broken.mp3", "ID3 not an mp3")  # a download cut short: unreadable
    write_text(root / "validated.tsv", CV_HEADER + rows)
    for i, k in enumerate(genders):
        write_audio(root / "clips" / f"cv_{k}.mp3", 0.5 + 0.25 * i, fmt="MP3")
    out = tmp_path / "out"
    summary = prepare("commonvoice", root.parent, out, lang="en")  # cv-corpus dir + lang
    expected_asr = {f"cv_en_cv_{k}": f"Sentence {k}." for k in genders}
    expected_gr = {f"cv_en_cv_{k}": {"male": "Male", "male_masculine": "Male", "female_feminine": "Female"}[g]
                   for k, g in genders.items() if g in ("male", "male_masculine", "female_feminine")}
    assert summary["counts"] == {"test": {"asr": 5, "gr": 3}}  # validated only when asked for
    assert summary["skipped"] == {"missing_audio": 1, "no_gender": 1, "other_gender": 1, "unreadable_audio": 1}
    assert any("mp3" in note for note in summary["notes"])
    asr = read_cuts(out, "test", "asr", [root])
    assert cut_targets(asr) == expected_asr and cut_targets(read_cuts(out, "test", "gr", [root])) == expected_gr
    for i, k in enumerate(genders):
        assert asr[f"cv_en_cv_{k}"].duration == pytest.approx(0.5 + 0.25 * i, abs=0.03)  # mp3 frames
        assert asr[f"cv_en_cv_{k}"].supervisions[0].speaker == f"c{k}"
    only = prepare("commonvoice", root, tmp_path / "out2", splits=["validated"])
    assert only["counts"] == {"validated": {"asr": 5, "gr": 3}}


def test_commonvoice_older_releases_and_missing_columns(tmp_path):
    """A release before 15.0 (``accent``, no ``variant``) prepares; a table without the columns
    read (here ``gender``) stops in one line naming it."""
    root = tmp_path / "en"
    write_text(root / "test.tsv", "client_id\tpath\tsentence\tup_votes\tdown_votes\tage\tgender\taccent\n"
          "c1\tcv_a.wav\tHello.\t2\t0\t\tmale\t\n")
    write_audio(root / "clips" / "cv_a.wav", 0.3)
    summary = prepare("commonvoice", root, tmp_path / "out")
    assert summary["counts"] == {"test": {"asr": 1, "gr": 1}}
    write_text(root / "dev.tsv", "client_id\tpath\tsentence\tage\taccents\n")
    with pytest.raises(ValueError, match=r"dev\.tsv: missing column\(s\) gender;") as err:
        prepare("commonvoice", root, tmp_path / "out2")
    assert "\n" not in str(err.value)
