"""Audio rules of the data layer: first channel, resampling, padding, pairs, length limit."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from ahamask_lightning.data.audio import AudioConfig, AudioError, load_audio, probe_seconds

NO_PAD = AudioConfig(min_seconds=0.0)


def write(path: Path, data: np.ndarray, rate: int, subtype: str | None = None) -> str:
    sf.write(path, data.astype("float32"), rate, subtype=subtype)
    return str(path)


def test_first_channel_is_kept(tmp_path: Path) -> None:
    t = np.arange(16000 * 2) / 16000
    first = 0.5 * np.sin(2 * np.pi * 440 * t)
    stereo = np.stack([first, np.full_like(first, -0.25), np.zeros_like(first)], axis=1)
    wave = load_audio([write(tmp_path / "s.wav", stereo, 16000, "FLOAT")], NO_PAD)
    assert wave.dtype == torch.float32 and wave.dim() == 1
    assert torch.allclose(wave, torch.from_numpy(first.astype("float32")), atol=1e-6)


@pytest.mark.parametrize("rate", [8000, 22050, 44100])
def test_resampled_to_16k(tmp_path: Path, rate: int) -> None:
    seconds = 1.5
    t = np.arange(int(rate * seconds)) / rate
    path = write(tmp_path / f"r{rate}.wav", 0.3 * np.sin(2 * np.pi * 300 * t), rate)
    wave = load_audio([path], NO_PAD)
    assert wave.numel() == 24000
    # A 300 Hz tone survives resampling: its spectrum still peaks at 300 Hz.
    spectrum = torch.fft.rfft(wave).abs()
    assert abs(int(spectrum.argmax()) / seconds - 300) <= 1
    assert probe_seconds(path) == pytest.approx(seconds)


def test_short_audio_is_zero_padded_at_the_end(tmp_path: Path) -> None:
    data = np.full(4800, 0.5)  # 0.3 s
    wave = load_audio([write(tmp_path / "short.wav", data, 16000, "FLOAT")], AudioConfig())
    assert wave.numel() == 16000
    assert torch.all(wave[:4800] == 0.5) and torch.all(wave[4800:] == 0)


def test_pair_is_joined_with_exactly_a_tenth_of_a_second_of_zeros(tmp_path: Path) -> None:
    a = write(tmp_path / "a.wav", np.full(19200, 0.5), 16000, "FLOAT")  # 1.2 s
    b = write(tmp_path / "b.wav", np.full(10400, -0.5), 8000, "FLOAT")  # 1.3 s at 8 kHz
    wave = load_audio([a, b], AudioConfig())
    assert wave.numel() == 19200 + 1600 + 20800
    assert torch.all(wave[:19200] == 0.5)
    assert torch.all(wave[19200:20800] == 0)
    # Resampling a constant rings only at the edges; the middle of B keeps its value.
    assert wave[20800 + 100 : -100].mean().item() == pytest.approx(-0.5, abs=1e-3)
    assert wave[20800 + 20].item() != 0


def test_short_pair_is_padded_after_joining(tmp_path: Path) -> None:
    a = write(tmp_path / "a.wav", np.full(1600, 0.5), 16000, "FLOAT")
    b = write(tmp_path / "b.wav", np.full(1600, 0.5), 16000, "FLOAT")
    wave = load_audio([a, b], AudioConfig())
    assert wave.numel() == 16000
    assert torch.all(wave[1600:3200] == 0) and torch.all(wave[3200:4800] == 0.5) and torch.all(wave[4800:] == 0)


def test_too_long_is_rejected_or_cut(tmp_path: Path) -> None:
    path = write(tmp_path / "long.wav", np.full(8000 * 3, 0.25), 8000, "FLOAT")
    with pytest.raises(AudioError) as err:
        load_audio([path], AudioConfig(max_seconds=2.0))
    assert err.value.reason == "too_long"
    wave = load_audio([path], AudioConfig(max_seconds=2.0, on_too_long="cut"))
    assert wave.numel() == 32000
    assert wave[1000:31000].mean().item() == pytest.approx(0.25, abs=1e-3)
    # Exactly at the limit is fine.
    assert load_audio([path], AudioConfig(max_seconds=3.0)).numel() == 48000


def test_config_is_validated() -> None:
    with pytest.raises(ValueError):
        AudioConfig(on_too_long="trim")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        AudioConfig(min_seconds=5.0, max_seconds=1.0)
    assert AudioConfig(max_seconds=10, on_too_long="cut").effective_seconds(12.0) == 10.0
    assert AudioConfig().effective_seconds(0.2) == 1.0


def _cut_wav(tmp_path: Path, keep: float) -> tuple[str, str]:
    """A whole 1 s PCM WAV and a copy whose body is cut to ``keep`` of it (header unchanged)."""
    whole = write(tmp_path / "whole.wav", np.full(16000, 0.25), 16000, "PCM_16")
    data = Path(whole).read_bytes()
    cut = tmp_path / "cut.wav"
    cut.write_bytes(data[: 44 + int((len(data) - 44) * keep)])
    return whole, str(cut)


def test_a_file_shorter_than_its_header_is_rejected_not_padded(tmp_path: Path) -> None:
    whole, cut = _cut_wav(tmp_path, 0.5)
    assert load_audio([whole], AudioConfig()).numel() == 16000
    for read in (lambda: load_audio([cut], AudioConfig()), lambda: probe_seconds(cut),
                 lambda: load_audio([cut], AudioConfig(on_too_long="cut"))):
        with pytest.raises(AudioError) as err:
            read()
        assert err.value.reason == "truncated_audio" and "promises 16000 frames" in str(err.value)


def test_a_wav_of_unknown_length_is_not_called_truncated(tmp_path: Path) -> None:
    # Writers streaming to a pipe leave the data size at 0xFFFFFFFF: "unknown", read to the end.
    path = tmp_path / "pipe.wav"
    data = bytearray(Path(write(path, np.full(16000, 0.25), 16000, "PCM_16")).read_bytes())
    at = data.index(b"data") + 4
    data[at:at + 4] = b"\xff\xff\xff\xff"
    path.write_bytes(bytes(data))
    assert load_audio([str(path)], AudioConfig()).numel() == 16000


def test_a_symlink_loop_has_its_own_reason(tmp_path: Path) -> None:
    os.symlink("loop.wav", tmp_path / "loop.wav")
    os.symlink("nowhere.wav", tmp_path / "dangling.wav")
    cases = {"loop.wav": "symlink_loop", "dangling.wav": "missing_file", "nowhere.wav": "missing_file"}
    for name, reason in cases.items():
        path = str(tmp_path / name)
        with pytest.raises(AudioError) as err:
            load_audio([path], AudioConfig())
        assert err.value.reason == reason, name
        with pytest.raises(AudioError) as err:
            probe_seconds(path)
        assert err.value.reason == reason, name
