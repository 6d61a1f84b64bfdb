"""Apply masks to audio: build a model, read masks and clips, decode (gated or pruned).

:func:`infer` is what ``ahamask infer`` runs. Without pruning, every (clip, mask) pair goes into
one stream of batches whose samples carry their own mask (``HeadGate`` takes a per-sample mask
``[batch, layers, heads]``), so several tasks share each ``generate`` call. With pruning, a
pruned copy of the attention blocks is built per mask (pruning is a property of the weights,
so one batch cannot mix masks) and swapped in while that mask's clips decode.

Models are described by a *spec*, ``{"class_path": ..., "init_args": {...}}``: the shape of the
``model.init_args.model`` entry of the experiment YAMLs, so a YAML builds the adapter the way
it says. ``--model tiny`` is the committed TinyLALM testbed.
"""
from __future__ import annotations

import importlib
import inspect
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .data.audio import AudioConfig, AudioError, load_audio
from .data.manifest import iter_lines
from .data.paths import PathResolver
from .masking import HeadGate, load_mask
from .masking.prune import pruned_copies, use_blocks
from .models.base import LALMAdapter

ALL_ON = "all-on"
TINY_DEFAULT = "checkpoints/tiny_lalm_8x16g"  # the default testbed (8 x 16 heads)
TINY_CLASS = "ahamask_lightning.models.TinyLALM"


@dataclass
class NamedMask:
    name: str           # the file as given, or ``all-on``
    mask: torch.Tensor  # 0/1 [layers, heads]

    @property
    def active(self) -> int:
        return int(self.mask.sum().item())


@dataclass
class Clip:
    name: str                  # the path as given, or the manifest id
    wave: torch.Tensor         # float32 [T] at the model's sample rate
    instruction: str | None = None


# --- the model ------------------------------------------------------------------------------
def model_spec(model: str | None = None, weights: str | None = None, config: str | None = None) -> dict:
    """The spec of ``--model tiny [--weights DIR]`` or ``--config YAML [--weights DIR]``."""
    if config is not None:
        if model is not None:
            raise ValueError("--model and --config: give one of them")
        spec = spec_from_yaml(config)
    elif model == "tiny":
        spec = {"class_path": TINY_CLASS, "init_args": {"checkpoint": TINY_DEFAULT}}
    else:
        raise ValueError(f"--model: expected 'tiny' (or --config EXPERIMENT.yaml), got {model!r}")
    if weights is not None:
        key = _weights_key(spec["class_path"])
        spec["init_args"][key] = weights
    return spec


def spec_from_yaml(path: str) -> dict:
    """``model.init_args.model`` of an experiment YAML, following its ``config:`` includes.

    The YAMLs are jsonargparse configs: nested or dotted keys (``model.init_args.model: ...``) and
    ``config: base/x.yaml`` includes (relative to the including file, overridden by its own
    keys). Only the adapter entry is read here; LightningCLI's parser resolves the same files but
    validates the trainer and data sections too (manifests, output folders), which ``infer`` and
    ``prune`` do not use.
    """
    flat = _yaml_flat(Path(path), [])
    class_path = flat.get(_MODEL + "class_path")
    if not class_path:
        raise ValueError(f"{path}: expected model.init_args.model with a class_path (an LALM adapter)")
    init_args: dict = {}
    prefix = _MODEL + "init_args."
    for key, value in flat.items():
        if key.startswith(prefix):
            *parents, leaf = key[len(prefix):].split(".")
            node = init_args
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
    spec = {"class_path": str(class_path), "init_args": init_args}
    seed = flat.get("seed_everything")
    if isinstance(seed, int) and not isinstance(seed, bool):
        spec["seed"] = seed  # what fit and test seed before they build the model (a tiny: true one is random)
    return spec


