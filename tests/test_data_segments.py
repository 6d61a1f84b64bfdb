"""Segments of one long file (TED-LIUM style manifests: meta.start / meta.end)."""
from __future__ import annotations

import numpy as np
import soundfile as sf
import torch

from ahamask_lightning.data import AudioConfig, load_audio


def test_segment_reads_only_that_part(tmp_path):
    sr = 8000
    t = np.arange(sr * 6) / sr
    wave = np.where(t < 3.0, 0.0, 0.5).astype(np.float32)  # silence, then a constant after 3 s
    sf.write(tmp_path / "talk.wav", wave, sr)
    cfg = AudioConfig(16000, 0.5, 2.5, "reject")
    seg = load_audio([str(tmp_path / "talk.wav")], cfg, segment=(3.5, 5.5))
    assert seg.numel() == 2 * 16000
    assert torch.allclose(seg[100:-100], torch.full_like(seg[100:-100], 0.5), atol=1e-3)
    early = load_audio([str(tmp_path / "talk.wav")], cfg, segment=(0.5, 2.0))
    assert early.numel() == int(1.5 * 16000) and early.abs().max() < 1e-3
