"""A ``.gz`` manifest cut short (a copy interrupted, a killed ``prepare``) or not gzip at all fails
before training in one line naming the manifest and the last line read whole, and the CLI prints
that line (it used to fail mid-epoch with an EOFError naming no file, and a traceback)."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from lhotse import CutSet, MonoCut, Recording, SupervisionSegment

from ahamask_lightning.cli.main import main as ahamask
from ahamask_lightning.data import ManifestDataModule
from ahamask_lightning.data.manifest import check_manifest_file, iter_lines

N_CUTS = 1200  # enough lines that half of the compressed file still decompresses to many of them


def _truncated(tmp_path: Path) -> tuple[Path, Path]:
    path = tmp_path / "a.wav"
    sf.write(str(path), (0.1 * np.random.default_rng(0).standard_normal(1600)).astype("float32"), 16000)
    rec = Recording.from_file(str(path), recording_id="a")
    cuts = [MonoCut(id=f"c{i}", start=0.0, duration=rec.duration, channel=0, recording=rec, custom={"task": "gr"},
                    supervisions=[SupervisionSegment(id=f"c{i}", recording_id="a", start=0.0, duration=rec.duration,
                                                     text="Male")]) for i in range(N_CUTS)]
    whole = tmp_path / "whole.cuts.jsonl.gz"
    CutSet.from_cuts(cuts).to_file(whole)
    data = whole.read_bytes()
    cut_short = tmp_path / "trunc.cuts.jsonl.gz"
    cut_short.write_bytes(data[: len(data) // 2])
    not_gzip = tmp_path / "plain.cuts.jsonl.gz"
    not_gzip.write_bytes(gzip.decompress(data)[:2000])
    return cut_short, not_gzip


def test_reading_stops_with_one_line_naming_the_manifest_and_the_last_good_line(tmp_path: Path) -> None:
    cut_short, not_gzip = _truncated(tmp_path)
    seen = []
    with pytest.raises(ValueError) as err:
        for number, _ in iter_lines(str(cut_short)):
            seen.append(number)
    message = str(err.value)
    assert 0 < len(seen) < N_CUTS and "\n" not in message
    assert message.startswith(f"{cut_short}: unreadable after line {seen[-1]} ")
    with pytest.raises(ValueError, match=r"plain\.cuts\.jsonl\.gz: unreadable after line 0 .*not gzip"):
        next(iter_lines(str(not_gzip)))


def test_setup_fails_before_any_batch(tmp_path: Path) -> None:
    cut_short, not_gzip = _truncated(tmp_path)
    for manifest in (cut_short, not_gzip):
        with pytest.raises(ValueError) as err:
            check_manifest_file(str(manifest))
        assert str(err.value).startswith(f"{manifest}: unreadable after line ") and "\n" not in str(err.value)
        dm = ManifestDataModule(val=str(manifest), known_tasks={"gr"})
        with pytest.raises(ValueError, match="unreadable after line"):
            dm.setup("validate")
    check_manifest_file(str(tmp_path / "whole.cuts.jsonl.gz"))  # the whole file passes


def test_the_shar_export_prints_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cut_short, _ = _truncated(tmp_path)
    assert ahamask(["data", "shar", str(cut_short), "--out", str(tmp_path / "shar")]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"ahamask: error: {cut_short}: unreadable after line "), err
