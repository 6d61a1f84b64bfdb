"""Estimators, HeadMask, mask files and the mask CLI on the masks released with the paper."""
from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch

from ahamask_lightning.cli.main import main as ahamask
from ahamask_lightning.masking import (
    HeadMask,
    MaskFileError,
    import_official,
    load_mask,
    save_mask,
    soft_sample,
    straight_through,
)

OFFICIAL = Path(__file__).resolve().parents[1] / "../shared/reference/official_masks"
needs_official = pytest.mark.skipif(not OFFICIAL.is_dir(), reason="shared/reference not beside the checkout")


@pytest.mark.parametrize("m", [-1.0, 0.0, 1.5])
def test_on_probability_of_each_estimator(m):
    torch.manual_seed(0)
    logits = torch.full((200_000,), m)
    logistic = (soft_sample(logits, 1.0, "logistic") >= 0.5).float().mean().item()
    official = (soft_sample(logits, 1.0, "official") >= 0.5).float().mean().item()
    assert logistic == pytest.approx(1 / (1 + math.exp(-m)), abs=0.01)
    assert official == pytest.approx(math.exp(-math.exp(-m)), abs=0.01)  # 0.37 at M = 0


def test_hard_concrete_is_clipped_to_unit_interval():
    s = soft_sample(torch.zeros(10_000), 0.5, "hard_concrete")
    assert s.min() >= 0 and s.max() <= 1 and (s == 0).any() and (s == 1).any()


def test_straight_through_is_hard_forward_soft_backward():
    soft = torch.tensor([0.2, 0.7], requires_grad=True)
    hard = straight_through(soft)
    assert hard.tolist() == [0.0, 1.0]
    (hard * torch.tensor([3.0, 5.0])).sum().backward()
    assert soft.grad.tolist() == [3.0, 5.0]


def test_head_mask_init_train_and_eval():
    torch.manual_seed(0)
    hm = HeadMask(6, 8)
    assert hm.logits.mean().item() == pytest.approx(4.0, abs=0.02)
    assert hm.logits.std().item() == pytest.approx(0.02, abs=0.01)
    with torch.no_grad():
        hm.logits[0, :4] = -1.0
    hm.eval()
    assert hm().sum().item() == 44 and hm().requires_grad is False
    hm.train()
    assert hm(batch_size=3).shape == (3, 6, 8)
    with pytest.raises(ValueError, match="estimator"):
        HeadMask(2, 2, estimator="gumbel")


def test_sigmoid_gate_is_continuous_and_deterministic():
    hm = HeadMask(2, 3, estimator="sigmoid", init_mean=0.0, init_std=0.0)
    with torch.no_grad():
        hm.logits[0, 0] = 2.0
        hm.logits[1, 2] = -3.0
    hm.train()
    gate = hm()
    assert torch.equal(gate, hm())  # no noise
    assert gate[0, 0].item() == pytest.approx(1 / (1 + math.exp(-2.0)))
    assert gate[0, 1].item() == pytest.approx(0.5)
    gate.sum().backward()  # gradient of sigmoid itself, not of a thresholded gate
    assert hm.logits.grad[0, 1].item() == pytest.approx(0.25)
    hm.eval()
    assert torch.allclose(hm(), torch.sigmoid(hm.logits.detach()))
    assert hm.hard().tolist() == [[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]] and hm.active_heads() == 5


@needs_official
def test_import_official_reproduces_released_active_counts(tmp_path):
    expected = {"asr_librispeech.pth": 1525}
    for name, n in expected.items():
        mf = import_official(OFFICIAL / name, 40, 40)
        assert mf.shape == (40, 40) and mf.active() == n
    for pth in sorted(OFFICIAL.glob("*.pth")):  # every released file imports into 40 x 40
        assert import_official(pth, 40, 40).shape == (40, 40)


