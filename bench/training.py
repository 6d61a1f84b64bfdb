"""The mask-training step: target-only logits vs full logits vs PEFT LoRA, the feature cache, scaling,
activation checkpointing and model FLOP utilisation.

A step here is what ``AHAMaskModule.training_step`` + backward cost: a straight-through mask sample,
the gated adapter loss, backward to the mask logits (the frozen weights get no gradient). The
full-logits variant computes the loss the way the adapters did before (every position projected
onto the vocabulary, then ``causal_lm_loss``); the LoRA variant is peft's LoRA r 8 on the LLM's
q_proj/v_proj with its usual full-logits loss and no gate, backward to the LoRA weights.
"""
from __future__ import annotations

import contextlib
import copy
import gc
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from ahamask_lightning.masking import HeadGate, HeadMask
from ahamask_lightning.models.base import causal_lm_loss

from .models import batch_shape, qwen2_audio, training_batch
from .timing import interleaved, matmul_peak, nominal_peak, peak_memory, ratio

Progress = Callable[[dict], None]


def _without_cache_keys(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k not in ("clip_keys", "cached_audio")}


class MaskStep:
    """One mask-training step on ``adapter``; ``full_logits`` uses the old loss path."""

    def __init__(self, adapter) -> None:
        self.adapter = adapter
        self.gate = HeadGate(adapter.gated_attentions(), adapter.num_heads, adapter.head_dim)
        self.mask = HeadMask(adapter.num_layers, adapter.num_heads, "logistic", 4.0, 0.02, 4.0).to(
            next(adapter.parameters()).device)

    def full_logits_loss(self, batch: dict) -> torch.Tensor:
        a = self.adapter
        out = a.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                      input_features=batch["input_features"].to(a.model.dtype),
                      feature_attention_mask=batch["feature_attention_mask"], use_cache=False)
        return causal_lm_loss(out.logits, batch["labels"])

    def step(self, batch: dict, full_logits: bool = False) -> float:
        self.mask.logits.grad = None
        m = self.mask()
        # backward inside the gate: checkpointed layers are recomputed there (AHAMaskModule does the same)
        with self.gate.apply(m):
            loss = self.full_logits_loss(batch) if full_logits else self.adapter.loss(batch)
            loss.backward()
        return float(loss.detach())

    @torch.no_grad()
    def forward(self, batch: dict) -> float:
        with self.gate.apply(self.mask.eval_gate()):
            return float(self.adapter.loss(batch))

    def weights(self) -> tuple[torch.nn.Module, ...]:
        """The modules whose parameters the step reads (left out of the CPU memory proxy)."""
        return (self.adapter, self.mask)


@contextlib.contextmanager
def checkpointing(adapter, on: bool | None) -> Iterator[None]:
    """The adapter's activation checkpointing switched ``on``/off for a while (None: as built).

    An adapter built with ``gradient_checkpointing=True`` checkpoints its LLM layers only while
    its ``gradient_checkpointing`` flag is set (``llm_checkpointing_active``), so one model serves
    both variants: no second copy of the weights. transformers' ``activation_checkpointing_enable``
    also makes the LLM's input embeddings require grad (``enable_input_require_grads``), which a
    plain model does not do (autograd would then save and compute more for the first layer), so
    switching checkpointing off here also takes that hook off for the while."""
    if on is None:
        yield
        return
    before = adapter.gradient_checkpointing
    decoder = adapter.model.get_decoder() if before and not on else None
    adapter.gradient_checkpointing = on
    if decoder is not None:
        decoder.disable_input_require_grads()
    try:
        yield
    finally:
        adapter.gradient_checkpointing = before
        if decoder is not None:
            decoder.enable_input_require_grads()


