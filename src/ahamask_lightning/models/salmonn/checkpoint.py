"""The released ``salmonn_v1.pth``: key map onto this code's modules, strict load and validation.

``torch.load(path, weights_only=True)["model"]`` holds the trained parts only: Q-Former, query token, projection,
both LayerNorms and the LoRA A/B matrices, plus a few saved-by-accident tensors. Every released
key is either mapped onto a parameter here or ignored with a stated reason; every parameter of
the trained parts must be filled. Whisper, BEATs and Vicuna come from their own files.
"""
from __future__ import annotations

import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

# Released name -> this code's name; first matching rule wins.
KEY_RULES: list[tuple[str, str]] = [
    (r"^speech_Qformer\.bert\.embeddings\.LayerNorm\.", "connector.speech_qformer.layernorm."),
    (r"^speech_Qformer\.bert\.encoder\.layer\.(\d+)\.(attention|crossattention)\.self\.",
     r"connector.speech_qformer.encoder.layer.\1.\2.attention."),
    (r"^speech_Qformer\.bert\.encoder\.", "connector.speech_qformer.encoder."),
    (r"^(ln_speech|ln_audio|speech_query_tokens|speech_llama_proj)(\.|$)", r"connector.\1\2"),
    # peft >= 0.3 names: base_model.model.model.layers.{i}.self_attn.{q,v}_proj.lora_{A,B}.default.weight
    (r"^(llama_model\..*\.lora_[AB]\.default\.weight)$", r"\1"),
]
INVERSE_RULES: list[tuple[str, str]] = [
    (r"^connector\.speech_qformer\.layernorm\.", "speech_Qformer.bert.embeddings.LayerNorm."),
    (r"^connector\.speech_qformer\.encoder\.layer\.(\d+)\.(attention|crossattention)\.attention\.",
     r"speech_Qformer.bert.encoder.layer.\1.\2.self."),
    (r"^connector\.speech_qformer\.encoder\.", "speech_Qformer.bert.encoder."),
    (r"^connector\.", ""),
    (r"^(llama_model\..*\.lora_[AB]\.default\.weight)$", r"\1"),
]
# Released keys that are not weights to load, and why.
IGNORED: list[tuple[str, str]] = [
    (r"^llama_model\..*\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$",
     "RoPE inverse frequencies 1/10000^(2i/d): a deterministic buffer that transformers computes itself"),
    (r"^speech_Qformer\.bert\.embeddings\.position_ids$",
     "arange(512) buffer of BERT's deleted position embeddings; the query-only Q-Former uses no positions"),
    (r"^beats\.encoder\.layers\.\d+\.self_attn\.relative_attention_bias\.weight$",
     "alias of BEATs layer 0's shared relative-position embedding (frozen); BEATs loads from its own checkpoint"),
]


def _apply(rules: list[tuple[str, str]], key: str) -> str | None:
    for pattern, repl in rules:
        if re.search(pattern, key):
            return re.sub(pattern, repl, key, count=1)
    return None


def map_key(key: str) -> str | None:
    """This code's parameter name for a released key (None: ignored or unknown)."""
    return _apply(KEY_RULES, key)


def released_key(name: str) -> str | None:
    return _apply(INVERSE_RULES, name)


def ignore_reason(key: str) -> str | None:
    for pattern, reason in IGNORED:
        if re.search(pattern, key):
            return reason
    return None


def is_trained_part(name: str) -> bool:
    """Parameters that salmonn_v1.pth must fill (everything else is frozen and loaded elsewhere)."""
    return name.startswith("connector.") or (name.startswith("llama_model.") and ".lora_" in name)


