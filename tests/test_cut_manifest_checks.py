"""Malformed lines of a Lhotse cut manifest are rejected with their reason, in one log line naming
file:line, and the rest of the manifest streams (they used to crash the run mid-epoch)."""
from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from lhotse import MonoCut, Recording, SupervisionSegment

from ahamask_lightning.data import ManifestDataModule
from ahamask_lightning.data.audio import AudioConfig
from ahamask_lightning.data.cuts import ManifestCuts
from ahamask_lightning.data.manifest import BAD_LABEL, MALFORMED_JSON, MISSING_FIELD


def _good(tmp_path: Path, cid: str) -> dict:
    path = tmp_path / f"{cid}.wav"
    sf.write(str(path), (0.1 * np.random.default_rng(len(cid)).standard_normal(8000)).astype("float32"), 16000)
    rec = Recording.from_file(str(path), recording_id=cid)
    text = SupervisionSegment(id=cid, recording_id=cid, start=0.0, duration=rec.duration, text="Male")
    return MonoCut(id=cid, start=0.0, duration=rec.duration, channel=0, recording=rec, supervisions=[text],
                   custom={"task": "gr"}).to_dict()


def _set(*keys: str, value: object) -> Callable[[dict], None]:
    def edit(d: dict) -> None:
        for key in keys[:-1]:
            d = d[key]
        d[keys[-1]] = value
    return edit


# each: a hand-edited or merged line Lhotse deserialises (or fails to) without a word
MUTATIONS: dict[str, tuple[Callable[[dict], None], str]] = {
    "recording null": (_set("recording", value=None), MALFORMED_JSON),
    "duration a string": (_set("duration", value="0.5"), MALFORMED_JSON),
    "custom a list": (_set("custom", value=[1]), MALFORMED_JSON),
    "task a list": (_set("custom", "task", value=["gr"]), MALFORMED_JSON),
    "recording duration a string": (_set("recording", "duration", value="x"), MALFORMED_JSON),
    "meta a string": (_set("custom", "meta", value="x"), MALFORMED_JSON),
    "source an integer": (lambda d: d["recording"]["sources"][0].__setitem__("source", 5), MALFORMED_JSON),
    "audio_b not a recording": (_set("custom", "audio_b", value={"id": "b"}), MALFORMED_JSON),
    "channel not in the recording": (_set("channel", value=5), MISSING_FIELD),
    "gr target not a label": (lambda d: d["supervisions"][0].__setitem__("text", "Mail"), BAD_LABEL),
}


def _manifest(tmp_path: Path, mutate: Callable[[dict], None]) -> Path:
    bad = copy.deepcopy(_good(tmp_path, "bad"))
    mutate(bad)
    lines = [_good(tmp_path, "first"), bad, _good(tmp_path, "third")]
    path = tmp_path / "train.cuts.jsonl"
    path.write_text("".join(json.dumps(obj) + "\n" for obj in lines))
    return path


@pytest.mark.parametrize("case", sorted(MUTATIONS))
def test_a_malformed_cut_line_is_rejected_and_the_rest_streams(tmp_path: Path, case: str) -> None:
    mutate, reason = MUTATIONS[case]
    path = _manifest(tmp_path, mutate)
    rejects = []
    cuts = list(ManifestCuts([str(path)], AudioConfig(), rejects.append, known_tasks={"gr"}))
    assert [c.id for c in cuts] == ["first", "third"]
    assert [(r.manifest, r.line, r.reason) for r in rejects] == [(str(path), 2, reason)]
    assert rejects[0].detail and "\n" not in rejects[0].detail


@pytest.mark.parametrize("case", ["meta a string", "recording null", "task a list"])
def test_the_loader_logs_one_line_naming_file_and_line(tmp_path: Path, case: str,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    path = _manifest(tmp_path, MUTATIONS[case][0])
    dm = ManifestDataModule(val=str(path), known_tasks={"gr"}, batch_size=4)
    with caplog.at_level(logging.WARNING, logger="ahamask_lightning.data"):
        ids = [s["id"] for batch in dm.val_dataloader()[0] for s in batch]
    assert ids == ["first", "third"]
    lines = [r.getMessage() for r in caplog.records if f"{path}:2:" in r.getMessage()]
    assert len(lines) == 1 and MUTATIONS[case][1] in lines[0] and "\n" not in lines[0]
    assert dm.reject_summary() == {MUTATIONS[case][1]: 1}
