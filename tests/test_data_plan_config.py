"""The training plan's settings: ``limit`` checked at construction, ``shuffle_buffer: 1`` keeping the
manifest order, a resume refused (with a warning, epoch restarted) under another plan, and the
device the loader's collectives use for each process-group backend."""
from __future__ import annotations

import json
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.distributed as dist

from ahamask_lightning.data import ManifestDataModule


def manifest(root: Path, name: str, n: int, seconds: float = 0.3) -> str:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(name))
    rows = []
    for i in range(n):
        sf.write(root / f"{name}{i}.wav", (0.1 * rng.standard_normal(round(seconds * 8000))).astype("float32"), 8000)
        rows.append({"id": f"{name}{i}", "audio": f"{name}{i}.wav", "task": "gr", "text": "Male"})
    path = root / f"{name}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def ids_of(batches) -> list[str]:
    return [s["id"] for b in batches for s in b]


@pytest.mark.parametrize("limit", [0, -1, 2.5, True])
def test_a_limit_that_keeps_no_line_is_refused_in_one_line(tmp_path: Path, limit) -> None:
    man = manifest(tmp_path, "a", 2)
    with pytest.raises(ValueError) as err:
        ManifestDataModule(train=man, known_tasks={"gr"}, limit=limit)
    assert str(err.value).startswith("limit must be") and repr(limit) in str(err.value) and "\n" not in str(err.value)
    assert ids_of(ManifestDataModule(val=man, known_tasks={"gr"}, limit=1).val_dataloader()[0]) == ["a0"]


def test_shuffle_buffer_one_keeps_the_manifest_order_every_epoch(tmp_path: Path) -> None:
    mans = [manifest(tmp_path, name, 2) for name in "abcd"]
    loader = ManifestDataModule(train=mans, batch_size=2, shuffle_buffer=1, known_tasks={"gr"}).train_dataloader()
    in_order = [f"{name}{i}" for name in "abcd" for i in range(2)]
    assert [ids_of(loader) for _ in range(3)] == [in_order] * 3


BASE = {"batch_size": 4, "seed": 3, "shuffle_buffer": 8}
CHANGES = [("batch_size", 2), ("seed", 4), ("shuffle_buffer", 4), ("limit", 12), ("max_batch_seconds", 3.0),
           ("min_seconds", 0.5), ("max_seconds", 20.0), ("on_too_long", "cut"), ("manifests", None)]


@pytest.mark.parametrize("key, value", CHANGES)
def test_a_resume_under_another_plan_warns_and_restarts_the_epoch(tmp_path: Path, key: str, value) -> None:
    mans = [manifest(tmp_path, "s", 16)]
    dm = ManifestDataModule(train=mans, known_tasks={"gr"}, **BASE)
    it = iter(dm.train_dataloader())
    before = [s["id"] for _ in range(2) for s in dm.on_before_batch_transfer(next(it), 0)]
    state = json.loads(json.dumps(dm.state_dict()))
    del it
    if key == "manifests":
        other = ManifestDataModule(train=[*mans, manifest(tmp_path, "t", 2)], known_tasks={"gr"}, **BASE)
    else:
        other = ManifestDataModule(train=mans, known_tasks={"gr"}, **{**BASE, key: value})
    with pytest.warns(UserWarning, match="cannot resume the data position") as caught:
        other.load_state_dict(state)
    message = str(caught[0].message)
    assert f"{key} was " in message and "epoch 0 restarts from its first sample" in message and "\n" not in message
    after = ids_of(other.train_dataloader())
    expected = Counter(f"s{i}" for i in range(16 if key != "limit" else value))
    if key == "manifests":
        expected.update(["t0", "t1"])
    assert len(before) == 8 and Counter(after) == expected  # the whole epoch again: nothing skipped


def test_a_position_saved_before_plans_were_recorded(tmp_path: Path) -> None:
    """A checkpoint without a plan: ``batch_size`` plans did not change (exact resume, silently);
    seconds-budget plans did (the budget is now kept), so that epoch restarts with a warning."""
    man = manifest(tmp_path, "s", 12)
    dm = ManifestDataModule(train=man, known_tasks={"gr"}, **BASE)
    it = iter(dm.train_dataloader())
    before = [s["id"] for s in dm.on_before_batch_transfer(next(it), 0)]
    old = {"train": {key: value for key, value in dm.state_dict()["train"].items() if key != "plan"}}
    resumed = ManifestDataModule(train=man, known_tasks={"gr"}, **BASE)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resumed.load_state_dict(old)
    assert Counter(before + ids_of(resumed.train_dataloader())) == Counter(f"s{i}" for i in range(12))
    seconds = ManifestDataModule(train=man, known_tasks={"gr"}, max_batch_seconds=2.0)
    with pytest.warns(UserWarning, match="version was 1, now 2"):
        seconds.load_state_dict(old)


@pytest.mark.parametrize("backend, device", [("gloo", "cpu"), ("nccl", "cuda"), ("hccl", "hpu"),
                                             ("cpu:gloo,cuda:nccl", "cpu")])
def test_collectives_use_the_backends_device(monkeypatch: pytest.MonkeyPatch, backend: str, device: str) -> None:
    """The loader's flags are reduced on a device the backend takes. HCCL takes accelerator tensors
    only, where a CPU tensor fails at the first DDP training batch; its plugin registers the device
    type with ``Backend.register_backend(..., devices=[...])`` (torch_npu: "npu", which torch
    knows only once torch_npu is imported; Habana: "hpu", used here)."""
    from ahamask_lightning.data import loader

    monkeypatch.setitem(dist.Backend.backend_capability, "hccl", ["hpu"])
    monkeypatch.setattr(dist, "get_backend", lambda group=None: backend)
    got = loader.collective_device()
    assert isinstance(got, torch.device) and got.type == device
