"""The ten masks released with the AHAMask paper (SALMONN-13B, 40 layers x 40 heads), shipped as
mask files with their provenance. In a clone they are also reachable as ``masks/salmonn-13b/``.

``released_mask("asr_librispeech")`` gives the path of one of them; ``released_names()`` lists them.
"""
from __future__ import annotations

import json
from pathlib import Path

RELEASED_DIR = Path(__file__).resolve().parent
MODEL = "salmonn-13b"


def released_names(model: str = MODEL) -> list[str]:
    """The names (task_dataset) of the released masks of ``model``, from its provenance file."""
    provenance = RELEASED_DIR / model / "provenance.json"
    if not provenance.is_file():
        raise FileNotFoundError(f"{provenance}: no released masks for model {model!r}")
    return sorted(json.loads(provenance.read_text())["masks"])


def released_mask(name: str, model: str = MODEL) -> Path:
    """The shipped ``.safetensors`` file of the released mask ``name`` (e.g. ``asr_librispeech``)."""
    names = released_names(model)
    if name not in names:
        raise ValueError(f"released mask {name!r}: expected one of {', '.join(names)}")
    return RELEASED_DIR / model / f"{name}.safetensors"