_MODEL = "model.init_args.model."


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _yaml_flat(path: Path, chain: list[Path]) -> dict:
    import yaml

    if not path.is_file():
        where = f" (included by {chain[-1]})" if chain else ""
        raise FileNotFoundError(f"{path}: experiment YAML not found{where}")
    if path.resolve() in chain:
        raise ValueError(f"{path}: includes itself through config:")
    try:
        cfg = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not a readable YAML file ({str(exc).splitlines()[0]})") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: expected a YAML mapping")
    includes = cfg.pop("config", None) or []
    merged: dict = {}
    for inc in [includes] if isinstance(includes, str) else includes:
        merged.update(_yaml_flat(path.parent / inc, chain + [path.resolve()]))
    own = _flatten(cfg)
    new_class = own.get(_MODEL + "class_path")
    if new_class and new_class != merged.get(_MODEL + "class_path"):  # another class: earlier init_args go
        merged = {k: v for k, v in merged.items() if not k.startswith(_MODEL + "init_args.")}
    merged.update(own)
    return merged


def _class(class_path: str) -> type:
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        raise ValueError(f"class_path {class_path!r}: no such class") from None
    if not (isinstance(cls, type) and issubclass(cls, LALMAdapter)):
        raise ValueError(f"class_path {class_path!r}: expected an LALMAdapter subclass")
    return cls


def _weights_key(class_path: str) -> str:
    params = inspect.signature(_class(class_path)).parameters
    for key in ("checkpoint", "pretrained"):
        if key in params:
            return key
    raise ValueError(f"--weights: {class_path} takes no checkpoint or pretrained argument")


def build_adapter(spec: dict) -> LALMAdapter:
    """The frozen adapter a spec describes (jsonargparse's class_path/init_args, plain values only),
    built after seeding with the spec's ``seed`` (the YAML's ``seed_everything``) as ``fit`` and
    ``test`` do, so a random ``tiny: true`` model is the one a mask was trained on."""
    args = dict(spec.get("init_args") or {})
    nested = [k for k, v in args.items() if isinstance(v, dict) and "class_path" in v]
    if nested:
        raise ValueError(f"{spec['class_path']}: init_args.{nested[0]} is a class; use `ahamask test` for such YAMLs")
    if spec.get("seed") is not None:
        from lightning.fabric.utilities.seed import seed_everything

        seed_everything(int(spec["seed"]), verbose=False)
    return _class(spec["class_path"])(**args).freeze()


# --- masks and clips ----------------------------------------------------------------------
def load_masks(names: Sequence[str], shape: tuple[int, int]) -> list[NamedMask]:
    """Mask files (or ``all-on``), each checked against the model's ``[layers, heads]``."""
    if not names:
        raise ValueError("--mask: give at least one mask file (or all-on)")
    out = []
    for name in names:
        if name == ALL_ON:
            out.append(NamedMask(name, torch.ones(shape)))
        else:
            out.append(NamedMask(name, load_mask(name, shape).mask))
    return out


def load_clips(paths: Sequence[str], manifest: str | None, adapter: LALMAdapter,
               instruction: str | None = None) -> list[Clip]:
    """Audio files and manifest lines (``{"audio": path, "id"?: ..., "instruction"?: ...}``) as clips."""
    cfg = AudioConfig(adapter.sample_rate, adapter.min_seconds, adapter.max_seconds, "reject")
    items: list[tuple[str, list[str], str | None, str]] = [(p, [p], instruction, "") for p in paths]
    if manifest is not None:
        items += _manifest_items(manifest, instruction)
    if not items:
        raise ValueError("no audio: give audio files or --manifest FILE")
    clips = []
    for name, files, ins, line in items:
        try:
            clips.append(Clip(name, load_audio(files, cfg), ins))
        except AudioError as exc:
            where = (f"{line}: " if line else "") + (files[0] if len(files) == 1 else " + ".join(files))
            raise ValueError(f"{where}: cannot use this audio ({exc.reason}: {exc.detail or 'no detail'}); expected "
                             f"a readable audio file of at most {adapter.max_seconds:g} s") from None
    return clips


