"""Bad samples a held-out probe mixed into a manifest: each is skipped and recorded once per run,
and the fit runs to its end, with the data read in the main process and in a worker."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import Run, ahamask_lines, fit_command, write_config, write_wavs

from ahamask_lightning.data import ManifestDataModule


def probe_manifest(root: Path, n_good: int = 8) -> tuple[Path, dict[str, str]]:
    """``n_good`` good samples with one line of each probe case between them; returns the manifest
    and {id: expected reason} of the bad lines."""
    good = [json.dumps(r).encode() for r in write_wavs(root, n_good, seed=3)]
    audio = root / "audio"
    noise = (0.1 * np.random.default_rng(1).standard_normal(16000)).astype("float32")
    outside = root.parent / f"outside-{root.name}.wav"  # a good file beside the corpus, not in it
    sf.write(outside, noise, 16000)
    sf.write(audio / "whole.wav", noise, 16000, subtype="PCM_16")
    whole = (audio / "whole.wav").read_bytes()
    (audio / "cut.wav").write_bytes(whole[: 44 + (len(whole) - 44) // 3])  # header promises 3x the body
    os.symlink("loop.wav", audio / "loop.wav")
    row = {"audio": "audio/g000.wav", "task": "gr", "text": "Male"}
    cases = {
        "seg-text": ({**row, "meta": {"start": "abc", "end": 1.0}}, "bad_segment"),
        "seg-null": ({**row, "meta": {"start": None, "end": 1.0}}, "bad_segment"),
        "latin1": ({**row, "text": "M\u00e2le"}, "bad_encoding"),
        "essay": ({**row, "text": "word " * 4000}, "target_too_long"),
        "climb": ({**row, "audio": f"../{outside.name}"}, "path_outside_root"),
        "absolute": ({**row, "audio": str(outside)}, "path_outside_root"),
        "cut": ({**row, "audio": "audio/cut.wav"}, "truncated_audio"),
        "loop": ({**row, "audio": "audio/loop.wav"}, "symlink_loop"),
    }
    bad = []
    for sid, (obj, _) in cases.items():
        line = json.dumps({"id": sid, **obj}).encode()
        if sid == "latin1":
            line = line.replace(b"\\u00e2", b"\xe2")  # one Latin-1 byte: the line is not UTF-8
        bad.append(line)
    lines = [x for pair in zip(good, bad) for x in pair] + good[len(bad):] + bad[len(good):]
    man = root / "train.jsonl"
    man.write_bytes(b"\n".join(lines) + b"\n")
    return man, {sid: reason for sid, (_, reason) in cases.items()}


@pytest.fixture(scope="module")
def probe(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    return probe_manifest(tmp_path_factory.mktemp("probe"))


@pytest.mark.parametrize("workers", [0, 1])
@pytest.mark.fault("probe bad lines (meta.start 'abc' and null, Latin-1 text, 20,000-character target, ../ and "
                   "absolute paths out of the corpus, a cut WAV, a symlink loop) over 3 epochs",
                   kept="fit finishes all 3 epochs on the good samples only; each bad line rejected with its "
                        "reason, one rejects-file line and one warning per bad line for the run")
def test_probe_lines_are_skipped_once_and_the_fit_finishes(probe, tmp_path, workers):
    man, expected = probe
    root = tmp_path / "root"
    cfg = write_config(tmp_path / "fit.yaml", root, man, every=100, max_steps=-1)
    run = Run(fit_command(cfg, "--trainer.max_epochs", "3", "--data.num_workers", str(workers)), tmp_path / "faults")
    assert run.wait(timeout=300) == 0, run.stderr()
    err = run.stderr()
    assert "Traceback" not in err
    report = json.loads(next(root.rglob("fit_report.json")).read_text())
    assert report["status"] == "finished" and report["epoch"] == 3
    counts: dict[str, int] = {}
    for reason in expected.values():
        counts[reason] = counts.get(reason, 0) + 1
    assert report["rejected"] == {"train": dict(sorted(counts.items()))}
    # nothing bad was trained on, every good sample was, in every epoch
    # (a batch that held a sample with bad audio trains on the rest of it: 4 or 5 steps an epoch)
    steps = run.steps()
    assert len(steps) == report["global_step"] >= 12
    seen = [i for ids in steps.values() for i in ids]
    assert sorted(seen) == sorted([f"g{i:03d}" for i in range(8)] * 3)
    # one rejects-file line per bad sample for the whole run (not one per epoch)
    entries = [json.loads(t) for f in report["rejects_files"] for t in Path(f).read_text().splitlines()]
    assert sorted(e["id"] for e in entries) == sorted(expected)
    assert {e["id"]: e["reason"] for e in entries} == expected
    # and one warning per bad sample, naming the manifest line and the reason
    warned = re.findall(rf"{re.escape(str(man))}:(\d+): skipped bad sample (\S+): (\w+)", err)
    assert sorted(sid for _, sid, _ in warned) == sorted(expected), err
    assert len(ahamask_lines(err)) == 1 and "samples rejected" in ahamask_lines(err)[0]


@pytest.mark.parametrize("workers", [0, 2])
def test_rejects_are_written_once_per_run_across_epochs_and_loaders(tmp_path, workers):
    """Train epochs, validation loaders made anew each epoch, and a second DataModule on the same
    rejects path (a run resumed into its own folder) add no line for a sample already listed."""
    corpus = tmp_path / "corpus"
    good = [json.dumps(r) for r in write_wavs(corpus, 8, seed=4)]
    expected = {"nofile": "missing_file", "notext": "empty_target", "karaoke": "unknown_task"}
    bad = [json.dumps({"id": "nofile", "audio": "audio/none.wav", "task": "gr", "text": "Male"}),
           json.dumps({"id": "notext", "audio": "audio/g000.wav", "task": "gr", "text": " "}),
           json.dumps({"id": "karaoke", "audio": "audio/g000.wav", "task": "karaoke", "text": "Male"})]
    man = corpus / "train.jsonl"
    man.write_text("\n".join(good[:3] + bad + good[3:]) + "\n")
    rejects = tmp_path / "rejects.jsonl"

    def lines() -> list[dict]:
        return [json.loads(t) for f in sorted(tmp_path.glob("rejects.*.jsonl")) for t in f.read_text().splitlines()]

    dm = ManifestDataModule(train=str(man), val=str(man), batch_size=2, num_workers=workers, max_seconds=2.0,
                            rejects_path=str(rejects), known_tasks={"gr"})
    loader = dm.train_dataloader()
    for _ in range(3):
        assert len([s for b in loader for s in b]) == 8
        assert len([s for b in dm.val_dataloader()[0] for s in b]) == 8
    for stage in ("train", "val"):
        assert sorted(e["id"] for e in lines() if e["stage"] == stage) == sorted(expected)
    again = ManifestDataModule(train=str(man), batch_size=2, num_workers=workers, max_seconds=2.0,
                               rejects_path=str(rejects), known_tasks={"gr"})
    assert len([s for b in again.train_dataloader() for s in b]) == 8
    assert len(lines()) == 2 * len(expected)
    assert sum(again.reject_summary("train").values()) == len(expected)