def expected_keys(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Every key (and shape) the released checkpoint holds for this module structure."""
    out: dict[str, tuple[int, ...]] = {}
    for name, p in model.named_parameters():
        if is_trained_part(name):
            out[released_key(name)] = tuple(p.shape)
    llm = model.llm
    cfg = llm.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    for i in range(cfg.num_hidden_layers):
        out[f"llama_model.base_model.model.model.layers.{i}.self_attn.rotary_emb.inv_freq"] = (head_dim // 2,)
    out["speech_Qformer.bert.embeddings.position_ids"] = (1, 512)
    layers = model.beats.encoder.layers
    bias = layers[0].self_attn.relative_attention_bias
    if bias is not None:
        for i in range(1, len(layers)):
            out[f"beats.encoder.layers.{i}.self_attn.relative_attention_bias.weight"] = tuple(bias.weight.shape)
    return out


def compare(expected: dict[str, tuple[int, ...]], state: dict[str, torch.Tensor]) -> list[str]:
    """One line per problem: missing key, unexpected key or shape mismatch (expected vs found)."""
    problems = []
    for key, shape in expected.items():
        if key not in state:
            problems.append(f"missing key {key} (expected shape {list(shape)})")
        elif tuple(state[key].shape) != shape:
            problems.append(f"shape mismatch {key}: expected {list(shape)}, found {list(state[key].shape)}")
    for key, tensor in state.items():
        if key not in expected:
            problems.append(f"unexpected key {key} (shape {list(tensor.shape)})")
    return problems


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """``torch.load(path, weights_only=True)["model"]`` (a bare state dict is accepted too)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SALMONN checkpoint {path} not found")
    try:
        try:  # mmap avoids a second copy of the tensors; old (non-zip) pickles cannot be mapped
            ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's message would suggest weights_only=False: never here
        raise ValueError(f"{path}: not a PyTorch checkpoint that loads with weights_only=True") from None
    state = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a dict with a 'model' state dict of tensors")
    return state


@dataclass
class LoadReport:
    loaded: list[str] = field(default_factory=list)
    ignored: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def load_salmonn_state(model: nn.Module, state: dict[str, torch.Tensor], strict: bool = True) -> LoadReport:
    """Load the released tensors into ``model`` (a SalmonnAdapter); strict: raise on any problem.

    Parameters still on the meta device (a skeleton) are replaced by the loaded tensors, so a
    full-size structure can take the checkpoint with only the trained parts materialised.
    """
    report = LoadReport(problems=compare(expected_keys(model), state))
    params = dict(model.named_parameters())
    mapped: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        reason = ignore_reason(key)
        if reason is not None:
            report.ignored[key] = reason
            continue
        target = map_key(key)
        if target is None or target not in params:
            continue  # already reported by compare()
        if tuple(params[target].shape) == tuple(tensor.shape):
            mapped[target] = tensor
    unfilled = [n for n in params if is_trained_part(n) and n not in mapped]
    if not report.problems:  # otherwise the missing/mismatched keys already explain it
        report.problems += [f"parameter {n} is not filled by the checkpoint" for n in unfilled]
    if strict and report.problems:
        raise ValueError("salmonn checkpoint does not fit the model:\n  " + "\n  ".join(report.problems))
    # assign: meta parameters are replaced by the loaded tensors (torch keeps their requires_grad);
    # the mapped keys are the trained parts only, hence strict=False (problems are reported above)
    model.load_state_dict(mapped, strict=False, assign=any(params[n].is_meta for n in mapped))
    report.loaded = sorted(mapped)
    return report


MODEL_VARIANTS = {"salmonn-13b": "13b", "salmonn-7b": "7b"}


def check_checkpoint(model_name: str, ckpt_path: str | Path) -> list[str]:
    """Problems of ``ckpt_path`` against the full-size structure of ``model_name`` (empty: it fits).

    The structure is built on the meta device, so no Whisper/BEATs/LLM weights are needed.
    """
    if model_name not in MODEL_VARIANTS:
        return [f"unknown model {model_name!r}: expected one of {', '.join(MODEL_VARIANTS)}"]
    from .model import SalmonnAdapter  # late: model.py imports this module

    try:
        state = read_checkpoint(ckpt_path)
    except FileNotFoundError:
        return ["file not found"]
    except (OSError, ValueError, RuntimeError) as err:  # unreadable file: one problem line, no traceback
        return [f"unreadable: {str(err).removeprefix(f'{ckpt_path}: ')}"]
    return compare(expected_keys(SalmonnAdapter.skeleton(MODEL_VARIANTS[model_name])), state)
