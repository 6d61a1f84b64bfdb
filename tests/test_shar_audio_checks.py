"""``ahamask data shar`` checks each cut's audio as the loader does before Lhotse writes it: a clip
with NaN/inf samples is never written (the WAV writer turned them into full-scale samples) and is
counted under its real reason (with FLAC it used to be counted as unreadable)."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ahamask_lightning.cli.main import main as ahamask
from ahamask_lightning.data.shar import iter_shar


def _manifest(tmp_path: Path) -> str:
    rng = np.random.default_rng(0)
    sf.write(str(tmp_path / "good.wav"), (0.1 * rng.standard_normal(16000)).astype("float32"), 16000)
    bad = (0.1 * rng.standard_normal(16000)).astype("float32")
    bad[100:200] = np.nan
    bad[300] = np.inf
    sf.write(str(tmp_path / "nan.wav"), bad, 16000, subtype="FLOAT")
    rows = [{"id": "good", "audio": "good.wav", "task": "gr", "text": "Male"},
            {"id": "nan", "audio": "nan.wav", "task": "gr", "text": "Male"},
            {"id": "also_good", "audio": "good.wav", "task": "gr", "text": "Female"}]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.mark.parametrize("audio_format", ["wav", "flac"])
def test_non_finite_audio_is_not_written_and_counted_as_such(tmp_path: Path, audio_format: str, capsys,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    manifest = _manifest(tmp_path)
    out = tmp_path / f"shar_{audio_format}"
    with caplog.at_level(logging.WARNING, logger="ahamask_lightning.data"):
        assert ahamask(["data", "shar", manifest, "--out", str(out), "--audio-format", audio_format]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == \
        f"2 cuts -> {out} (1 shards); 1 rejected (nan_or_inf 1)"
    assert [cut.id for _, cut in iter_shar(str(out))] == ["good", "also_good"]
    logged = [r.getMessage() for r in caplog.records if f"{manifest}:2:" in r.getMessage()]
    assert len(logged) == 1 and "nan_or_inf" in logged[0]