def free(device: str) -> None:
    """Drop what a failed (out-of-memory) step left behind and give the cached blocks back."""
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def lora_step_fn(adapter, batch: dict):
    """peft LoRA r 8 on the LLM's q_proj/v_proj of a copy of the model; the step's closure."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(copy.deepcopy(adapter.model),
                           LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                      target_modules=r".*language_model.*\.(q_proj|v_proj)"))
    params = [p for p in model.parameters() if p.requires_grad]

    def step() -> float:
        for p in params:
            p.grad = None
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    input_features=batch["input_features"].to(adapter.model.dtype),
                    feature_attention_mask=batch["feature_attention_mask"], use_cache=False)
        loss = causal_lm_loss(out.logits, batch["labels"])
        loss.backward()
        return float(loss.detach())

    return step, sum(p.numel() for p in params), model


def model_flops(adapter, shape: dict, logits_positions: int) -> dict:
    """Model FLOPs of a mask step: 4 P T for the LLM (forward + activation backward) + 2 P_enc T_enc for the encoder.

    P: the decoder layers' parameters (the embedding table is a lookup); the lm_head is counted at
    the positions where it runs (``logits_positions``), also 4 x; T: the padded tokens the step runs
    on; T_enc: encoder positions (the padded window of every clip). Attention score FLOPs left out.
    """
    base = adapter.model.model
    p_llm = sum(p.numel() for layer in base.language_model.layers for p in layer.parameters())
    p_head = adapter.model.get_output_embeddings().weight.numel()
    p_enc = sum(p.numel() for p in base.audio_tower.parameters()) + sum(
        p.numel() for p in base.multi_modal_projector.parameters())
    t_enc = shape["clips"] * base.audio_tower.config.max_source_positions
    flops = 4 * p_llm * shape["padded_tokens"] + 4 * p_head * logits_positions + 2 * p_enc * t_enc
    return {"flops": flops, "p_llm": p_llm, "p_head": p_head, "p_enc": p_enc, "t_enc": t_enc}


def step_comparison(size: dict, device: str, reps: int) -> dict:
    """Target-only vs full-logits mask steps, forward-only and the LoRA step, at each vocabulary size."""
    out: dict = {"vocabs": {}}
    dtype = getattr(torch, size["dtype"])
    n = 8192 if device.startswith("cuda") else 1024
    out["matmul_peak_flops"] = matmul_peak(device, dtype, n)
    nominal = nominal_peak(torch.cuda.get_device_name(device), dtype) if device.startswith("cuda") else None
    if nominal:  # DESIGN §7's MFU: against the data-sheet dense peak of the GPU at this dtype
        out["nominal_peak_flops"] = nominal
        out["nominal_peak_of"] = f"{torch.cuda.get_device_name(device)}, {size['dtype']} dense"
    for i, vocab in enumerate(size.get("vocabs", [None])):
        adapter = qwen2_audio(size, vocab, device)
        batch = _without_cache_keys(training_batch(adapter, size["clips"], size["clip_s"], size["target_tokens"], device))
        shape = batch_shape(batch)
        ms = MaskStep(adapter)
        with torch.no_grad():
            same = (float(ms.adapter.loss(batch)), float(ms.full_logits_loss(batch)))
        variants = {"mask_step": lambda: ms.step(batch), "mask_step_full_logits": lambda: ms.step(batch, True),
                    "forward": lambda: ms.forward(batch)}
        lora_params = None
        weights = {name: ms.weights() for name in variants}
        if i == 0:  # LoRA once, at the first (smaller) vocabulary
            variants["lora_step"], lora_params, lora_model = lora_step_fn(adapter, batch)
            weights["lora_step"] = (lora_model,)
        times = interleaved(variants, reps, device)
        memory = {name: peak_memory(fn, device, weights[name]) for name, fn in variants.items()}
        key = str(adapter.model.config.text_config.vocab_size)
        out["vocabs"][key] = {
            "batch": shape, "loss_target_only": same[0], "loss_full_logits": same[1], "times": times,
            "memory": memory, "lora_trainable_params": lora_params,
            "ratios": {"target_vs_full": ratio(times, "mask_step", "mask_step_full_logits"),
                       "mask_vs_forward": ratio(times, "mask_step", "forward"),
                       "full_vs_forward": ratio(times, "mask_step_full_logits", "forward"),
                       **({"mask_vs_lora": ratio(times, "mask_step", "lora_step")} if lora_params else {})},
            "flops": model_flops(adapter, shape, shape["targets"]),
        }
        f = out["vocabs"][key]["flops"]["flops"]
        out["vocabs"][key]["achieved_flops"] = f / times["mask_step"]["median_s"]
        out["vocabs"][key]["mfu_vs_matmul"] = f / times["mask_step"]["median_s"] / out["matmul_peak_flops"]
        if nominal:
            out["vocabs"][key]["mfu_vs_nominal"] = f / times["mask_step"]["median_s"] / nominal
        adapter = ms = variants = weights = lora_model = None  # the model freed before the next vocabulary's is built
    return out


def feature_cache_speedup(size: dict, device: str, reps: int) -> dict:
    """An epoch after the first: the step with the cache warm vs without cache; the encoder's share.
    The entries are read by the collate (in the loader workers, ``cache_read_only``), not the step."""
    with tempfile.TemporaryDirectory() as cache_dir:
        adapter = qwen2_audio(size, size.get("vocabs", [None])[0], device, feature_cache=cache_dir)
        first = training_batch(adapter, size["clips"], size["clip_s"], size["target_tokens"], device)
        plain = _without_cache_keys(first)
        ms = MaskStep(adapter)
        ms.step(first)  # the first epoch: writes the entries
        batch = training_batch(adapter, size["clips"], size["clip_s"], size["target_tokens"], device)
        assert all(f is not None for f in batch["cached_audio"]), "the second epoch's collate found no entries"

        @torch.no_grad()
        def encoder() -> None:
            adapter.encode_audio(plain["input_features"], plain["feature_attention_mask"])

        def cache_read() -> None:
            adapter.feature_cache.lookup(batch["clip_keys"])

        times = interleaved({"step_no_cache": lambda: ms.step(plain), "step_cached": lambda: ms.step(batch),
                             "encoder_only": encoder, "cache_read_only": cache_read}, reps, device)
        speedup = ratio(times, "step_no_cache", "step_cached")
        share = ratio(times, "encoder_only", "step_no_cache")
        return {"model": "qwen2-audio (bench size)", "batch": batch_shape(plain), "times": times, "read_in": "collate",
                "speedup": speedup, "encoder_share": share, "hits": adapter.feature_cache.hits}


def tiny_lalm_cache_speedup(checkpoint: str | None, clips: int, reps: int) -> dict:
    """The same on TinyLALM (the testbed checkpoint when present, else a random one), batch of ``clips``."""

    from ahamask_lightning.models.tiny_lalm import TinyLALM, random_tiny_lalm

    from .models import speech_like

    with tempfile.TemporaryDirectory() as cache_dir:
        if checkpoint and Path(checkpoint).is_dir():
            adapter = TinyLALM(checkpoint=checkpoint, feature_cache=cache_dir).freeze()
        else:
            ref = random_tiny_lalm(["male female"], layers=2, heads=4, hidden=32)
            adapter = TinyLALM(checkpoint=None, config=ref.config, tokenizer=ref.tokenizer,
                               feature_cache=cache_dir).freeze()
            checkpoint = "random"
        audios = [torch.from_numpy(speech_like(4.0, i)) for i in range(clips)]
        targets = ["male" if i % 2 else "female" for i in range(clips)]
        plain = _without_cache_keys(adapter.collate(audios, [None] * clips, targets))
        ms = MaskStep(adapter)
        ms.step(adapter.collate(audios, [None] * clips, targets))  # the first epoch: writes the entries
        batch = adapter.collate(audios, [None] * clips, targets)  # the next: the collate reads them
        assert all(f is not None for f in batch["cached_audio"]), "the second epoch's collate found no entries"

        @torch.no_grad()
        def encoder() -> None:
            adapter.audio_encoder(plain["features"], plain["feature_lens"])

        def cache_read() -> None:
            adapter.feature_cache.lookup(batch["clip_keys"])

        times = interleaved({"step_no_cache": lambda: ms.step(plain), "step_cached": lambda: ms.step(batch),
                             "encoder_only": encoder, "cache_read_only": cache_read}, reps, "cpu")
        return {"model": f"TinyLALM ({Path(checkpoint).name})", "clips": clips, "times": times, "read_in": "collate",
                "speedup": ratio(times, "step_no_cache", "step_cached"),
                "encoder_share": ratio(times, "encoder_only", "step_no_cache")}


def scaling(size: dict, device: str, reps: int, progress: Progress | None = None) -> dict:
    """Step time and memory against batch size (at the reference clip length) and clip length
    (at the reference batch), then activation checkpointing on/off at the reference shape and the
    largest batch. One model, built with checkpointing and switched off for the plain step
    (:func:`checkpointing`). A variant that runs out of GPU memory is recorded as ``"OOM"`` in its
    row and the rows go on; ``progress`` gets the part so far after each row."""
    vocab = size.get("vocabs", [None])[0]
    rows: list[dict] = []
    adapter = qwen2_audio(size, vocab, device, gradient_checkpointing=True)
    ms = MaskStep(adapter)
    shapes = [(b, size["clip_s"]) for b in size["scaling_batches"]]
    shapes += [(size["clips"], s) for s in size["scaling_clip_s"] if s != size["clip_s"]]
    for clips, seconds in shapes:
        batch = _without_cache_keys(training_batch(adapter, clips, seconds, size["target_tokens"], device))
        both = (clips, seconds) == (size["clips"], size["clip_s"]) or clips == max(size["scaling_batches"])
        steps = {"plain": (ms, False), **({"checkpointed": (ms, True)} if both else {})}
        try:
            measured = compare_steps(steps, batch, reps, device)
        except torch.OutOfMemoryError:  # out of memory after the first step fitted: the row says so
            measured = {"times": {}, "memory": {name: "OOM" for name in steps}, "checkpoint_grad_max_abs_diff": None,
                        "oom": list(steps)}
        rows.append({"clips": clips, "clip_s": seconds, "batch": batch_shape(batch), **measured})
        batch = measured = None
        free(device)
        if progress:
            progress({"rows": rows})
    return {"rows": rows, "one_model": True}


def compare_steps(steps: dict[str, tuple[MaskStep, bool | None]], batch: dict, reps: int, device: str) -> dict:
    """Times and memory of each ``steps`` variant (``plain``, optionally ``checkpointed``: a mask step
    and the checkpointing to switch to, None for as built) on ``batch``, interleaved, and the largest
    difference of the checkpointed step's mask gradients from the plain's.

    Each variant first runs once alone: one that runs out of GPU memory is recorded in ``oom`` (and
    as ``"OOM"`` in ``memory``) and left out of the timing, so a batch too large for the plain step
    still gives the checkpointed one's figures."""
    def run(name: str) -> float:
        ms, on = steps[name]
        with checkpointing(ms.adapter, on):
            return ms.step(batch)

    oom = []
    for name in list(steps):
        try:
            run(name)
        except torch.OutOfMemoryError:  # only out-of-memory is expected; anything else goes on up
            oom.append(name)
        if name in oom:
            free(device)
    variants = {name: (lambda name=name: run(name)) for name in steps if name not in oom}
    times = interleaved(variants, reps, device) if variants else {}
    memory: dict = {name: peak_memory(variants[name], device, ms.weights()) if name in variants else "OOM"
                    for name, (ms, _) in steps.items()}
    grads = {}
    for name in variants:  # the same mask sample for both: gradients must agree
        torch.manual_seed(3)
        variants[name]()
        grads[name] = steps[name][0].mask.logits.grad.clone()
    agree = float((grads["checkpointed"] - grads["plain"]).abs().max()) if len(grads) == 2 else None
    return {"times": times, "memory": memory, "checkpoint_grad_max_abs_diff": agree,
            **({"oom": oom} if oom else {})}


