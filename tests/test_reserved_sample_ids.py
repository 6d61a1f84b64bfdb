"""Sample ids ending in ``_dup<N>`` are refused when a manifest is read: evaluation leaves such ids
out of the scores (they name the padding duplicates Lhotse adds under DDP), so a real sample named
so would otherwise vanish from the metrics without a word."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from lhotse import CutSet, MonoCut, Recording, SupervisionSegment

from ahamask_lightning.data import ManifestDataModule, is_padding_duplicate

RESERVED_ID = "reserved_id"  # the reason in the rejects files

IDS = ["spk1_take", "spk1_dup1", "spk2_dup23", "dup3", "x_dup", "x_duplicate"]
RESERVED = {"spk1_dup1", "spk2_dup23"}


def _wav(root: Path, name: str) -> str:
    path = root / f"{name}.wav"
    sf.write(str(path), (0.1 * np.random.default_rng(len(name)).standard_normal(8000)).astype("float32"), 16000)
    return str(path)


def _jsonl(root: Path) -> str:
    path = root / "test.jsonl"
    path.write_text("".join(json.dumps({"id": sid, "audio": _wav(root, sid), "task": "gr", "text": "Male"}) + "\n"
                            for sid in IDS))
    return str(path)


def _cuts(root: Path) -> str:
    cuts = []
    for sid in IDS:
        rec = Recording.from_file(_wav(root, sid), recording_id=sid)
        text = SupervisionSegment(id=sid, recording_id=sid, start=0.0, duration=rec.duration, text="Male")
        cuts.append(MonoCut(id=sid, start=0.0, duration=rec.duration, channel=0, recording=rec, supervisions=[text],
                            custom={"task": "gr"}))
    path = root / "test.cuts.jsonl.gz"
    CutSet.from_cuts(cuts).to_file(path)
    return str(path)


@pytest.mark.parametrize("make", [_jsonl, _cuts], ids=["jsonl", "cuts"])
def test_ids_of_the_padding_duplicates_form_are_rejected_with_the_reason(
        tmp_path: Path, make, caplog: pytest.LogCaptureFixture) -> None:
    manifest = make(tmp_path)
    dm = ManifestDataModule(test=manifest, known_tasks={"gr"}, batch_size=8)
    with caplog.at_level(logging.WARNING, logger="ahamask_lightning.data"):
        ids = [s["id"] for batch in dm.test_dataloader()[0] for s in batch]
    assert ids == [sid for sid in IDS if sid not in RESERVED]
    # nothing that reaches evaluation looks like a padding duplicate, and nothing else was refused
    assert not any(is_padding_duplicate(sid) for sid in ids)
    assert all(is_padding_duplicate(sid) for sid in RESERVED)
    assert dm.reject_summary() == {RESERVED_ID: len(RESERVED)}
    logged = [r.getMessage() for r in caplog.records if RESERVED_ID in r.getMessage()]
    assert len(logged) == len(RESERVED)
    for line, sid in ((2, "spk1_dup1"), (3, "spk2_dup23")):
        [message] = [m for m in logged if f"{manifest}:{line}:" in m]
        assert sid in message and "padding duplicates" in message and "\n" not in message
