"""SALMONN-13B mask training with random bf16 weights on a GPU: samples/s and peak memory.

The full-size structure (Whisper-large-v2 encoder, BEATs, window Q-Former, Vicuna-13B with LoRA on
q/v) is built directly on the device from the published sizes (``salmonn.configs.full_spec``);
token ids are drawn at random, so no tokenizer or checkpoint is read. ``variant="tiny"`` runs the
same code on the tiny random SALMONN (CPU smoke test of this path). :func:`checkpointing_trade`
measures activation checkpointing of its LLM on a CPU-sized random SALMONN.
"""
from __future__ import annotations

import torch

from ahamask_lightning.models.salmonn import SalmonnAdapter

from .models import default_dtype
from .timing import interleaved, peak_memory
from .training import MaskStep, compare_steps


def build(variant: str, device: str, gradient_checkpointing: bool = False) -> SalmonnAdapter:
    if variant == "tiny":
        torch.manual_seed(0)
        return SalmonnAdapter(tiny=True, gradient_checkpointing=gradient_checkpointing).to(device)
    with default_dtype(torch.bfloat16):  # random init on the GPU: seconds, not minutes
        return SalmonnAdapter.skeleton(variant, device, gradient_checkpointing=gradient_checkpointing)


def random_batch(adapter: SalmonnAdapter, clips: int, device: str, target_tokens: int = 41) -> dict:
    """30 s clips (SALMONN's window), prompt ids around the audio and ``target_tokens`` target ids."""
    g = torch.Generator().manual_seed(0)
    vocab = adapter.llm.config.vocab_size
    n_mels = adapter.speech_encoder.config.num_mel_bins
    frames = 2 * adapter.speech_encoder.config.max_source_positions
    seconds = frames // 100

    def ids(n: int) -> torch.Tensor:
        return torch.randint(3, vocab, (clips, n), generator=g)

    batch = {"input_features": torch.randn(clips, n_mels, frames, generator=g),
             "raw_wav": 0.1 * torch.randn(clips, 16000 * seconds, generator=g),
             "padding_mask": torch.zeros(clips, 16000 * seconds, dtype=torch.bool),
             "prefix_ids": ids(6), "prefix_lens": torch.full((clips,), 6),
             "suffix_ids": ids(12), "suffix_lens": torch.full((clips,), 12),
             "target_ids": ids(target_tokens), "target_lens": torch.full((clips,), target_tokens)}
    return {k: v.to(device) for k, v in batch.items()}


def salmonn_full_size(device: str, reps: int, variant: str = "13b", batches: tuple[int, ...] = (1, 4, 8),
                      checkpointing: bool = False) -> dict:
    """Samples/s and peak memory of the mask step at each batch size; ``checkpointing``: with
    activation checkpointing of the LLM (``python -m bench`` runs it as a second part, on a model
    built after the first is freed: one 13B model fits in memory at a time)."""
    adapter = build(variant, device, checkpointing)
    weights = (torch.cuda.memory_allocated() if device.startswith("cuda") else
               sum(p.numel() * p.element_size() for p in adapter.parameters()))
    out = {"variant": variant, "checkpointing": checkpointing, "weights_bytes": weights,
           "rows": _step_rows(MaskStep(adapter), batches, reps, device)}
    del adapter
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return out


def _step_rows(ms: MaskStep, batches: tuple[int, ...], reps: int, device: str) -> list[dict]:
    rows = []
    for b in batches:
        batch = random_batch(ms.adapter, b, device)
        try:
            times = interleaved({"mask_step": lambda: ms.step(batch), "forward": lambda: ms.forward(batch)},
                                reps, device)
            memory = peak_memory(lambda: ms.step(batch), device, ms.weights())  # CPU: the weights left out
        except torch.OutOfMemoryError as err:
            rows.append({"batch": b, "error": f"out of memory: {err}"[:300]})
            break
        rows.append({"batch": b, "times": times,
                     "samples_per_s": b / times["mask_step"]["median_s"],
                     "step_peak_bytes_above_weights": memory["peak_bytes"], "memory_kind": memory["kind"]})
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return rows


def checkpointing_trade(device: str, reps: int, batches: tuple[int, ...] = (4, 8), layers: int = 8, heads: int = 8,
                        hidden: int = 512) -> dict:
    """The mask step of a random SALMONN (its real encoders' geometry at small widths, 30 s clips; a
    ``layers`` x ``heads`` LLM of width ``hidden`` with the released LoRA on q/v) with and without
    activation checkpointing of the LLM: time, memory, and mask gradients compared."""
    steps = {}
    for name, checkpointing in (("plain", False), ("checkpointed", True)):
        torch.manual_seed(0)  # the same random weights for both
        adapter = SalmonnAdapter(tiny=True, tiny_layers=layers, tiny_heads=heads, tiny_hidden=hidden,
                                 gradient_checkpointing=checkpointing).to(device)
        steps[name] = MaskStep(adapter)
    steps["checkpointed"].mask.load_logits(steps["plain"].mask.logits.detach())
    rows = []
    for b in batches:
        batch = random_batch(steps["plain"].adapter, b, device)
        rows.append({"clips": b, "clip_s": 30.0, "batch": {"padded_tokens": b * _tokens(steps["plain"].adapter, batch)},
                     **compare_steps({name: (ms, None) for name, ms in steps.items()}, batch, reps, device)})
    return {"model": f"SALMONN, random weights, LLM {layers} x {heads} heads, hidden {hidden}", "rows": rows}


@torch.no_grad()
def _tokens(adapter: SalmonnAdapter, batch: dict) -> int:
    """LLM positions per sample: the speech tokens, the prompt around them and the targets."""
    speech = adapter.encode_audio(batch).shape[1]
    return int(speech + sum(batch[k].shape[1] for k in ("prefix_ids", "suffix_ids", "target_ids")))
