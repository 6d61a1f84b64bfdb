"""Audio decoding for the data layer: first channel, resampled, validated, padded.

Rules (what every adapter's encoder takes): 16 kHz, first channel, zero-padded at the end to at least
``min_seconds``, and audio longer than ``max_seconds`` is rejected (``on_too_long="reject"``, the
default, so a long clip never silently loses its target's content) or cut (``"cut"``). A pair
(speaker verification) becomes A + 0.1 s of zeros + B; padding and the length limit apply to
the joined waveform, and cutting a pair cuts each clip to its share of the window (both
speakers stay in the input, see :func:`join_and_fit`). Another sample rate is resampled and many
channels keep the first (a Lhotse cut keeps its own channel, see ``dataset.cut_audio``): neither
is a bad sample. Missing, unreadable, empty or non-finite audio raises :class:`AudioError`, and
so does a file that holds fewer frames than its header promises (``truncated_audio``: a cut
download would otherwise be trained on, zero-padded) or a symbolic link loop (``symlink_loop``).
"""
from __future__ import annotations

import errno
import functools
import math
import os
import struct
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import soundfile as sf
import torch
import torchaudio

from .manifest import (
    EMPTY_AUDIO,
    MISSING_FILE,
    NAN_OR_INF,
    SYMLINK_LOOP,
    TOO_LONG,
    TRUNCATED_AUDIO,
    UNREADABLE_AUDIO,
)

PAIR_GAP_SECONDS = 0.1
_DECODE_ERRORS = (sf.SoundFileError, RuntimeError, OSError, ValueError, TypeError)