def _manifest_items(manifest: str, instruction: str | None) -> list[tuple[str, list[str], str | None, str]]:
    """(name, audio files, instruction, ``manifest:line``) per line. Paths relative to the manifest
    are found as the data layer finds them; absolute ones are taken as given, like ``--audio``
    files (no corpus root to keep them in: the user names every file of an ``infer`` run)."""
    if not os.path.isfile(manifest):
        raise FileNotFoundError(f"{manifest}: manifest file not found")
    resolve = PathResolver(manifest, allow_outside_root=True)
    items = []
    for line, text in iter_lines(manifest):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError:
            obj = None
        audio = obj.get("audio") if isinstance(obj, dict) else None
        files = [audio] if isinstance(audio, str) else audio
        if not (isinstance(files, list) and 1 <= len(files) <= 2 and all(isinstance(f, str) and f for f in files)):
            raise ValueError(f"{manifest}:{line}: expected a JSON object with 'audio' (a path or a list of two)")
        name = str(obj.get("id") or files[0])
        items.append((name, [resolve(f) for f in files], obj.get("instruction") or instruction, f"{manifest}:{line}"))
    return items


# --- decoding -------------------------------------------------------------------------------
def _device(adapter: LALMAdapter) -> torch.device:
    return next(adapter.parameters()).device


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _decode(adapter: LALMAdapter, clips: Sequence[Clip], generation: dict) -> list[str]:
    batch = adapter.collate([c.wave for c in clips], [c.instruction for c in clips])
    return adapter.generate(_to(batch, _device(adapter)), **generation)


def infer(adapter: LALMAdapter, masks: Sequence[NamedMask], clips: Sequence[Clip], prune: bool = False,
          batch_size: int = 8, generation: dict | None = None) -> list[dict]:
    """One record per clip and mask (clip-major order): clip, mask, text, active heads, pruned.

    ``prune=False``: (clip, mask) pairs are decoded ``batch_size`` at a time, each sample gated by
    its own mask. ``prune=True``: per mask, a physically pruned model decodes that mask's clips.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size: expected an integer >= 1, got {batch_size}")
    generation = dict(generation or {})
    texts: dict[tuple[int, int], str] = {}
    if prune:
        for m, named in enumerate(masks):
            blocks, _ = pruned_copies(adapter, named.mask)
            with use_blocks(adapter, blocks):
                for start in range(0, len(clips), batch_size):
                    chunk = clips[start:start + batch_size]
                    for c, text in zip(range(start, start + len(chunk)), _decode(adapter, chunk, generation)):
                        texts[c, m] = text
            del blocks
    else:
        pairs = [(c, m) for c in range(len(clips)) for m in range(len(masks))]
        gate = HeadGate(adapter.gated_attentions(), adapter.num_heads, adapter.head_dim)
        try:
            for start in range(0, len(pairs), batch_size):
                chunk = pairs[start:start + batch_size]
                per_sample = torch.stack([masks[m].mask for _, m in chunk]).to(_device(adapter))
                with gate.apply(per_sample):
                    out = _decode(adapter, [clips[c] for c, _ in chunk], generation)
                texts.update(zip(chunk, out))
        finally:
            gate.remove()
    total = adapter.num_layers * adapter.num_heads
    return [{"clip": clip.name, "mask": named.name, "text": texts[c, m], "active_heads": named.active,
             "heads": total, "pruned": prune}
            for c, clip in enumerate(clips) for m, named in enumerate(masks)]


def write_jsonl(path: str | os.PathLike, records: Sequence[dict]) -> None:
    p = Path(path)
    if str(p.parent) and not p.parent.is_dir():
        raise FileNotFoundError(f"--out {path}: directory {p.parent} does not exist")
    with p.open("w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")


__all__ = ["ALL_ON", "Clip", "NamedMask", "TINY_DEFAULT", "build_adapter", "infer", "load_clips",
           "load_masks", "model_spec", "spec_from_yaml", "write_jsonl"]
