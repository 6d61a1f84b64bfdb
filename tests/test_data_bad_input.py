"""Bad samples are skipped, logged, counted by reason and written to the rejects files."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ahamask_lightning.data import ManifestDataModule, read_reject_files

# id -> expected reason (None: a good sample, even if unusual).
EXPECTED = {
    "good": None,
    "rate8k": None,  # another sample rate: resampled
    "sixch": None,  # many channels: first one
    "missing": "missing_file",
    "corrupt": "unreadable_audio",
    "empty": "empty_audio",
    "nan": "nan_or_inf",
    "inf": "nan_or_inf",
    "long": "too_long",
    "notext": "empty_target",
    "blank": "empty_target",
    "task": "unknown_task",
}


def build(root: Path) -> str:
    """A manifest holding every kind of bad line next to good ones (paths relative to root)."""
    audio = root / "audio"
    audio.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def wav(name: str, data: np.ndarray, rate: int = 16000) -> str:
        sf.write(audio / name, data.astype("float32"), rate, subtype="FLOAT")
        return f"audio/{name}"

    noise = 0.1 * rng.standard_normal(8000)
    files = {
        "good": wav("good.wav", noise),
        "rate8k": wav("rate8k.wav", noise, 8000),
        "sixch": wav("sixch.wav", np.tile(noise[:, None], (1, 6))),
        "missing": "audio/nowhere.wav",
        "empty": wav("empty.wav", np.zeros(0)),
        "nan": wav("nan.wav", np.where(np.arange(8000) == 700, np.nan, noise)),
        "inf": wav("inf.wav", np.where(np.arange(8000) == 9, np.inf, noise)),
        "long": wav("long.wav", np.zeros(8000 * 3), 8000),
        "notext": "audio/good.wav",
        "blank": "audio/good.wav",
        "task": "audio/good.wav",
    }
    (audio / "corrupt.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunkjunkjunk" * 3)
    files["corrupt"] = "audio/corrupt.wav"
    man = root / "manifests" / "test" / "mixed.jsonl"
    man.parent.mkdir(parents=True)
    lines = []
    for sid, rel in files.items():
        row = {"id": sid, "audio": rel, "task": "gr", "text": "Male"}
        if sid == "notext":
            del row["text"]
        if sid == "blank":
            row["text"] = "   "
        if sid == "task":
            row["task"] = "karaoke"
        lines.append(json.dumps(row))
    lines.insert(3, '{"id": "broken", "audio": "audio/good.wav", "task": ')  # malformed JSON: line 4
    lines.insert(5, "")  # a blank line is layout, not a sample
    man.write_text("\n".join(lines) + "\n")
    return str(man)


@pytest.mark.parametrize("workers", [0, 2])
def test_each_bad_case_gets_its_reason(tmp_path: Path, workers: int, caplog: pytest.LogCaptureFixture) -> None:
    man = build(tmp_path / "data")
    rejects = tmp_path / "run" / "rejects.jsonl"
    dm = ManifestDataModule(val=man, batch_size=4, num_workers=workers, max_seconds=2.0,
                            known_tasks={"gr"}, rejects_path=str(rejects))
    dm.setup("validate")
    with caplog.at_level(logging.WARNING, logger="ahamask_lightning.data"):
        samples = [s for b in dm.val_dataloader()[0] for s in b]
    assert sorted(s["id"] for s in samples) == ["good", "rate8k", "sixch"]
    assert all(s["audio"].numel() == 16000 for s in samples)

    found = read_reject_files(str(rejects))
    entries = [json.loads(t) for p in sorted(rejects.parent.glob("rejects.val.r0w*.jsonl")) for t in p.open()]
    by_id = {e["id"]: e for e in entries}
    for sid, reason in EXPECTED.items():
        if reason is not None:
            assert by_id[sid]["reason"] == reason, sid
            assert found[(man, by_id[sid]["line"])] == reason
    assert by_id[None]["reason"] == "malformed_json" and by_id[None]["line"] == 4
    assert all(e["manifest"] == man and e["stage"] == "val" for e in entries)

    summary = dm.reject_summary()
    assert summary == {"empty_audio": 1, "empty_target": 2, "malformed_json": 1, "missing_file": 1,
                       "nan_or_inf": 2, "too_long": 1, "unknown_task": 1, "unreadable_audio": 1}
    if workers == 0:  # worker processes log in their own process, beyond caplog's reach
        assert any(f"{man}:4:" in r.getMessage() and "malformed_json" in r.getMessage() for r in caplog.records)

    # A second pass counts the same bad samples once.
    list(dm.val_dataloader()[0])
    assert dm.reject_summary() == summary


def test_counts_reach_the_main_process_without_a_rejects_file(tmp_path: Path) -> None:
    man = build(tmp_path / "data")
    dm = ManifestDataModule(train=man, batch_size=2, num_workers=2, max_seconds=2.0, known_tasks={"gr"})
    assert len([s for b in dm.train_dataloader() for s in b]) == 3
    assert sum(dm.reject_summary().values()) == 10


def test_all_bad_manifest_stops_with_a_clear_error(tmp_path: Path) -> None:
    man = tmp_path / "bad.jsonl"
    man.write_text('{"id": "a", "audio": "x.wav", "task": "gr", "text": "Male"}\nnot json\n'
                   '{"id": "c", "audio": "y.wav", "task": "gr", "text": ""}\n')
    dm = ManifestDataModule(train=str(man), known_tasks={"gr"})
    with pytest.raises(RuntimeError) as err:
        list(dm.train_dataloader())
    message = str(err.value)
    assert "\n" not in message and message.startswith(str(man))
    assert "no valid samples: 3 rejected" in message
    assert "empty_target=1" in message and "malformed_json=1" in message and "missing_file=1" in message


def test_missing_or_empty_manifest_fails_at_setup(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        ManifestDataModule(train=str(tmp_path / "none.jsonl")).setup("fit")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(ValueError, match="no valid samples"):
        ManifestDataModule(train=str(empty)).setup("fit")


def test_unknown_task_uses_the_registry_by_default(tmp_path: Path) -> None:
    man = build(tmp_path / "data")
    dm = ManifestDataModule(val=man, max_seconds=2.0)
    if dm.known_tasks is None:
        pytest.skip("task registry not importable")
    assert "gr" in dm.known_tasks and "karaoke" not in dm.known_tasks
    list(dm.val_dataloader()[0])
    assert dm.reject_summary()["unknown_task"] == 1