class AudioError(Exception):
    """A file that cannot become a model input; ``reason`` is one of the manifest reason strings."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


@dataclass(frozen=True)
class AudioConfig:
    sample_rate: int = 16000
    min_seconds: float = 1.0
    max_seconds: float = 30.0
    on_too_long: Literal["reject", "cut"] = "reject"

    def __post_init__(self) -> None:
        # Checked here, at construction: a bad value would otherwise fail later, inside a loader
        # worker, with an error from the resampler that names no key.
        rate = self.sample_rate
        if isinstance(rate, bool) or not isinstance(rate, int) or rate <= 0:
            raise ValueError(f"sample_rate: {rate!r}; expected a positive whole number of Hz, e.g. 16000")
        if not _is_number(self.min_seconds) or not self.min_seconds >= 0:
            raise ValueError(f"min_seconds: {self.min_seconds!r}; expected a number of seconds >= 0")
        if not _is_number(self.max_seconds) or not self.max_seconds > 0:
            raise ValueError(f"max_seconds: {self.max_seconds!r}; expected a number of seconds > 0")
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


def check_file(path: str) -> None:
    """Raises AudioError when ``path`` cannot be opened as a file: missing, a link loop, or no access."""
    try:
        os.stat(path)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise AudioError(SYMLINK_LOOP, path) from None
        if err.errno in (errno.ENOENT, errno.ENOTDIR):
            raise AudioError(MISSING_FILE, path) from None
        raise AudioError(UNREADABLE_AUDIO, f"{path}: {err.strerror}") from None
    except ValueError:  # a path holding a NUL byte or a lone surrogate: nothing on disk has that name
        raise AudioError(MISSING_FILE, repr(path)) from None


def wav_promised_frames(path: str) -> tuple[int, int] | None:
    """(frames the RIFF ``data`` chunk promises, frames the file holds) for a WAV file, else None.

    Written by hand: libsndfile (soundfile) corrects a ``data`` size larger than the file to
    what is there, so its frame count cannot tell a cut file from a whole one, and the standard
    library's ``wave`` reads integer PCM only. A size of 0 or 0xFFFFFFFF means "unknown" (files
    written to a pipe) and is not checked.
    """
    with open(path, "rb") as fh:
        head = fh.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        size = os.fstat(fh.fileno()).st_size
        block = 0
        while True:
            chunk = fh.read(8)
            if len(chunk) < 8:
                return None
            cid, length = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if cid == b"fmt " and length >= 14:
                block = struct.unpack("<H", fh.read(14)[12:14])[0]
                fh.seek(length - 14 + (length & 1), os.SEEK_CUR)
            elif cid == b"data":
                if block <= 0 or length in (0, 0xFFFFFFFF):
                    return None
                return length // block, (size - fh.tell()) // block
            else:
                fh.seek(length + (length & 1), os.SEEK_CUR)


def check_not_truncated(path: str) -> None:
    try:
        found = wav_promised_frames(path)
    except (OSError, struct.error):
        return  # an unreadable header is soundfile's to report
    if found is not None and found[1] < found[0]:
        raise AudioError(TRUNCATED_AUDIO, f"{path}: header promises {found[0]} frames, file holds {found[1]}")


def read_header(path: str) -> Any:
    """The file's checked header (``soundfile.info``'s result: frames, samplerate, channels), no decoding; raises AudioError like :func:`load_mono`."""
    check_file(path)
    check_not_truncated(path)
    try:
        info = sf.info(path)
    except _DECODE_ERRORS as err:  # soundfile raises several types for corrupt headers
        raise AudioError(UNREADABLE_AUDIO, f"{path}: {err}") from None
    if info.frames <= 0 or info.samplerate <= 0 or info.channels <= 0:
        raise AudioError(EMPTY_AUDIO, path)
    return info


def probe_seconds(path: str) -> float:
    """Duration from the header only (no decoding); raises AudioError like :func:`load_mono`."""
    info = read_header(path)
    return info.frames / info.samplerate


def checked_wave(data: np.ndarray, rate: int, sample_rate: int, name: str) -> torch.Tensor:
    """First channel of decoded ``data`` [T, C], checked (empty, NaN/inf) and resampled."""
    if data.shape[0] == 0 or data.shape[1] == 0:
        raise AudioError(EMPTY_AUDIO, name)
    first = np.ascontiguousarray(data[:, 0], dtype=np.float32)  # many channels: the model takes the first one
    if not np.isfinite(first).all():
        raise AudioError(NAN_OR_INF, name)
    return resample(torch.from_numpy(first), rate, sample_rate)


def load_mono(path: str, sample_rate: int, max_frames_out: int | None = None,
              segment: tuple[float, float] | None = None) -> torch.Tensor:
    """Decodes the first channel of ``path``, resampled to ``sample_rate``.

    ``max_frames_out`` bounds the decoding (for cutting) so a very long file is not read whole;
    ``segment`` (start, end) in seconds reads only that part (TED-LIUM talks: one file, many segments).
    Fewer frames decoded than the header says are there raises ``truncated_audio``.
    """
    check_file(path)
    check_not_truncated(path)
    try:
        with sf.SoundFile(path) as fh:
            rate = fh.samplerate
            frames = -1
            start = 0
            if segment is not None:
                start = min(fh.frames, int(segment[0] * rate))
                fh.seek(start)
                frames = max(0, int((segment[1] - segment[0]) * rate))
            if max_frames_out is not None:
                bound = math.ceil(max_frames_out * rate / sample_rate) + 1
                frames = bound if frames < 0 else min(frames, bound)
            expected = fh.frames - start if frames < 0 else min(frames, fh.frames - start)
            if fh.format == "MP3":
                expected = 0  # an MP3's frame count may be an estimate (no Xing header): not a promise
            data = fh.read(frames=frames, dtype="float32", always_2d=True)
    except _DECODE_ERRORS as err:
        raise AudioError(UNREADABLE_AUDIO, f"{path}: {err}") from None
    if data.shape[0] and data.shape[1] and data.shape[0] < expected:
        raise AudioError(TRUNCATED_AUDIO, f"{path}: header promises {expected} frames, decoded {data.shape[0]}")
    wave = checked_wave(data, rate, sample_rate, path)
    if max_frames_out is not None:
        wave = wave[:max_frames_out]
    return wave


def load_audio(paths: list[str], cfg: AudioConfig, segment: tuple[float, float] | None = None) -> torch.Tensor:
    """Loads one input (one path, or a pair joined with 0.1 s of zeros) as float32 [T].

    ``segment``: (start, end) seconds of a single long file (manifest ``meta.start``/``meta.end``).
    """
    sr = cfg.sample_rate
    max_frames = round(cfg.max_seconds * sr) if math.isfinite(cfg.max_seconds) else None
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
    return join_and_fit(parts, cfg)


def pair_shares(len_a: int, len_b: int, budget: int) -> tuple[int, int]:
    """How many frames of clips A and B a pair keeps when they must fit in ``budget`` frames together.

    Each clip gets half of the budget; a clip shorter than its half is kept whole and leaves the
    rest to the other. So both speakers of a verification trial stay in the input, however long
    one of the clips is.
    """
    if len_a + len_b <= budget:
        return len_a, len_b
    half = budget // 2
    if len_b <= half:
        return budget - len_b, len_b
    if len_a <= half:
        return len_a, budget - len_a
    return half, budget - half


def join_and_fit(parts: list[torch.Tensor], cfg: AudioConfig) -> torch.Tensor:
    """One input from decoded parts at ``cfg.sample_rate``: a pair joined with 0.1 s of zeros, then
    the length rules (too long: rejected or cut; shorter than ``min_seconds``: zero-padded).

    Cutting a pair (``on_too_long="cut"``) cuts each clip to its share of the window less the gap
    (:func:`pair_shares`), not the joined waveform's end: that would drop clip B whole whenever
    clip A fills the window, and the trial would be scored on the enrolment clip alone.
    """
    sr = cfg.sample_rate
    max_frames = round(cfg.max_seconds * sr) if math.isfinite(cfg.max_seconds) else None
    if len(parts) == 2:
        gap = torch.zeros(round(PAIR_GAP_SECONDS * sr), dtype=parts[0].dtype)
        a, b = parts
        if cfg.on_too_long == "cut" and max_frames is not None and a.numel() + gap.numel() + b.numel() > max_frames:
            keep_a, keep_b = pair_shares(a.numel(), b.numel(), max(max_frames - gap.numel(), 0))
            a, b = a[:keep_a], b[:keep_b]
        wave = torch.cat([a, gap, b])
    else:
        wave = parts[0]
    if max_frames is not None and wave.numel() > max_frames:
        # Resampling can round up by one frame: tolerate exactly that before rejecting.
        if cfg.on_too_long == "reject" and wave.numel() > max_frames + 1:
            raise AudioError(TOO_LONG, f"{wave.numel() / sr:.2f} s > {cfg.max_seconds} s")
        wave = wave[:max_frames]
    min_frames = round(cfg.min_seconds * sr)
    if wave.numel() < min_frames:
        wave = torch.nn.functional.pad(wave, (0, min_frames - wave.numel()))
    return wave.contiguous()
