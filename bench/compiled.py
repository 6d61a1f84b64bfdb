"""Decoding with the LLM compiled (``torch.compile``), dense and pruned, against the eager static-cache step.

transformers compiles the decoding step itself when ``generate`` runs with a static KV cache on a
GPU-class device; on a CPU it does not (its switch for other devices is a private field), so here
the CPU variant compiles the LLM decoder of a copy of the model with the public
``nn.Module.compile``. Variants, all greedy with a static cache, per-step times from the gaps
between lm_head calls (``bench_serving.decoding_steps``), interleaved run by run:

- ``dense_default``: transformers' default (dynamic cache, eager), the reference;
- ``dense_static``: static cache, ``disable_compile=True`` (eager on every device);
- ``dense_compiled``: static cache, compiled (CPU: ``decoder.compile()``; CUDA: transformers' own);
- ``pruned_static`` / ``pruned_compiled``: the same with 20 % of the heads kept and the rest
  physically removed (``masking.prune``).

Checks: the compiled and eager models give the same tokens, and the pruned ones the gated model's.
The first ``generate`` of each compiled model (the compile, paid once per shape) is timed apart.

    python -m bench --parts compile --threads 1 --reps 10             # CPU, batch 1 and 8
    python -m bench --full-size qwen2-audio-7b --parts compile        # GPU, batch 1 (COMPILE=1 bash bench/gpu.sh)
"""
from __future__ import annotations

import contextlib
import copy
import functools
import statistics
import time

import torch

from ahamask_lightning.analysis.masks import random_mask
from ahamask_lightning.masking import HeadGate
from ahamask_lightning.masking.prune import pruned_copies, use_blocks

from .bench_serving import decoding_steps, greedy_tokens, speech_clips, weight_bound
from .models import qwen2_audio, to_device
from .timing import ratio

ACTIVE = 0.2


def _compiled(adapter, device: str):
    """A copy of ``adapter`` whose decoding step is compiled (CPU); on CUDA transformers compiles it itself."""
    if device.startswith("cuda"):
        return adapter
    twin = copy.deepcopy(adapter)
    twin.model.get_decoder().compile()
    return twin


def compiled_decoding(size: dict, device: str, reps: int, batch_sizes: tuple[int, ...] = (1, 8)) -> dict:
    n = size["new_tokens"]
    vocab = size.get("vocabs", [None])[0]
    adapter = qwen2_audio(size, vocab, device).eval()
    shape = (adapter.num_layers, adapter.num_heads)
    active = round(ACTIVE * shape[0] * shape[1])
    mask = random_mask(shape, active, seed=int(100 * ACTIVE)).to(device)
    with contextlib.ExitStack() as stack, torch.no_grad():
        pruned = copy.deepcopy(adapter)
        blocks = pruned_copies(pruned, mask)[0]
        stack.enter_context(use_blocks(pruned, blocks))
        models = {"dense": (adapter, _compiled(adapter, device)), "pruned": (pruned, _compiled(pruned, device))}
        eager = {"cache_implementation": "static", "disable_compile": True}
        compiled = {"cache_implementation": "static"}
        variants = {"dense_default": (adapter, {}), "dense_static": (models["dense"][0], eager),
                    "dense_compiled": (models["dense"][1], compiled), "pruned_static": (models["pruned"][0], eager),
                    "pruned_compiled": (models["pruned"][1], compiled)}
        gate = HeadGate(adapter.gated_attentions(), adapter.num_heads, adapter.head_dim)
        clips, source = speech_clips(max(batch_sizes), size["clip_s"])
        rows = []
        for b in batch_sizes:
            batch = to_device(adapter.collate(clips[:b], [None] * b), device)
            first_call, tokens = {}, {}
            for name, (model, generation) in variants.items():
                t0 = time.perf_counter()
                tokens[name] = greedy_tokens(model, batch, n, **generation)
                first_call[name] = time.perf_counter() - t0
            with gate.apply(mask):
                gated = greedy_tokens(adapter, batch, n)
            per_run: dict[str, list[float]] = {name: [] for name in variants}
            for r in range(1 + reps):  # round 0 warms up
                for name, (model, generation) in variants.items():
                    steps = decoding_steps(model, batch, n, device, **generation)
                    if r:
                        per_run[name].append(statistics.median(steps))
            ms = {name: 1000 * statistics.median(v) for name, v in per_run.items()}
            # bench.timing's ratio over the per-run median steps: the medians' ratio and the paired ratios
            timed = {name: {"median_s": statistics.median(v), "times": v} for name, v in per_run.items()}
            speedup = functools.partial(ratio, timed)
            rows.append({
                "batch": b, "ms_per_step": ms, "first_call_s": first_call,
                "speedup": {"compiled_vs_static": speedup("dense_static", "dense_compiled"),
                            "compiled_vs_default": speedup("dense_default", "dense_compiled"),
                            "pruned_vs_dense_static": speedup("dense_static", "pruned_static"),
                            "pruned_vs_dense_compiled": speedup("dense_compiled", "pruned_compiled"),
                            "pruned_compiled_vs_dense_default": speedup("dense_default", "pruned_compiled")},
                "identical_tokens": {
                    "compiled_vs_eager": bool(torch.equal(tokens["dense_static"], tokens["dense_compiled"])
                                              and torch.equal(tokens["pruned_static"], tokens["pruned_compiled"])),
                    "static_vs_default": bool(torch.equal(tokens["dense_static"], tokens["dense_default"])),
                    "pruned_vs_gated": bool(torch.equal(tokens["pruned_static"], gated))}})
        gate.remove()
    vocab = vocab or adapter.model.config.text_config.vocab_size
    return {"model": f"Qwen2AudioForConditionalGeneration, random weights, vocab {vocab}",
            "compile": "transformers (static cache)" if device.startswith("cuda") else "decoder.compile() (CPU)",
            "active_heads": active, "heads": shape[0] * shape[1], "new_tokens": n, "reps": reps,
            "audio": f"{source}, {size['clip_s']} s clips",
            "weight_bound": weight_bound(adapter, blocks), "rows": rows}
