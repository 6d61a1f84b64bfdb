"""Audio decoding for the data layer: first channel, resampled, validated, padded.

Rules (DESIGN.md section 2): 16 kHz, first channel, zero-padded at the end to at least
``min_seconds``, and audio longer than ``max_seconds`` is rejected (``on_too_long="reject"``, the
default, so a long clip never silently loses its target's content) or cut (``"cut"``). A pair
(speaker verification) becomes A + 0.1 s of zeros + B; padding and the length limit apply to
the joined waveform. Another sample rate is resampled and many channels keep the first: neither
is a bad sample. Missing, unreadable, empty or non-finite audio raises :class:`AudioError`.
"""
from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from typing import Literal

import numpy as np
import soundfile as sf
import torch
import torchaudio

from .manifest import EMPTY_AUDIO, MISSING_FILE, NAN_OR_INF, TOO_LONG, UNREADABLE_AUDIO

PAIR_GAP_SECONDS = 0.1
_DECODE_ERRORS = (sf.SoundFileError, RuntimeError, OSError, ValueError, TypeError)


class AudioError(Exception):
    """A file that cannot become a model input; ``reason`` is one of the manifest reason strings."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class AudioConfig:
    sample_rate: int = 16000
    min_seconds: float = 1.0
    max_seconds: float = 30.0
    on_too_long: Literal["reject", "cut"] = "reject"

    def __post_init__(self) -> None:
        if self.on_too_long not in ("reject", "cut"):
            raise ValueError(f"on_too_long must be 'reject' or 'cut', not {self.on_too_long!r}")
        if self.max_seconds < self.min_seconds:
            raise ValueError("max_seconds must be >= min_seconds")

    def effective_seconds(self, seconds: float) -> float:
        """Length the model will see for a raw length (after padding / cutting)."""
        seconds = max(seconds, self.min_seconds)
        return min(seconds, self.max_seconds) if self.on_too_long == "cut" else seconds


@functools.lru_cache(maxsize=16)
def _resampler(orig: int, new: int) -> torchaudio.transforms.Resample:
    # The transform caches the sinc kernel that functional.resample would rebuild on every call
    # (same maths, same result); per-process cache, so each dataloader worker builds its own.
    return torchaudio.transforms.Resample(orig, new)


def resample(wave: torch.Tensor, orig: int, new: int) -> torch.Tensor:
    """Resamples a 1-D float waveform; a no-op when the rates match."""
    if orig == new:
        return wave
    with torch.no_grad():
        return _resampler(orig, new)(wave)


def probe_seconds(path: str) -> float:
    """Duration from the header only (no decoding); raises AudioError like :func:`load_mono`."""
    if not os.path.exists(path):
        raise AudioError(MISSING_FILE, path)
    try:
        info = sf.info(path)
    except _DECODE_ERRORS as err:  # soundfile raises several types for corrupt headers
        raise AudioError(UNREADABLE_AUDIO, f"{path}: {err}") from None
    if info.frames <= 0 or info.samplerate <= 0:
        raise AudioError(EMPTY_AUDIO, path)
    return info.frames / info.samplerate


def load_mono(path: str, sample_rate: int, max_frames_out: int | None = None,
              segment: tuple[float, float] | None = None) -> torch.Tensor:
    """Decodes the first channel of ``path``, resampled to ``sample_rate``.

    ``max_frames_out`` bounds the decoding (for cutting) so a very long file is not read whole;
    ``segment`` (start, end) in seconds reads only that part (TED-LIUM talks: one file, many segments).
    """
    if not os.path.exists(path):
        raise AudioError(MISSING_FILE, path)
    try:
        with sf.SoundFile(path) as fh:
            rate = fh.samplerate
            frames = -1
            if segment is not None:
                fh.seek(min(fh.frames, int(segment[0] * rate)))
                frames = max(0, int((segment[1] - segment[0]) * rate))
            if max_frames_out is not None:
                bound = math.ceil(max_frames_out * rate / sample_rate) + 1
                frames = bound if frames < 0 else min(frames, bound)
            data = fh.read(frames=frames, dtype="float32", always_2d=True)
    except _DECODE_ERRORS as err:
        raise AudioError(UNREADABLE_AUDIO, f"{path}: {err}") from None
    if data.shape[0] == 0 or data.shape[1] == 0:
        raise AudioError(EMPTY_AUDIO, path)
    first = np.ascontiguousarray(data[:, 0])  # many channels: the model takes the first one
    if not np.isfinite(first).all():
        raise AudioError(NAN_OR_INF, path)
    wave = resample(torch.from_numpy(first), rate, sample_rate)
    if max_frames_out is not None:
        wave = wave[:max_frames_out]
    return wave


def load_audio(paths: list[str], cfg: AudioConfig, segment: tuple[float, float] | None = None) -> torch.Tensor:
    """Loads one input (one path, or a pair joined with 0.1 s of zeros) as float32 [T].

    ``segment``: (start, end) seconds of a single long file (manifest ``meta.start``/``meta.end``).
    """
    sr = cfg.sample_rate
    max_frames = round(cfg.max_seconds * sr)
    if segment is not None and len(paths) == 1:
        if segment[1] - segment[0] > cfg.max_seconds + 1.0 / sr and cfg.on_too_long == "reject":
            raise AudioError(TOO_LONG, f"segment {segment[1] - segment[0]:.2f} s > {cfg.max_seconds} s")
        parts = [load_mono(paths[0], sr, max_frames, segment=segment)]
    elif cfg.on_too_long == "reject":
        # Header check first: a 2-hour file is rejected without being decoded.
        total = sum(probe_seconds(p) for p in paths) + PAIR_GAP_SECONDS * (len(paths) - 1)
        if total > cfg.max_seconds + 1.0 / sr:
            raise AudioError(TOO_LONG, f"{total:.2f} s > {cfg.max_seconds} s")
        parts = [load_mono(p, sr) for p in paths]
    else:
        parts = [load_mono(p, sr, max_frames) for p in paths]
    if len(parts) == 2:
        gap = torch.zeros(round(PAIR_GAP_SECONDS * sr), dtype=parts[0].dtype)
        wave = torch.cat([parts[0], gap, parts[1]])
    else:
        wave = parts[0]
    if wave.numel() > max_frames:
        # Resampling can round up by one frame: tolerate exactly that before rejecting.
        if cfg.on_too_long == "reject" and wave.numel() > max_frames + 1:
            raise AudioError(TOO_LONG, f"{wave.numel() / sr:.2f} s > {cfg.max_seconds} s")
        wave = wave[:max_frames]
    min_frames = round(cfg.min_seconds * sr)
    if wave.numel() < min_frames:
        wave = torch.nn.functional.pad(wave, (0, min_frames - wave.numel()))
    return wave.contiguous()
