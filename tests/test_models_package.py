"""``ahamask_lightning.models`` exports every adapter: those the shipped YAMLs name and every concrete one
of the package; importing it stays cheap (no model built, no optional heavy library pulled in); every
adapter's batch follows one of the two layouts the schema in ``data/collate.py`` documents."""
from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from ahamask_lightning import models
from ahamask_lightning.models.base import LALMAdapter

REPO = Path(__file__).resolve().parents[1]


def _class_paths(node) -> list[str]:
    if isinstance(node, dict):
        found = [node["class_path"]] if isinstance(node.get("class_path"), str) else []
        return found + [p for value in node.values() for p in _class_paths(value)]
    if isinstance(node, list):
        return [p for value in node for p in _class_paths(value)]
    return []


def _resolve(class_path: str):
    module, name = class_path.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


def _shipped_adapters() -> dict[str, type]:
    """class_path -> class, for every adapter a YAML under experiments/ names."""
    found = {}
    for path in sorted((REPO / "experiments").rglob("*.yaml")):
        for class_path in _class_paths(yaml.safe_load(path.read_text())):
            cls = _resolve(class_path)
            if isinstance(cls, type) and issubclass(cls, LALMAdapter):
                found[class_path] = cls
    return found


def test_every_adapter_the_yamls_name_is_exported():
    shipped = _shipped_adapters()
    assert {cls.__name__ for cls in shipped.values()} >= {"Qwen2AudioAdapter", "SalmonnAdapter", "TinyLALM"}
    for class_path, cls in shipped.items():
        assert getattr(models, cls.__name__, None) is cls, f"{class_path} is not ahamask_lightning.models.{cls.__name__}"
        assert cls.__name__ in models.__all__


def test_every_adapter_class_of_the_package_is_exported():
    todo, found = list(LALMAdapter.__subclasses__()), []
    while todo:
        cls = todo.pop()
        todo += cls.__subclasses__()
        if cls.__module__.startswith("ahamask_lightning.models"):
            found.append(cls)
    assert len(found) >= 8  # the seven families and the shared chat base
    for cls in found:
        assert getattr(models, cls.__name__, None) is cls, f"{cls.__module__}.{cls.__name__} is not exported"


def test_importing_the_package_is_cheap():
    code = ("import sys, ahamask_lightning.models; "
            "print(' '.join(m for m in ('peft', 'lightning', 'torchvision', 'mistral_common') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == ""


CHAT_TEXT = {"gen_input_ids", "gen_attention_mask"}, {"input_ids", "attention_mask", "labels"}
SPLICE_TEXT = {"prefix_ids", "prefix_lens", "suffix_ids", "suffix_lens"}, {"target_ids", "target_lens"}


def test_every_adapter_collates_one_of_the_two_documented_layouts():
    """The batch schema of ``data/collate.py``: chat layout or splice layout, plus the adapter's audio tensors."""
    from ahamask_lightning.models.tiny_lalm import random_tiny_lalm

    g = torch.Generator().manual_seed(0)
    audios = [0.1 * torch.randn(16000, generator=g), 0.1 * torch.randn(24000, generator=g)]
    names = [n for n in models.__all__ if n not in ("LALMAdapter", "ChatLALMAdapter")]
    for name in names:
        torch.manual_seed(0)
        adapter = random_tiny_lalm(["male female"]) if name == "TinyLALM" else getattr(models, name)(tiny=True)
        chat = isinstance(adapter, models.ChatLALMAdapter)
        prompt_keys, target_keys = CHAT_TEXT if chat else SPLICE_TEXT
        gen = adapter.collate(audios, ["Answer.", None])
        train = adapter.collate(audios, ["Answer.", None], ["male", "female"])
        assert prompt_keys <= set(gen) and not target_keys & set(gen), name
        assert prompt_keys | target_keys <= set(train), name
        audio_keys = set(train) - prompt_keys - target_keys
        assert audio_keys and not audio_keys & (CHAT_TEXT[0] | CHAT_TEXT[1] | SPLICE_TEXT[0] | SPLICE_TEXT[1]), name
        if chat:
            assert audio_keys == set(adapter.audio_keys), name
            assert (gen["gen_attention_mask"][:, -1] == 1).all(), name  # left-padded
            assert (train["attention_mask"][:, 0] == 1).all(), name  # right-padded
            assert (train["labels"][train["attention_mask"] == 0] == -100).all(), name
        for key in audio_keys:
            assert len(train[key]) == len(audios), (name, key)
