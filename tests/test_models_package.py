"""``ahamask_lightning.models`` exports every adapter: those the shipped YAMLs name and every concrete one
of the package; importing it stays cheap (no model built, no optional heavy library pulled in)."""
from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import yaml

import ahamask_lightning.models as models
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
