"""A physically pruned LALM on disk: ``ahamask prune --out DIR`` writes it, :func:`load_pruned` reads it.

Why not ``save_pretrained``: transformers' Llama / Qwen2 configurations hold one
``num_attention_heads`` and one ``num_key_value_heads`` for every layer, and their attention
modules read the per-layer head count from that shared config (the ``pruned_heads`` config
field and ``PreTrainedModel.prune_heads`` serve the BERT-style families only). A model whose
layers keep different numbers of heads cannot be described by such a config, so
``save_pretrained`` would write weights that ``from_pretrained`` cannot load. The directory
therefore holds:

* ``model.json``: the adapter spec (``class_path`` + ``init_args``, as in the experiment YAMLs);
* ``mask.safetensors``: the mask the model was pruned with (the unpruned ``[layers, heads]``);
* ``pruning.json``: per layer, the query heads and KV groups kept (and padding heads), the
  human-readable record of what the weights hold;
* ``model.safetensors``: the whole pruned adapter's state dict, written with safetensors'
  ``save_model`` (which handles tied weights).

:func:`load_pruned` builds the adapter from the spec, prunes it with the recorded mask (which
gives every layer its recorded shape), checks the layout against ``pruning.json`` and loads the
weights strictly. Building from the spec needs what the spec names (a TinyLALM checkpoint
directory, a local checkpoint for real models, nothing for ``tiny: true`` random models); its
weights are then replaced by the saved ones.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model

from .masking import load_mask, save_mask
from .masking.prune import PruneReport, prune_adapter
from .models.base import LALMAdapter
from .results import absolute_paths
from .serving import build_adapter

FORMAT = "ahamask-pruned-1"
FILES = ("model.json", "mask.safetensors", "pruning.json", "model.safetensors")


def layout(report: PruneReport) -> list[dict]:
    return [{"layer": r.layer, "heads": r.heads, "kv_heads": r.kv_heads, "kept_heads": r.kept_heads,
             "kept_kv_groups": r.kept_groups, "padding_heads": r.padding_heads} for r in report.layers]


def check_out_dir(out: str | os.PathLike) -> Path:
    """The ``--out`` directory of a pruned model, refused in one line (before any model loads) when it
    is a file or its parent does not exist."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out}: exists and is not a directory")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"--out {out}: parent directory {out.parent} does not exist")
    return out


def save_pruned(adapter: LALMAdapter, spec: dict, mask: torch.Tensor, out: str | os.PathLike) -> PruneReport:
    """Prune ``adapter`` (in place) to ``mask`` and write it to the directory ``out`` (created)."""
    out = check_out_dir(out)
    report = prune_adapter(adapter, mask)
    out.mkdir(exist_ok=True)
    (out / "model.json").write_text(json.dumps({"format": FORMAT, **absolute_paths(spec)}, indent=1))
    save_mask(out / "mask.safetensors", torch.where(mask > 0.5, 4.0, -4.0), model_id=adapter.model_id)
    (out / "pruning.json").write_text(json.dumps(
        {"format": FORMAT, "model_id": adapter.model_id, "active_heads": int((mask > 0.5).sum()),
         "params_attention_before": report.params_before, "params_attention_after": report.params_after,
         "layers": layout(report)}, indent=1))
    save_model(adapter, str(out / "model.safetensors"), metadata={"format": FORMAT})
    return report


def load_pruned(directory: str | os.PathLike) -> LALMAdapter:
    """The pruned adapter saved in ``directory`` (frozen, eval mode)."""
    d = Path(directory)
    missing = [name for name in FILES if not (d / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{d}: not a pruned model directory, missing {', '.join(missing)}")
    spec = json.loads((d / "model.json").read_text())
    if spec.pop("format", None) != FORMAT:
        raise ValueError(f"{d}/model.json: expected format {FORMAT!r}")
    adapter = build_adapter(spec)
    mask = load_mask(d / "mask.safetensors", (adapter.num_layers, adapter.num_heads)).mask
    report = prune_adapter(adapter, mask)
    recorded = json.loads((d / "pruning.json").read_text())["layers"]
    if layout(report) != recorded:
        raise ValueError(f"{d}/pruning.json: the recorded layout differs from what the mask gives this model")
    missing_keys, unexpected = load_model(adapter, str(d / "model.safetensors"), strict=False)
    if missing_keys or unexpected:
        raise ValueError(f"{d}/model.safetensors: keys do not match the pruned model "
                         f"(missing {missing_keys[:3]}, unexpected {unexpected[:3]})")
    return adapter.freeze()