def search_largest(fits: Callable[[int], bool], limit: int, progress: Callable[[int, int | None], None] | None = None,
                   resolution: float = 1 / 4) -> tuple[int, int | None]:
    """The largest ``n <= limit`` with ``fits(n)`` (fits taken to be monotone): doubling from 1, then
    bisection until the bracket is within ``resolution`` of its lower end (or 1). Returns ``(lo, hi)``:
    ``lo`` fits (0: not even 1), ``hi`` the smallest size tried that did not (None: ``limit`` fits).
    ``progress(lo, hi)`` after every probe, so a search cut short still says what it found."""
    lo, hi = 0, None
    n = 1
    while True:
        if fits(n):
            lo = n
        else:
            hi = n
        if progress:
            progress(lo, hi)
        if hi is not None or n >= limit:
            break
        n = min(2 * n, limit)
    while hi is not None and hi - lo > max(1, int(lo * resolution)):
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
        if progress:
            progress(lo, hi)
    return lo, hi


def largest_batch(size: dict, device: str, limit: int | None = None, progress: Progress | None = None) -> dict:
    """CUDA only: the largest batch (doubling, then bisection to within 1/4) whose mask step fits in memory,
    plain and with activation checkpointing, on one model (:func:`checkpointing`). ``progress`` gets
    the rows so far after every probe (a row with ``"done": False`` is a search still going)."""
    adapter = qwen2_audio(size, None, device, gradient_checkpointing=True)
    ms = MaskStep(adapter)
    limit = limit or size.get("largest_limit", 256)
    # every clip of a size is the same length with the same prompt and target: one collated batch
    # repeated along the batch gives any size without collating hundreds of clips
    seed_batch = _without_cache_keys(training_batch(adapter, 8, size["clip_s"], size["target_tokens"], "cpu"))
    rows: list[dict] = []

    def row(on: bool, lo: int, hi: int | None, done: bool) -> dict:
        return {"checkpointing": on, "largest_batch": lo, "first_too_large": hi, "done": done,
                "clip_s": size["clip_s"], "memory_gb": torch.cuda.get_device_properties(device).total_memory / 1e9}

    for on in (False, True):
        def fits(clips: int, on: bool = on) -> bool:
            ok = False
            try:
                batch = repeat_batch(seed_batch, clips, device)
                with checkpointing(adapter, on):
                    ms.step(batch)
                ok = True
            except torch.OutOfMemoryError:  # only out-of-memory means "does not fit"
                pass
            batch = None
            free(device)
            return ok

        def report(lo: int, hi: int | None, on: bool = on) -> None:
            if progress:
                progress({"rows": [*rows, row(on, lo, hi, False)], "limit": limit})

        lo, hi = search_largest(fits, limit, report)
        rows.append(row(on, lo, hi, True))
        if progress:
            progress({"rows": rows, "limit": limit})
    return {"rows": rows, "limit": limit}


def repeat_batch(batch: dict, n: int, device: str) -> dict:
    """``batch`` (a collated training batch of equal-length clips) repeated or cut to ``n`` samples."""
    k = int(batch["input_ids"].shape[0])
    index = torch.arange(n) % k

    def take(v):
        if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == k:
            return v[index].to(device)
        if isinstance(v, list) and len(v) == k:
            return [v[i] for i in index.tolist()]
        return v.to(device) if isinstance(v, torch.Tensor) else v
    return {key: take(v) for key, v in batch.items()}
