"""AudioConfig refuses a sample rate or length limits that cannot work, at construction, in one line
naming the key (they used to fail later, in a loader worker, with a resampler's error)."""
from __future__ import annotations

import math

import pytest

from ahamask_lightning.data import ManifestDataModule
from ahamask_lightning.data.audio import AudioConfig


@pytest.mark.parametrize(("kwargs", "key"), [
    ({"sample_rate": 0}, "sample_rate"),
    ({"sample_rate": -16000}, "sample_rate"),
    ({"sample_rate": 16000.5}, "sample_rate"),
    ({"min_seconds": -1.0}, "min_seconds"),
    ({"min_seconds": math.nan}, "min_seconds"),
    ({"min_seconds": 0.0, "max_seconds": 0.0}, "max_seconds"),
    ({"min_seconds": 0.0, "max_seconds": -3.0}, "max_seconds"),
])
def test_bad_values_fail_at_construction_naming_the_key(kwargs: dict, key: str) -> None:
    with pytest.raises(ValueError) as err:
        AudioConfig(**kwargs)
    message = str(err.value)
    assert message.startswith(f"{key}: ") and "expected" in message and "\n" not in message
    with pytest.raises(ValueError, match=f"^{key}: "):  # the data module builds one in __init__, before setup
        ManifestDataModule(val="never-read.jsonl", **kwargs)
    # values at the edges still pass
    AudioConfig(sample_rate=8000, min_seconds=0.0, max_seconds=0.5)
    AudioConfig(min_seconds=0.0, max_seconds=math.inf, on_too_long="cut")  # the Shar export's: no limit
