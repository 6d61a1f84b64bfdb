"""Devices this machine lacks and device selections Lightning refuses: one line naming the key,
before any model is built; errors from DataLoader workers and TypeErrors keep where they happened."""
from __future__ import annotations

import inspect

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from ahamask_lightning.accelerators import parse_devices
from ahamask_lightning.cli.errors import error_line
from ahamask_lightning.cli.main import main as ahamask

NO_CUDA = not torch.cuda.is_available()
CASES = [
    pytest.param(["--trainer.accelerator", "gpu"], "trainer.accelerator: gpu asked for, but no CUDA or MPS GPU",
                 marks=pytest.mark.skipif(not NO_CUDA, reason="this machine has a GPU"), id="gpu without a GPU"),
    pytest.param(["--trainer.accelerator", "cuda"], "trainer.accelerator: cuda asked for, but this machine has none",
                 marks=pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA"), id="cuda without CUDA"),
    pytest.param(["--trainer.devices", "-3"], "trainer.devices: -3 selects no device", id="devices -3"),
    pytest.param(["--trainer.devices", "0"], "trainer.devices: 0 selects no device", id="devices 0"),
    pytest.param(["--trainer.devices", "-1"], "trainer.devices: -1 is not valid on the CPU", id="cpu devices -1"),
    pytest.param(["--trainer.devices", "[0, 1]"], "trainer.devices: [0, 1] is not valid on the CPU",
                 id="cpu device indices"),
    pytest.param(["--trainer.accelerator", "cuda", "--trainer.devices", "99"], "trainer.devices: 99 asks for 99 cuda",
                 marks=pytest.mark.skipif(NO_CUDA, reason="needs CUDA"), id="more GPUs than visible"),
    pytest.param(["--trainer.precision", "bf16-true"],
                 "trainer.precision: bf16-true would train the mask logits in half precision", id="bf16-true"),
]


@pytest.fixture
def no_model_build(monkeypatch):
    import ahamask_lightning.models.qwen2_audio as qa

    def refuse(*a, **k):
        raise AssertionError("the model was built before the error was reported")

    monkeypatch.setattr(qa, "tiny_config", refuse)


@pytest.mark.fault("accelerator this machine lacks; devices -3, 0, -1 or indices on the CPU; mask logits in half precision",
                   kept="one line naming trainer.accelerator / trainer.devices / trainer.precision; no model built")
@pytest.mark.parametrize("override, expected", CASES)
def test_device_errors_are_one_line_before_the_model(override, expected, reference, tmp_path, capsys,
                                                     no_model_build):
    code = ahamask(["fit", "--config", str(reference["config"]), "--trainer.default_root_dir", str(tmp_path),
                    *override])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("ahamask: error: ") and expected in err[0]


def test_device_selections_lightning_accepts_pass():
    assert parse_devices("auto") == "auto" and parse_devices(2) == 2 and parse_devices("-1") == -1
    assert parse_devices("0,2") == [0, 2] and parse_devices([1]) == [1]
    for bad in (0, -2, "x", [], [-1], True):
        with pytest.raises(ValueError, match="trainer.devices"):
            parse_devices(bad)


class _BadSample(Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int):
        return float(None)  # a TypeError inside the worker


def test_worker_error_keeps_the_workers_file_and_line():
    loader = DataLoader(_BadSample(), num_workers=1)
    with pytest.raises(TypeError) as err:
        next(iter(loader))
    line = error_line(err.value)
    where = inspect.getsourcelines(_BadSample.__getitem__)[1] + 1
    assert "\n" not in line
    assert line.startswith("TypeError in DataLoader worker process 0 at ")
    assert f"test_rel_devices.py:{where} (in __getitem__): TypeError: float() argument must be" in line


def test_a_type_error_keeps_where_it_was_raised():
    def build():
        return len(None)

    with pytest.raises(TypeError) as err:
        build()
    line = error_line(err.value)
    assert line.startswith("TypeError at ") and "test_rel_devices.py:" in line and "(in build): " in line


def test_a_multi_line_message_says_what_was_left_out():
    """A library error of several lines is cut to its first; the line says so and how to see the rest."""
    line = error_line(ValueError("the first line\n\n  a detail\n  another detail\n"))
    assert line == "the first line (2 more lines: AHAMASK_TRACEBACK=1 shows the whole error)"
    assert error_line(ValueError("one line only")) == "one line only"


def test_ahamask_traceback_raises_the_whole_error(tmp_path, capsys, monkeypatch):
    bad = tmp_path / "trunc.safetensors"
    bad.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{")
    assert ahamask(["mask", "info", str(bad)]) == 2
    assert "trunc.safetensors" in capsys.readouterr().err
    monkeypatch.setenv("AHAMASK_TRACEBACK", "1")
    with pytest.raises(ValueError, match="trunc.safetensors"):
        ahamask(["mask", "info", str(bad)])
