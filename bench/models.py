"""The models and batches the cost benchmarks run on: random weights of transformers' real classes.

``SIZES`` names the configurations: ``smoke`` (seconds, for CI), ``cpu`` (the development VM's
reference: an 8-layer x 8-head Qwen2 LLM, hidden 512, vocabularies of 32k and 156k, a 4-layer
256-wide Whisper-style encoder, batches of 4 clips of 4 s) and ``qwen2-audio-7b`` (the published
configuration shipped in the package, bf16 on a GPU, 30 s windows).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch

from ahamask_lightning.models import Qwen2AudioAdapter
from ahamask_lightning.models.qwen2_audio import full_size_config, tiny_config, tiny_processor

SIZES: dict[str, dict] = {
    "smoke": dict(layers=2, heads=4, kv_heads=2, hidden=64, intermediate=128, vocabs=[1000, 4000],
                  audio=dict(d_model=32, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=64),
                  window_s=4, clips=2, clip_s=2.0, target_tokens=8, new_tokens=4, reps=2,
                  scaling_batches=[1, 2], scaling_clip_s=[1.0, 2.0], dtype="float32"),
    "cpu": dict(layers=8, heads=8, kv_heads=8, hidden=512, intermediate=1536, vocabs=[32000, 156032],
                audio=dict(d_model=256, encoder_layers=4, encoder_attention_heads=4, encoder_ffn_dim=1024),
                window_s=4, clips=4, clip_s=4.0, target_tokens=41, new_tokens=32, reps=5,
                scaling_batches=[1, 2, 4, 8], scaling_clip_s=[1.0, 2.0, 4.0], dtype="float32"),
    # Memory of the 7B mask step on an 80 GB card (the review's estimate): weights 8.40 G params x 2 B
    # = 16.8 GB (one copy: scaling switches checkpointing on the same model); the plain step saves
    # about 4.23 MB per token (132 KB per decoder layer x 32), a 30 s clip is 831 tokens, so batch 12
    # = 9,972 tokens = 42 GB + 16.8 GB = 59 GB fits with room for the backward's transients, where
    # batch 16 (56 + 16.8 = 73 GB) would leave too little; a variant that still runs out of memory
    # is recorded "OOM" in its row. Checkpointed: about 0.4 GB per clip (the 32 layer inputs, 8 KB
    # a token each, one layer recomputed, the target logits), so about 160 clips fit: the largest-batch
    # search stops at 192. new_tokens: 32 (the decoding part's budget in bench/gpu.sh).
    "qwen2-audio-7b": dict(full_size=True, window_s=30, clips=4, clip_s=30.0, target_tokens=41, new_tokens=32,
                           reps=5, scaling_batches=[1, 4, 8, 12], scaling_clip_s=[10.0, 20.0, 30.0],
                           largest_limit=192, dtype="bfloat16"),
}

SENTENCE = "the quick brown fox jumps over the lazy dog"


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def qwen2_audio(size: dict, vocab: int | None, device: str, **adapter_args) -> Qwen2AudioAdapter:
    """A Qwen2-Audio adapter with random weights of the ``size`` configuration, built on ``device``."""
    torch.manual_seed(0)
    if size.get("full_size"):
        config = full_size_config()
    else:
        processor = tiny_processor(size["window_s"])
        config = tiny_config(processor, size["layers"], size["heads"], size["kv_heads"], size["hidden"],
                             chunk_seconds=size["window_s"], vocab_size=vocab, intermediate=size["intermediate"],
                             audio=size["audio"])
    dtype = getattr(torch, size["dtype"])
    with torch.device(device), default_dtype(dtype):
        adapter = Qwen2AudioAdapter(tiny=True, random_config=config.to_dict(), **adapter_args)
    return adapter.freeze()


def speech_like(seconds: float, seed: int, rate: int = 16000) -> np.ndarray:
    """A voiced-speech-like waveform: a gliding harmonic source under a syllable-rate envelope, plus noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    f0 = 110 + 40 * rng.random() + 20 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 8))
    envelope = 0.5 * (1 + np.sin(2 * np.pi * 4 * t + rng.random() * 6))
    return (0.2 * voice * envelope + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def target_text(tokenizer, tokens: int) -> str:
    """Words of ``SENTENCE`` repeated until the text is ``tokens - 1`` tokens long (the eos makes ``tokens``)."""
    words = SENTENCE.split()
    text, i = "", 0
    while len(tokenizer.encode(text, add_special_tokens=False)) < tokens - 1:
        text = f"{text} {words[i % len(words)]}".strip()
        i += 1
    return text


def to_device(batch: dict, device: str) -> dict:
    """The batch's tensors (and lists of tensors, e.g. cached audio features) on ``device``, as Lightning moves them."""
    def move(v):
        if isinstance(v, torch.Tensor):
            return v.to(device)
        return [move(x) for x in v] if isinstance(v, list) else v
    return {k: move(v) for k, v in batch.items()}


def training_batch(adapter, clips: int, clip_s: float, target_tokens: int, device: str, seed: int = 0) -> dict:
    """``clips`` speech-like clips with one instruction and targets of about ``target_tokens`` tokens."""
    tok = adapter.processor.tokenizer if hasattr(adapter, "processor") else adapter.tokenizer
    audios = [torch.from_numpy(speech_like(clip_s, seed + i)) for i in range(clips)]
    target = target_text(tok, target_tokens)
    batch = adapter.collate(audios, ["What is the gender of the speaker? Answer Male or Female."] * clips,
                            [target] * clips)
    return to_device(batch, device)


def batch_shape(batch: dict) -> dict:
    """Padded tokens, real tokens and target tokens of a training batch (what the step costs)."""
    labels = batch.get("labels")
    out = {"clips": len(batch.get("clip_keys", [])) or int(batch["gen_input_ids"].shape[0])}
    if labels is not None:
        out.update(padded_tokens=int(labels.numel()), tokens=int(batch["attention_mask"].sum()),
                   targets=int((labels != -100).sum()))
    return out
