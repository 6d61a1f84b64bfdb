"""SynthSpeech generator: determinism, labels read from espeak data, manifest/audio validity."""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
from collections import Counter
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    shutil.which("espeak-ng") is None or shutil.which("sox") is None, reason="needs espeak-ng and sox"
)

from data_modules.synth import SPLITS, add_arguments, grammar, run, synthesize, voices
from data_modules.synth.corpus import asv_pairs

VOICES = ["m1", "m3", "m7", "f1", "f2", "f4"]
KEYS = {"id", "audio", "task", "text", "duration", "meta"}
META_KEYS = {"speaker", "voice", "variant", "gender", "rate", "pitch", "words"}


def _tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def _read(out: Path, split: str, task: str) -> list[dict]:
    with open(out / "manifests" / split / f"{task}.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth") / "a"
    return out, synthesize(out, n=40, seed=3, voices=VOICES, n_scenes=10, workers=2)


def test_deterministic_and_seed_dependent(corpus: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = corpus
    again = synthesize(tmp_path / "b", n=40, seed=3, voices=VOICES, n_scenes=10, workers=1)
    assert _tree_hash(out) == _tree_hash(tmp_path / "b")
    assert again == json.loads((out / "summary.json").read_text())
    synthesize(tmp_path / "c", n=40, seed=4, voices=VOICES, n_scenes=10)
    assert _read(out, "train", "asr") != _read(tmp_path / "c", "train", "asr")
    assert _tree_hash(out / "audio") != _tree_hash(tmp_path / "c" / "audio")


def test_gender_read_from_variant_files(tmp_path: Path) -> None:
    assert voices.read_variant_gender("m3") == "male"
    assert voices.read_variant_gender("f2") == "female"
    assert voices.read_variant_gender("klatt") is None  # no gender line
    genders = voices.variant_genders()
    assert "klatt" not in genders and genders["m1"] == "male" and genders["f4"] == "female"
    # the parser itself, on a synthetic data dir
    vdir = tmp_path / "voices" / "!v"
    vdir.mkdir(parents=True)
    (vdir / "x").write_text("language variant\nname x\ngender Female 30\n")
    (vdir / "y").write_text("language variant\ngender neutral\n")
    assert voices.read_variant_gender("x", str(tmp_path)) == "female"
    assert voices.read_variant_gender("y", str(tmp_path)) is None


def test_manifests_valid(corpus: tuple[Path, dict]) -> None:
    out, summary = corpus
    vocab = grammar.vocabulary()
    for split in SPLITS:
        tasks = ("asr", "gr", "src", "gr_asr", "json", "asv") + (() if split == "test_ood" else ("aac",))
        for task in tasks:
            lines = _read(out, split, task)
            assert len(lines) == summary["counts"][split][task]
            if task != "asv":
                assert lines, (split, task)
            for d in lines:
                assert set(d) == KEYS and d["task"] == task and "instruction" not in d
                paths = d["audio"] if task == "asv" else [d["audio"]]
                assert all(not Path(p).is_absolute() and (out / p).is_file() for p in paths)
                assert isinstance(d["duration"], float) and d["duration"] > 0
                if task == "aac":
                    assert d["text"].startswith("a") and len(d["meta"]["events"]) in (1, 2, 3)
                    continue
                assert META_KEYS <= set(d["meta"])
                if task == "asr":
                    words = d["text"].split()
                    assert 3 <= len(words) <= 8 and set(words) <= vocab and d["text"] == d["text"].lower()
                    assert len(words) == d["meta"]["words"]
                if task == "gr":
                    assert d["text"] == d["meta"]["gender"].capitalize() in ("Male", "Female")
                if task == "src":
                    assert d["text"] == d["meta"]["rate"] in ("slow", "normal", "fast")
    ids = [d["id"] for s in SPLITS for t in ("asr", "gr") for d in _read(out, s, t)]
    assert len(ids) == len(set(ids))


def test_utterances_shared_across_tasks_and_splits_disjoint(corpus: tuple[Path, dict]) -> None:
    out, _ = corpus
    seen: dict[str, str] = {}
    for split in SPLITS:
        audios = {t: [d["audio"] for d in _read(out, split, t)] for t in ("asr", "gr", "src", "gr_asr", "json")}
        assert len({tuple(a) for a in audios.values()}) == 1  # same wavs, same order
        for a in audios["asr"]:
            assert seen.setdefault(a, split) == split
    train = len(_read(out, "train", "asr"))
    assert train == 32 and len(_read(out, "val", "asr")) == len(_read(out, "test", "asr")) == 4


def test_wavs_16k_mono_nonsilent(corpus: tuple[Path, dict]) -> None:
    import numpy as np
    import soundfile as sf

    out, _ = corpus
    lines = _read(out, "train", "asr")[:8] + _read(out, "train", "aac")[:4] + _read(out, "test_ood", "asr")[:4]
    for d in lines:
        x, sr = sf.read(out / d["audio"], dtype="float32")
        info = sf.info(out / d["audio"])
        assert sr == 16000 and x.ndim == 1 and info.subtype == "PCM_16"
        assert np.sqrt(np.mean(x**2)) > 0.01
        assert abs(len(x) / sr - d["duration"]) < 0.01
    durs = [d["duration"] for s in SPLITS for d in _read(out, s, "asr")]
    assert 0.8 < min(durs) and max(durs) < 4.5


def test_ood_voices_disjoint_and_both_genders(corpus: tuple[Path, dict]) -> None:
    out, summary = corpus
    ood, ind = summary["voices"]["ood"], summary["voices"]["in_domain"]
    assert set(ood).isdisjoint(ind) and set(ood.values()) == {"male", "female"}
    assert Counter(ind.values())["male"] == Counter(ind.values())["female"] > 0
    for split in ("train", "val", "test"):
        assert {d["meta"]["variant"] for d in _read(out, split, "asr")} <= set(ind)
    ood_lines = _read(out, "test_ood", "gr")
    assert len(ood_lines) == 4 and {d["meta"]["variant"] for d in ood_lines} <= set(ood)


def test_balance(corpus: tuple[Path, dict]) -> None:
    out, _ = corpus
    train = _read(out, "train", "asr") + _read(out, "val", "asr") + _read(out, "test", "asr")
    rates = Counter(d["meta"]["rate"] for d in train)
    genders = Counter(d["meta"]["gender"] for d in train)
    assert max(rates.values()) - min(rates.values()) <= 1 and len(rates) == 3
    assert genders["male"] == genders["female"]


def test_asv_pairs(corpus: tuple[Path, dict]) -> None:
    out, _ = corpus
    lines = _read(out, "train", "asv")
    labels = Counter(d["text"] for d in lines)
    assert labels["Yes"] == labels["No"] > 0 and set(labels) == {"Yes", "No"}
    for d in lines:
        a, b = d["audio"]
        sa, sb = d["meta"]["speaker"]
        assert a != b
        assert (sa == sb) == (d["text"] == "Yes")
        assert abs(d["duration"] - sum(d["meta"]["durations"])) < 1e-3


def test_dense_asv_pairs(corpus: tuple[Path, dict]) -> None:
    out, summary = corpus
    lines = _read(out, "train", "asv_dense")
    n_train = len(_read(out, "train", "asr"))
    assert len(lines) == 4 * n_train == summary["counts"]["train"]["asv_dense"]
    assert len({d["id"] for d in lines}) == len(lines)
    assert not {d["id"] for d in lines} & {d["id"] for d in _read(out, "train", "asv")}
    labels = Counter(d["text"] for d in lines)
    assert labels["Yes"] == labels["No"]
    negatives = [d for d in lines if d["text"] == "No"]
    same_gender = sum(d["meta"]["gender"][0] == d["meta"]["gender"][1] for d in negatives)
    # hard_share 0.75, plus the random draws that land on the same gender by chance
    assert same_gender / len(negatives) > 0.75
    for d in lines:
        assert (d["meta"]["speaker"][0] == d["meta"]["speaker"][1]) == (d["text"] == "Yes")
    for split in ("val", "test", "test_ood"):  # a training aid only
        assert not (out / "manifests" / split / "asv_dense.jsonl").exists()


def test_asv_pairs_hard_share_keeps_default_draws() -> None:
    utts = [{"id": f"u{i}", "path": f"{i}.wav", "speaker": f"s{i % 6}", "gender": "male" if i % 6 < 3 else "female",
             "voice": "en", "variant": "v", "rate_class": "normal", "rate": 160, "pitch": 50, "text": "a b",
             "duration": 1.0} for i in range(48)]
    default = asv_pairs(utts, random.Random(0), "train")
    # the draws of the generator before n_each/hard_share existed: corpora already made keep their pairs
    rng, before = random.Random(0), []
    for _ in range(48 // 4):
        a = rng.choice(utts)
        before.append((a["id"], rng.choice([v for v in utts if v["speaker"] == a["speaker"] and v is not a])["id"]))
        a = rng.choice(utts)
        before.append((a["id"], rng.choice([v for v in utts if v["speaker"] != a["speaker"]])["id"]))
    rng.shuffle(before)
    assert [tuple(d["meta"]["utt"]) for d in default] == before
    hard = asv_pairs(utts, random.Random(0), "train", n_each=50, hard_share=1.0)
    assert len(hard) == 100
    assert all(d["meta"]["gender"][0] == d["meta"]["gender"][1] for d in hard if d["text"] == "No")


def test_composite_targets(corpus: tuple[Path, dict]) -> None:
    out, _ = corpus
    asr = {d["audio"]: d["text"] for d in _read(out, "val", "asr")}
    gr = {d["audio"]: d["text"] for d in _read(out, "val", "gr")}
    for d in _read(out, "val", "gr_asr"):
        g, text = d["text"].split("|")
        assert g == gr[d["audio"]] and text == asr[d["audio"]]
    for d in _read(out, "val", "json"):
        obj = json.loads(d["text"])
        assert set(obj) == {"ASR", "GR"} and obj == {"ASR": asr[d["audio"]], "GR": gr[d["audio"]]}


def test_cli_run_and_resume(corpus: tuple[Path, dict], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out, _ = corpus
    target = tmp_path / "cli"
    shutil.copytree(out, target)
    victim = target / _read(target, "train", "asr")[0]["audio"]
    victim.unlink()  # resume must re-create exactly the missing file
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--out", str(target), "--n", "40", "--seed", "3", "--scenes", "10",
                              "--voices", *VOICES])
    assert run(args) == 0
    printed = capsys.readouterr().out
    assert "train" in printed and "asv" in printed and "test_ood" in printed
    assert _tree_hash(target) == _tree_hash(out)
    with pytest.raises(ValueError):
        synthesize(tmp_path / "bad", n=4, voices=["m1", "nosuchvoice"])


def test_asr_extra_adds_training_sentences_and_changes_nothing_else(corpus: tuple[Path, dict],
                                                                     tmp_path: Path) -> None:
    out, _ = corpus
    summary = synthesize(tmp_path / "x", n=40, seed=3, voices=VOICES, n_scenes=10, workers=2, asr_extra=30)
    extra = _read(tmp_path / "x", "train", "asr_extra")
    assert len(extra) == summary["counts"]["train"]["asr_extra"] == 30  # no collision expected at this size
    for split in SPLITS:
        for manifest in sorted((out / "manifests" / split).glob("*.jsonl")):
            assert manifest.read_bytes() == (tmp_path / "x" / "manifests" / split / manifest.name).read_bytes()
    train_speakers = {d["meta"]["speaker"] for d in _read(out, "train", "asr")}
    assert {d["meta"]["speaker"] for d in extra} <= train_speakers
    assert all(d["task"] == "asr" and (tmp_path / "x" / d["audio"]).is_file() for d in extra)
    assert len({d["id"] for d in extra}) == 30
    for split in ("val", "test", "test_ood"):
        assert not (tmp_path / "x" / "manifests" / split / "asr_extra.jsonl").exists()


def test_asr_extra_leaves_out_held_out_sentences(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    words = sorted(grammar.vocabulary())[:60]
    calls = iter(range(10**6))  # sentence k of every plan is the k-th of 50, so the extra plan repeats the first
    monkeypatch.setattr(grammar, "sentence", lambda rng, lo=3, hi=8: f"the {words[next(calls) % 50]} runs")
    synthesize(tmp_path, n=40, seed=3, voices=VOICES, n_scenes=2, workers=2, asr_extra=40)
    held = {d["text"] for s in ("val", "test", "test_ood") for d in _read(tmp_path, s, "asr")}
    extra = [d["text"] for d in _read(tmp_path, "train", "asr_extra")]
    planned = [f"the {words[k % 50]} runs" for k in range(44, 84)]  # after 40 in-domain + 4 OOD sentences
    assert held & set(planned)  # the patched grammar does collide
    assert extra == [t for t in planned if t not in held]