@needs_official
def test_mask_cli_import_info_jaccard(tmp_path, capsys):
    names = ["asr_librispeech", "osr_libri2mix", "gender_librispeech"]
    for n in names:
        assert ahamask(["mask", "import-official", str(OFFICIAL / f"{n}.pth"), "--layers", "40", "--heads", "40",
                        "-o", str(tmp_path / f"{n}.safetensors")]) == 0
    capsys.readouterr()
    assert ahamask(["mask", "info", str(tmp_path / "asr_librispeech.safetensors")]) == 0
    assert "1525 of 1600 heads active" in capsys.readouterr().out
    assert ahamask(["mask", "jaccard", *(str(tmp_path / f"{n}.safetensors") for n in names)]) == 0
    rows = [line.split() for line in capsys.readouterr().out.strip().splitlines()[1:]]
    assert len(rows) == 3 and all(row[i + 1] == "1.000" for i, row in enumerate(rows))
    assert float(rows[0][2]) == pytest.approx(0.94, abs=0.005)  # paper: Jaccard(ASR, OSR) = 0.94
    plot = tmp_path / "heatmap"  # no suffix: written as PNG, and the line names the file written
    assert ahamask(["mask", "jaccard", *(str(tmp_path / f"{n}.safetensors") for n in names), "--plot", str(plot)]) == 0
    assert capsys.readouterr().out.strip().endswith(f"wrote {plot}.png")
    assert (tmp_path / "heatmap.png").read_bytes()[:4] == b"\x89PNG"


def test_jaccard_labels_tell_apart_masks_of_the_same_file_name():
    from ahamask_lightning.cli.mask import mask_labels

    assert mask_labels(["m/asr.safetensors", "m/osr.safetensors"]) == ["asr", "osr"]
    assert mask_labels(["runs/demo/gr/fit/mask.safetensors", "runs/x/version_0/mask.safetensors"]) == [
        "fit/mask", "version_0/mask"]


def test_combine_and_random_keep_counts(tmp_path, capsys):
    a, b = torch.zeros(4, 5), torch.zeros(4, 5)
    a[0, :3] = 1
    b[0, 2:] = 1
    for name, m in (("a", a), ("b", b)):
        save_mask(tmp_path / f"{name}.safetensors", torch.where(m.bool(), 1.0, -1.0))
    assert ahamask(["mask", "combine", "--op", "and", str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"),
                    "-o", str(tmp_path / "and.safetensors")]) == 0
    assert load_mask(tmp_path / "and.safetensors").active() == 1
    assert ahamask(["mask", "combine", "--op", "or", str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"),
                    "-o", str(tmp_path / "or.safetensors")]) == 0
    assert load_mask(tmp_path / "or.safetensors").active() == 5
    assert ahamask(["mask", "random", "--like", str(tmp_path / "a.safetensors"), "--seed", "3",
                    "-o", str(tmp_path / "r.safetensors")]) == 0
    r = load_mask(tmp_path / "r.safetensors")
    assert r.active() == 3 and r.metadata["random_seed"] == "3"


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@needs_official
def test_official_file_of_wrong_length_is_refused_without_output(tmp_path, capsys):
    out = tmp_path / "x.safetensors"
    assert ahamask(["mask", "import-official", str(OFFICIAL / "asr_librispeech.pth"), "--layers", "32",
                    "--heads", "32", "-o", str(out)]) == 2
    line = _one_error_line(capsys)
    assert "asr_librispeech.pth" in line and "1640 values" in line and "1056" in line
    assert not out.exists() and os.listdir(tmp_path) == []


def test_truncated_and_corrupt_files_are_refused(tmp_path, capsys):
    good = tmp_path / "good.safetensors"
    save_mask(good, torch.randn(3, 4))
    trunc = tmp_path / "trunc.safetensors"
    trunc.write_bytes(good.read_bytes()[:40])
    assert ahamask(["mask", "info", str(trunc)]) == 2
    assert "trunc.safetensors: not a readable safetensors mask file" in _one_error_line(capsys)
    pth = tmp_path / "broken.pth"
    pth.write_bytes(b"PK\x03\x04 this is not a zip archive")
    assert ahamask(["mask", "import-official", str(pth), "--layers", "2", "--heads", "2",
                    "-o", str(tmp_path / "o.safetensors")]) == 2
    assert "broken.pth: not a readable torch checkpoint" in _one_error_line(capsys)
    assert not (tmp_path / "o.safetensors").exists()
    from safetensors.torch import save_file

    save_file({"logits": torch.zeros(0, 16)}, str(tmp_path / "empty.safetensors"))
    assert ahamask(["mask", "info", str(tmp_path / "empty.safetensors")]) == 2
    assert "empty.safetensors: 'logits' must be [layers, heads] with at least one head" in _one_error_line(capsys)
    assert ahamask(["mask", "random", "--like", str(good), "-o", str(tmp_path)]) == 2  # -o names a folder
    assert f"{tmp_path}: is a directory; expected the file to write" in _one_error_line(capsys)


