"""Decoding speed of the adapters' generate against transformers' defaults, with a mask applied.

Variants, greedy with a fixed number of new tokens (``min_new_tokens`` = ``max_new_tokens``):
- ``default``: ``model.generate`` as transformers runs it (dynamic KV cache; for Qwen2-Audio,
  whose ``forward`` has no ``logits_to_keep``, the prompt pass projects every prompt position);
- ``adapter``: ``adapter.generate`` (the prompt pass projects its last position only);
- ``static_cache``: ``adapter.generate(cache_implementation="static")``; transformers compiles the
  decoding step with ``torch.compile`` itself on CUDA (its auto-compile needs a compilable cache and
  a GPU-class device); on a CPU the static cache runs uncompiled. ``compile_static=False`` passes
  ``disable_compile=True`` (eager on every device): the full-size run does, since each batch shape
  compiles for about a minute at 7B (``--parts compile`` measures the compiled step).
The prompt pass alone (one new token) is timed for ``default`` and ``adapter`` too.
"""
from __future__ import annotations

import torch

from ahamask_lightning.masking import HeadGate

from .models import qwen2_audio, speech_like, to_device
from .timing import interleaved, ratio


def decoding(size: dict, device: str, reps: int, batch_sizes: tuple[int, ...] = (1, 4),
             compile_static: bool = True, progress=None) -> dict:
    """The variants above at each batch size; ``progress`` gets the part so far after each batch size."""
    adapter = qwen2_audio(size, size.get("vocabs", [None])[0], device)
    gate = HeadGate(adapter.gated_attentions(), adapter.num_heads, adapter.head_dim)
    g = torch.Generator().manual_seed(0)
    mask = (torch.rand(adapter.num_layers, adapter.num_heads, generator=g) > 0.3).float().to(device)
    n = size["new_tokens"]
    compiles = compile_static and device.startswith("cuda")
    static = {"cache_implementation": "static", **({} if compile_static else {"disable_compile": True})}
    out: dict = {"new_tokens": n, "static_cache_compiled": compiles, "rows": []}
    for b in batch_sizes:
        audios = [torch.from_numpy(speech_like(size["clip_s"], i)) for i in range(b)]
        batch = to_device(adapter.collate(audios, ["What is the gender of the speaker?"] * b), device)
        fixed = {"max_new_tokens": n, "min_new_tokens": n, "do_sample": False}

        def default(tokens: int = n) -> None:
            with torch.no_grad(), gate.apply(mask):
                adapter.model.generate(input_ids=batch["gen_input_ids"], attention_mask=batch["gen_attention_mask"],
                                       input_features=batch["input_features"].to(adapter.model.dtype),
                                       feature_attention_mask=batch["feature_attention_mask"],
                                       pad_token_id=adapter.pad_id, eos_token_id=adapter.eos_id,
                                       max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)

        def fast(**extra) -> None:
            with gate.apply(mask):
                adapter.generate(batch, **{**fixed, **extra})

        def prefill() -> None:
            with gate.apply(mask):
                adapter.generate(batch, max_new_tokens=1, min_new_tokens=1, do_sample=False)

        variants = {"default": default, "adapter": fast,
                    "static_cache": lambda: fast(**static),
                    "prefill_default": lambda: default(1), "prefill_adapter": prefill}
        # two warm-up rounds where the static-cache path compiles in its first calls (CUDA)
        times = interleaved(variants, reps, device, warmup=2 if compiles else 1)
        tps = {k: b * n / times[k]["median_s"] for k in ("default", "adapter", "static_cache")}
        out["rows"].append({"batch": b, "prompt_tokens": int(batch["gen_input_ids"].shape[1]), "times": times,
                            "tokens_per_s": tps,
                            "speedup": {"adapter_vs_default": ratio(times, "default", "adapter"),
                                        "static_vs_default": ratio(times, "default", "static_cache"),
                                        "prefill_adapter_vs_default": ratio(times, "prefill_default",
                                                                            "prefill_adapter")}})
        if progress:
            progress(out)
    return out
