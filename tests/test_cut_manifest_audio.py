"""Lhotse cut manifests: the loader gives the audio the cut describes (its channel; its recording's
speed, volume and resampling transforms), decoded by Lhotse where the raw file would differ, and
still checked by the project (bad audio rejected with its reason). Real WAVs, real Lhotse cuts."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from lhotse import CutSet, MonoCut, Recording, SupervisionSegment

from ahamask_lightning.data import ManifestDataModule
from ahamask_lightning.data.audio import AudioConfig, AudioError, resample
from ahamask_lightning.data.dataset import cut_audio
from ahamask_lightning.data.manifest import MISSING_FILE, NAN_OR_INF

NO_PAD = AudioConfig(min_seconds=0.0)


def _wav(path: Path, data: np.ndarray, rate: int = 16000) -> Path:
    sf.write(str(path), data.astype("float32"), rate, subtype="FLOAT")
    return path


def _noise(n: int, seed: int, channels: int = 1) -> np.ndarray:
    data = 0.1 * np.random.default_rng(seed).standard_normal((n, channels))
    return data[:, 0] if channels == 1 else data


def _cut(path: Path, cid: str, channel: int = 0) -> MonoCut:
    rec = Recording.from_file(str(path), recording_id=cid)
    text = SupervisionSegment(id=cid, recording_id=cid, start=0.0, duration=rec.duration, channel=channel,
                              text="Male")
    return MonoCut(id=cid, start=0.0, duration=rec.duration, channel=channel, recording=rec, supervisions=[text],
                   custom={"task": "gr"})


def _lhotse(cut: MonoCut) -> torch.Tensor:
    """What Lhotse itself decodes for the cut, at the loader's 16 kHz."""
    return resample(torch.from_numpy(np.ascontiguousarray(cut.load_audio()[0])), cut.sampling_rate, 16000)


PERTURBATIONS = {
    "speed": lambda c: c.perturb_speed(1.5),
    "volume": lambda c: c.perturb_volume(0.1),
    "resample": lambda c: c.resample(8000),
}


@pytest.mark.parametrize("name", sorted(PERTURBATIONS))
def test_a_perturbed_cut_is_loaded_with_its_transform(tmp_path: Path, name: str) -> None:
    plain = _cut(_wav(tmp_path / "a.wav", _noise(16000, 0)), "a")
    cut = PERTURBATIONS[name](plain)
    assert cut.recording.transforms  # a real Lhotse transform, not a copy of the file
    want = _lhotse(cut)
    got = cut_audio(cut, NO_PAD)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    # and not the raw file, which the loader used to read whatever the cut said
    raw = cut_audio(plain, NO_PAD)
    assert got.shape != raw.shape or not torch.allclose(got, raw, atol=1e-3)


def test_a_cut_of_the_second_channel_gets_that_channel(tmp_path: Path) -> None:
    stereo = _noise(16000, 1, channels=2)
    cut = _cut(_wav(tmp_path / "st.wav", stereo), "st", channel=1)
    torch.testing.assert_close(cut_audio(cut, NO_PAD), torch.from_numpy(stereo[:, 1].astype("float32")))
    # the recording's first channel still takes the direct path, and gives channel 0
    first = _cut(tmp_path / "st.wav", "st0", channel=0)
    torch.testing.assert_close(cut_audio(first, NO_PAD), torch.from_numpy(stereo[:, 0].astype("float32")))


def test_perturbed_cuts_of_bad_files_are_rejected_with_their_reason(tmp_path: Path) -> None:
    nan = _noise(16000, 2)
    nan[100:200] = np.nan
    bad = _cut(_wav(tmp_path / "nan.wav", nan), "nan").perturb_volume(0.5)
    with pytest.raises(AudioError) as err:
        cut_audio(bad, NO_PAD)
    assert err.value.reason == NAN_OR_INF
    gone = _cut(_wav(tmp_path / "gone.wav", _noise(16000, 3)), "gone").perturb_speed(0.9)
    (tmp_path / "gone.wav").unlink()
    with pytest.raises(AudioError) as err:
        cut_audio(gone, NO_PAD)
    assert err.value.reason == MISSING_FILE and "gone.wav" in err.value.detail
    # a good cut beside them is read as Lhotse reads it
    good = _cut(_wav(tmp_path / "ok.wav", _noise(16000, 4)), "ok").perturb_speed(1.1)
    torch.testing.assert_close(cut_audio(good, NO_PAD), _lhotse(good), atol=1e-5, rtol=0)


def test_the_loader_reads_perturbed_and_channel_cuts_from_a_cut_manifest(tmp_path: Path) -> None:
    """The usual augmentation, ``cuts + cuts.perturb_speed(...)``, and a channel-1 cut, end to end."""
    plain = _cut(_wav(tmp_path / "a.wav", _noise(16000, 5)), "a")
    right = _cut(_wav(tmp_path / "st.wav", _noise(16000, 6, channels=2)), "st", channel=1)
    cuts = [plain, plain.perturb_speed(0.9), plain.perturb_volume(0.2), right]
    manifest = tmp_path / "train.cuts.jsonl.gz"
    CutSet.from_cuts(cuts).to_file(manifest)
    dm = ManifestDataModule(val=str(manifest), known_tasks={"gr"}, min_seconds=0.0, batch_size=4)
    got = {s["id"]: s["audio"] for batch in dm.val_dataloader()[0] for s in batch}
    assert sorted(got) == sorted(c.id for c in cuts)
    for cut in cuts:
        torch.testing.assert_close(got[cut.id], _lhotse(cut), atol=1e-5, rtol=0)
