"""``on_too_long: cut`` on a speaker-verification pair cuts each clip to its share of the window,
so both speakers are heard (cutting the joined A + gap + B used to drop clip B whole when A filled
the window). Real WAVs through ``load_audio``; the shares through ``join_and_fit``."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from ahamask_lightning.data.audio import PAIR_GAP_SECONDS, AudioConfig, AudioError, join_and_fit, load_audio

SR = 16000
GAP = round(PAIR_GAP_SECONDS * SR)


def _wav(path: Path, seconds: float, value: float) -> str:
    sf.write(str(path), np.full(round(seconds * SR), value, dtype="float32"), SR, subtype="FLOAT")
    return str(path)


def test_a_long_clip_a_leaves_clip_b_whole(tmp_path: Path) -> None:
    a, b = _wav(tmp_path / "a.wav", 3.5, 0.25), _wav(tmp_path / "b.wav", 0.5, -0.5)
    cfg = AudioConfig(max_seconds=3.0, on_too_long="cut")
    wave = load_audio([a, b], cfg)
    assert wave.numel() == 3 * SR
    assert int((wave == -0.5).sum()) == SR // 2  # clip B, all of it
    assert int((wave == 0.25).sum()) == 3 * SR - GAP - SR // 2  # clip A, cut to the rest of the window
    assert torch.all(wave[3 * SR - GAP - SR // 2:][:GAP] == 0)  # then the gap, then B
    with pytest.raises(AudioError, match="too_long"):  # the default still refuses the pair
        load_audio([a, b], AudioConfig(max_seconds=3.0))


def test_each_clip_gets_its_share_of_the_window() -> None:
    cfg = AudioConfig(max_seconds=3.0, min_seconds=0.0, on_too_long="cut")
    for len_a, len_b, keep_a, keep_b in [
        (5.0, 5.0, 1.45, 1.45),  # both long: half of (3 s - gap) each
        (5.0, 0.5, 2.4, 0.5),  # a short clip B is kept whole, A gets the rest
        (0.5, 5.0, 0.5, 2.4),  # and the other way round
        (1.0, 1.5, 1.0, 1.5),  # fits: nothing is cut
    ]:
        parts = [torch.full((round(len_a * SR),), 0.25), torch.full((round(len_b * SR),), -0.5)]
        wave = join_and_fit(parts, cfg)
        assert int((wave == 0.25).sum()) == round(keep_a * SR), (len_a, len_b)
        assert int((wave == -0.5).sum()) == round(keep_b * SR), (len_a, len_b)
        assert wave.numel() == round(keep_a * SR) + GAP + round(keep_b * SR) <= 3 * SR
