"""Fake corpora for the corpus-preparer tests: audio and text writers, the LibriSpeech and CoVoST
trees two test files share, and the CutSet reader that checks every cut against the AHAMask cut
convention."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from lhotse import CutSet, MonoCut

from ahamask_lightning.tasks import get_task

SR = 16000
CUSTOM_KEYS = {"task", "instruction", "meta", "audio_b", "audio_b_unaligned"}


def write_audio(path: Path, seconds: float = 0.1, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    noise = np.random.default_rng(len(str(path))).normal(0, 0.1, round(SR * seconds)).astype("float32")
    sf.write(str(path), noise, SR, format=fmt)
    return path


def write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def read_cuts(out: Path, split: str, task: str, roots: list[Path]) -> dict[str, MonoCut]:
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


def cut_targets(cuts: dict[str, MonoCut]) -> dict[str, str]:
    return {i: c.supervisions[0].text for i, c in cuts.items()}


def fake_librispeech(root: Path) -> dict[str, dict]:
    """Fake LibriSpeech; returns utterance id -> subset, speaker, transcript, seconds (None: no flac)."""
    write_text(root / "SPEAKERS.TXT", ";ID  |SEX| SUBSET           |MINUTES| NAME\n"
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
                write_audio(d / f"{utt}.flac", seconds, fmt="FLAC")
            utts[utt] = {"subset": subset, "speaker": spk, "text": text, "seconds": seconds}
        write_text(d / f"{spk}-{ch}.trans.txt", "\n".join(lines) + "\n")
    return utts


LIBRISPEECH_GENDERS = {"19": "Female", "26": "Male"}


def write_covost_tsv(path: Path, rows: list[list[str]]) -> Path:
    """A table as CoVoST's get_covost_splits.py writes it (pandas ``to_csv`` with ``escapechar="\\"``
    and no quoting, which is the csv module's writer): a ``"`` of the text becomes ``\\"``."""
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f, delimiter="\t", escapechar="\\", quoting=csv.QUOTE_NONE, lineterminator="\n").writerows(rows)
    return path


def fake_covost(root: Path, clips: Path) -> dict[str, dict[str, str]]:
    header = ["path", "sentence", "translation", "client_id"]
    write_covost_tsv(root / "covost_v2.en_zh-CN.train.tsv",
                     [header, ["common_voice_en_1.wav", 'He said "hi".', '他说"嗨"。', "c1"]])
    write_covost_tsv(root / "covost_v2.en_zh-CN.test.tsv",
                     [header, ["common_voice_en_2.wav", "Good.", "好。", "c2"], ["common_voice_en_3.wav", "Lost.", "丢失。", "c3"]])
    write_audio(clips / "common_voice_en_1.wav", 0.2)
    write_audio(clips / "common_voice_en_2.wav", 0.1)
    return {"train": {"covost_common_voice_en_1": '他说"嗨"。'}, "test": {"covost_common_voice_en_2": "好。"}}
