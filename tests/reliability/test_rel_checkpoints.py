"""Checkpoints: the mask, optimizer and loop state only (kilobytes), the model they belong to, and
safe loading (``weights_only=True``; a crafted pickle that would run code is refused)."""
from __future__ import annotations

import ast
import os
import shutil
from pathlib import Path

import pytest
import torch
from conftest import REPO, load_ckpt
from safetensors import safe_open

from ahamask_lightning.cli.main import main as ahamask


def _tensors(obj) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _tensors(v)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _tensors(v)]
    return []


def _one_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ahamask:")]
    assert len(err) == 1, err
    return err[0]


@pytest.fixture
def no_model_build(monkeypatch):
    """Fails the test if the tiny Qwen2-Audio is built (i.e. if the error came after model loading)."""
    import ahamask_lightning.models.qwen2_audio as qa

    def refuse(*a, **k):
        raise AssertionError("the model was built before the error was reported")

    monkeypatch.setattr(qa, "tiny_config", refuse)


@pytest.mark.fault("checkpoint size and content", kept="mask + optimizer + loop + RNG state only, no frozen weight")
def test_checkpoint_holds_mask_optimizer_and_loop_state_only(reference):
    from ahamask_lightning.models import Qwen2AudioAdapter

    path = reference["ckdir"] / "last.ckpt"
    ckpt = load_ckpt(path)
    assert set(ckpt["state_dict"]) == {"head_mask.logits", "head_mask.temperature"}
    assert ckpt["ahamask_model"] == {"model_id": "qwen2-audio-tiny-instruct", "layers": 2, "heads": 4}
    assert {"optimizer_states", "lr_schedulers", "loops", "callbacks"} <= set(ckpt)
    frozen = Qwen2AudioAdapter(variant="instruct", tiny=True)
    frozen_bytes = sum(p.numel() * p.element_size() for p in frozen.parameters())
    frozen_shapes = {tuple(p.shape) for p in frozen.parameters() if p.dim() >= 2}
    # No tensor of the checkpoint has the shape of a frozen weight matrix, and the file is kilobytes.
    assert not [t.shape for t in _tensors(ckpt) if t.dim() >= 2 and tuple(t.shape) in frozen_shapes
                and tuple(t.shape) != (2, 4)]
    assert path.stat().st_size < 64_000 < frozen_bytes, (path.stat().st_size, frozen_bytes)


@pytest.mark.fault("resume a checkpoint into another model (same shape, other id; other layer count)",
                   kept="nothing loaded, one line naming both models, no interrupted.ckpt left behind")
@pytest.mark.parametrize("override, mine", [
    (["--model.init_args.model.init_args.variant", "base"], '"model_id": "qwen2-audio-tiny-base"'),
    (["--model.init_args.model.init_args.tiny_layers", "3"], '"layers": 3'),
])
def test_checkpoint_of_another_model_is_refused_in_one_line(reference, tmp_path, capsys, override, mine):
    root = tmp_path / "root"
    (root / "checkpoints").mkdir(parents=True)
    shutil.copy(reference["ckdir"] / "last.ckpt", root / "checkpoints" / "last.ckpt")
    code = ahamask(["fit", "--config", str(reference["config"]), "--trainer.default_root_dir", str(root),
                    "--ckpt_path", "last", *override])
    line = _one_line(capsys)
    assert code == 2
    assert line.startswith("ahamask: error: checkpoint belongs to ") and '"qwen2-audio-tiny-instruct"' in line
    assert mine in line
    assert sorted(p.name for p in (root / "checkpoints").iterdir()) == ["last.ckpt"]


@pytest.mark.fault("checkpoint carrying frozen weights", kept="refused in one line: AHAMask checkpoints hold the mask")
def test_checkpoint_with_weights_beyond_the_mask_is_refused(reference, tmp_path, capsys):
    ckpt = load_ckpt(reference["ckdir"] / "last.ckpt")
    ckpt["state_dict"]["adapter.model.lm_head.weight"] = torch.zeros(3, 3)
    bad = tmp_path / "fat.ckpt"
    torch.save(ckpt, bad)
    code = ahamask(["fit", "--config", str(reference["config"]), "--trainer.default_root_dir", str(tmp_path / "r"),
                    "--ckpt_path", str(bad)])
    assert code == 2
    assert "tensors beyond the mask (e.g. adapter.model.lm_head.weight)" in _one_line(capsys)


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.fault("crafted pickle checkpoint that would run code (--ckpt_path FILE and --ckpt_path last)",
                   kept="code never runs, refused in one line before the model is built")
@pytest.mark.parametrize("how", ["file", "last"])
def test_crafted_pickle_checkpoint_is_refused(reference, tmp_path, capsys, no_model_build, how):
    marker = tmp_path / "pwned"
    root = tmp_path / "root"
    (root / "checkpoints").mkdir(parents=True)
    evil = root / "checkpoints" / ("last.ckpt" if how == "last" else "evil.ckpt")
    torch.save({"state_dict": {}, "payload": _Evil(marker)}, evil)
    code = ahamask(["fit", "--config", str(reference["config"]), "--trainer.default_root_dir", str(root),
                    "--ckpt_path", str(evil) if how == "file" else "last"])
    line = _one_line(capsys)
    assert code == 2 and not marker.exists()
    assert f"ckpt_path: {evil}: refused: it holds objects beyond tensors and plain values" in line
    assert "system" in line  # names the global it refused


def test_weights_only_false_is_refused(reference, tmp_path, capsys, no_model_build):
    code = ahamask(["fit", "--config", str(reference["config"]), "--trainer.default_root_dir", str(tmp_path),
                    "--weights_only", "false"])
    assert code == 2 and "weights_only: false is refused" in _one_line(capsys)


@pytest.mark.fault("source audit", kept="every torch.load passes weights_only=True; no pickle.load")
def test_every_torch_load_in_the_package_is_weights_only():
    calls, bad = 0, []
    for path in sorted((REPO / "src" / "ahamask_lightning").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = ast.unparse(node.func)
            if name in ("pickle.load", "pickle.loads", "torch.serialization.load"):
                bad.append(f"{path.name}:{node.lineno}: {name}")
            if name == "torch.load":
                calls += 1
                kw = {k.arg: k.value for k in node.keywords}
                if not (isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True):
                    bad.append(f"{path.name}:{node.lineno}: torch.load without weights_only=True")
    assert calls >= 3 and not bad, bad


def test_mask_files_are_safetensors(reference):
    for path in [*reference["ckdir"].glob("mask-step*.safetensors")][:3]:
        with safe_open(str(path), framework="pt") as f:
            assert list(f.keys()) == ["logits"] and f.metadata()["model_id"] == "qwen2-audio-tiny-instruct"
        assert path.read_bytes()[:2] != b"\x80\x02" and not path.read_bytes().startswith(b"PK")  # no pickle / zip


@pytest.mark.parametrize("method", ["fit", "validate", "test", "predict"])
def test_weights_only_is_described_as_refused_and_still_passed_on(method, capsys):
    """Lightning's help for ``--weights_only`` advises false, which this CLI refuses: the help says
    what happens, and the value (made True before the run) still reaches the Trainer method."""
    from lightning.pytorch import Trainer

    from ahamask_lightning.cli.parser import OneLineErrorParser

    parser = OneLineErrorParser()
    assert "weights_only" in parser.add_method_arguments(Trainer, method)
    parser.print_help()
    text = " ".join(capsys.readouterr().out.split())
    assert "always read with weights_only=True" in text and "false is refused" in text
    assert "use ``weights_only=False``" not in text
