"""Checkpoints carry the Ascend NPU's RNG state (the mask noise is drawn on the NPU's generator).

No NPU here: ``torch.npu`` is a stand-in with torch_npu's public RNG functions over two devices,
and ``torch_npu`` counts as imported, as it is once an NPU run has asked for it.
"""
from __future__ import annotations

import sys
import types

import torch

from ahamask_lightning.reliability import rng_state, set_rng_state


def _stand_in_npu(monkeypatch, initialized: bool = True) -> dict:
    devices = {0: torch.tensor([7], dtype=torch.uint8), 1: torch.tensor([1], dtype=torch.uint8)}
    current = {"device": 0}
    npu = types.SimpleNamespace(
        is_available=lambda: True, is_initialized=lambda: initialized,
        get_rng_state=lambda device="npu": devices[current["device"]].clone(),
        set_rng_state=lambda state, device="npu": devices.__setitem__(current["device"], state.clone()))
    monkeypatch.setitem(sys.modules, "torch_npu", types.ModuleType("torch_npu"))
    monkeypatch.setattr(torch, "npu", npu, raising=False)
    return {"devices": devices, "current": current}


def test_npu_rng_state_round_trips_on_this_processs_device(monkeypatch):
    npu = _stand_in_npu(monkeypatch)
    saved = rng_state()  # rank 0 on npu:0
    assert "npu_device" in saved
    assert torch.equal(saved["npu_device"], torch.tensor([7], dtype=torch.uint8))
    npu["devices"][0] = torch.tensor([9], dtype=torch.uint8)  # the generator moves on
    set_rng_state(saved)
    assert int(npu["devices"][0]) == 7
    npu["current"]["device"] = 1  # rank 1 resumes on npu:1 from rank 0's checkpoint: its own device gets it
    set_rng_state(saved)
    assert int(npu["devices"][1]) == 7
    # before an NPU is in use, and without torch_npu, there is no NPU state (nor a call to torch.npu)
    _stand_in_npu(monkeypatch, initialized=False)
    assert "npu_device" not in rng_state()
    monkeypatch.delitem(sys.modules, "torch_npu")
    assert "npu_device" not in rng_state()
    set_rng_state(saved)  # a checkpoint from an NPU run, read where torch_npu is not imported: its NPU state is skipped