def test_mask_of_wrong_shape_for_model(tmp_path):
    save_mask(tmp_path / "m.safetensors", torch.randn(40, 40))
    with pytest.raises(MaskFileError, match=r"m.safetensors: mask shape \(40, 40\) does not fit the model, "
                                            r"expected \(6, 8\)"):
        load_mask(tmp_path / "m.safetensors", shape=(6, 8))


def test_pickle_that_would_run_code_is_refused(tmp_path):
    """weights_only loading refuses a checkpoint whose unpickling would call arbitrary code."""
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    bad = tmp_path / "evil.pth"
    torch.save({"model": {"tensor": Evil()}}, bad)
    with pytest.raises(MaskFileError, match="evil.pth: not a readable torch checkpoint"):
        import_official(bad, 2, 2)
    assert not marker.exists()


def test_save_mask_into_missing_directory_leaves_nothing(tmp_path):
    with pytest.raises(MaskFileError, match="does not exist"):
        save_mask(tmp_path / "nope" / "m.safetensors", torch.randn(2, 2))
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_logits_are_refused_on_save_and_load(tmp_path, bad):
    from safetensors.torch import save_file

    logits = torch.randn(3, 4)
    logits[1, 2] = bad
    with pytest.raises(MaskFileError) as err:
        save_mask(tmp_path / "m.safetensors", logits)
    assert "\n" not in str(err.value) and str(err.value).startswith(str(tmp_path / "m.safetensors"))
    assert "must be finite" in str(err.value) and "layer 1, head 2" in str(err.value)
    assert os.listdir(tmp_path) == []
    # a file written by another tool is checked when read
    save_file({"logits": logits}, str(tmp_path / "other.safetensors"))
    with pytest.raises(MaskFileError, match=r"other.safetensors: mask logits must be finite, found 1 NaN/inf"):
        load_mask(tmp_path / "other.safetensors")
    official = torch.zeros(3 * 5)
    official[7] = bad
    torch.save({"model": {"tensor": official}}, tmp_path / "official.pth")
    with pytest.raises(MaskFileError, match=r"official.pth: mask logits must be finite"):
        import_official(tmp_path / "official.pth", 3, 4)


def test_mask_op_on_a_nan_mask_file_fails_in_one_line(tmp_path, capsys):
    from safetensors.torch import save_file

    save_file({"logits": torch.tensor([[float("nan"), 1.0]])}, str(tmp_path / "nan.safetensors"))
    assert ahamask(["mask", "info", str(tmp_path / "nan.safetensors")]) == 2
    assert "nan.safetensors: mask logits must be finite" in _one_error_line(capsys)


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_mask_files_get_the_mode_of_any_new_file(tmp_path, umask):
    old = os.umask(umask)
    try:
        save_mask(tmp_path / "m.safetensors", torch.randn(2, 2))
        (tmp_path / "plain.txt").write_text("x")  # how Lightning's checkpoint files are created
    finally:
        os.umask(old)
    mode = (tmp_path / "m.safetensors").stat().st_mode & 0o777
    assert mode == 0o666 & ~umask == (tmp_path / "plain.txt").stat().st_mode & 0o777
    assert sorted(os.listdir(tmp_path)) == ["m.safetensors", "plain.txt"]  # no temporary file left


def test_refused_pickle_message_gives_no_unsafe_advice(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    torch.save({"model": {"tensor": Evil()}}, tmp_path / "evil.pth")
    with pytest.raises(MaskFileError) as err:
        import_official(tmp_path / "evil.pth", 2, 2)
    message = str(err.value)
    assert "\n" not in message and "weights_only" not in message
    assert message.startswith(f"{tmp_path / 'evil.pth'}: not a readable torch checkpoint (refused unsafe pickle")
    assert "system" in message  # names what it refused to build
