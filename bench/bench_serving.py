"""Serving benchmarks: pruned decoding against the dense and gated model, and mixed-task batches.

* Pruned decoding: time per decoding step of the dense (ungated), gated and physically pruned
  model at 20 / 50 / 80 % active heads (random masks; 20 % only at full size), batch 1 and 8, with a check that the pruned
  model generates exactly the gated model's tokens. A step's time is a gap between two lm_head
  calls in one ``generate`` (see :func:`decoding_steps`), so the prompt pass and the audio encoder
  are not counted. Both Qwen2-Audio bench models also decode after 30 s clips in a 30 s window
  (about 750 audio tokens of context). ``weight_bound``: what the pruned linear weights allow
  (counted on the pruned copies themselves).
* Mixed tasks: 4 masks (random, half the heads each) over 2 clips = 8 samples: one ``generate``
  call whose samples carry their own mask, against the same samples run mask by mask (4 calls of
  2), and against 4 pruned models (one per mask); tokens compared sample by sample.

Models: a random Qwen2-Audio of transformers' real classes (``bench.models``: 8-layer x 8-head
LLM, hidden 512, vocabulary 32k, and 5,300: the published 7B's lm_head share) and the committed
TinyLALM default testbed (8 x 16 heads).
Variants are timed interleaved in one process, medians over rounds (``bench.timing``). Clips are
espeak-ng speech when espeak-ng and sox are installed, else ``bench.models.speech_like``.

    python -m bench.bench_serving [--smoke] [--device cpu] [--reps N] [--out serving.json]
    python -m bench --parts serving --threads 1   # the same, with machine and versions (BENCHMARKS.md)

Full size (``--full-size qwen2-audio-7b``, in bench/gpu.sh's 120 s decoding-and-serving slot):
16 new tokens, batch 1 and 8, the 20 % fraction only, ``reps`` timed rounds (gpu.sh: 2) after one
warm-up round. Per batch size 3 checking ``generate`` calls + 3 variants x 3 rounds = 12 calls;
mixed tasks 5 + 9 x 3 = 32 calls: 56 calls of 16 tokens = 896 decoding steps, about 25 s at
25 ms a step (HF eager 7B, bf16) or 36 s at 40 ms, plus a 7B build. With the decoding part
(2 batch sizes x 3 rounds x 3 x 32 tokens = 576 steps, 15-23 s, its own build) and the process
start, about 70-100 s. With ``--smoke`` the smoke size is used whatever ``full_size`` says.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch

from ahamask_lightning.analysis.masks import random_mask
from ahamask_lightning.masking import HeadGate
from ahamask_lightning.masking.prune import pruned_copies, use_blocks

from .models import SIZES, qwen2_audio, speech_like, to_device
from .timing import interleaved, sync

SENTENCES = ["the quick brown fox jumps over the lazy dog", "a small cat sat on the red mat near the door",
             "we will meet at the old bridge tomorrow morning", "she sells bright shells by the quiet sea shore"]
FRACTIONS = (0.2, 0.5, 0.8)
SETTINGS = {  # new tokens, timed rounds (``reps``, after one warm-up), batch sizes, mixed-task layout
    "smoke": dict(new_tokens=4, reps=2, batches=[1, 2], fractions=list(FRACTIONS), masks=2, mixed_batch=4, clip_s=2.0),
    "cpu": dict(new_tokens=32, reps=5, batches=[1, 8], fractions=list(FRACTIONS), masks=4, mixed_batch=8, clip_s=2.0),
    # sized for bench/gpu.sh's slot (module docstring)
    "full": dict(new_tokens=16, reps=2, batches=[1, 8], fractions=[0.2], masks=4, mixed_batch=8, clip_s=2.0),
}
PROPORTIONAL_VOCAB = 5300
LONG_CLIP_S = 30


def speech_clips(n: int, seconds: float, seed: int = 0) -> tuple[list[torch.Tensor], str]:
    """``n`` clips of speech (espeak-ng) or of the speech-like signal, cut or padded to ``seconds``."""
    length = int(seconds * 16000)
    if shutil.which("espeak-ng") and shutil.which("sox"):
        from ahamask_lightning.data.audio import AudioConfig, load_audio
        from data_modules.synth.speech import render_utterance

        out, cfg = [], AudioConfig(16000, seconds, seconds, "cut")
        with tempfile.TemporaryDirectory() as tmp:
            for i in range(n):
                path = f"{tmp}/c{i}.wav"
                render_utterance({"path": path, "text": SENTENCES[i % len(SENTENCES)], "voice": "en-us",
                                  "variant": ["m3", "f2", "m4", "f1"][i % 4], "rate": 160, "pitch": 50})
                out.append(load_audio([path], cfg))
        return out, "espeak-ng speech"
    return [torch.from_numpy(speech_like(seconds, seed + i))[:length] for i in range(n)], "speech-like signal"


def _log(text: str) -> None:
    print(f"bench_serving: {text}", file=sys.stderr, flush=True)


def _run_fn(adapter, batch: dict, n: int, gate: HeadGate, mask: torch.Tensor | None, blocks=None):
    def fn() -> None:
        with _variant(adapter, gate, mask, blocks):
            adapter.generate(batch, max_new_tokens=n, min_new_tokens=n, num_beams=1, do_sample=False)
    return fn


@contextlib.contextmanager
def _variant(adapter, gate: HeadGate, mask: torch.Tensor | None, blocks=None) -> Iterator[None]:
    """The dense model (mask None), the gated one, or the pruned copies swapped in (``blocks``)."""
    if blocks is not None:
        with use_blocks(adapter, blocks):
            yield
    else:
        with gate.apply(mask):
            yield


def _lm_head(adapter) -> torch.nn.Module:
    return [m for name, m in adapter.named_modules() if name.endswith("lm_head")][0]


def decoding_steps(adapter, batch: dict, n: int, device: str, **generation) -> list[float]:
    """Seconds of each decoding step of one greedy ``generate`` of ``n`` tokens.

    The lm_head runs once per forward pass, so the gaps between its calls are the decoding steps
    (a step = the layers + lm_head + generate's own work for one token); the prompt pass before
    the first call is not among them. One run gives ``n - 1`` step times, so a median per run is
    robust where the difference of two whole-run times (N tokens minus 1 token) is not.
    """
    stamps: list[float] = []

    def stamp(module, args, output) -> None:
        sync(device)
        stamps.append(time.perf_counter())

    handle = _lm_head(adapter).register_forward_hook(stamp)
    try:
        adapter.generate(batch, max_new_tokens=n, min_new_tokens=n, num_beams=1, do_sample=False, **generation)
    finally:
        handle.remove()
    return [b - a for a, b in zip(stamps, stamps[1:])]


def greedy_tokens(adapter, batch: dict, n: int, **generation) -> torch.Tensor:
    """The greedy token of every decoding step, read at the lm_head (the text may not decode: random vocab);
    ``generation``: more ``generate`` arguments (e.g. ``cache_implementation``)."""
    steps: list[torch.Tensor] = []
    handle = _lm_head(adapter).register_forward_hook(lambda m, a, out: steps.append(out[:, -1].argmax(-1).cpu()))
    try:
        adapter.generate(batch, max_new_tokens=n, min_new_tokens=n, num_beams=1, do_sample=False, **generation)
    finally:
        handle.remove()
    return torch.stack(steps, dim=1)


def fraction_mask(shape: tuple[int, int], frac: float) -> tuple[int, torch.Tensor]:
    """The random mask with ``frac`` of the heads on that the serving rows use (seed ``100 * frac``)."""
    active = round(frac * shape[0] * shape[1])
    return active, random_mask(shape, active, seed=int(100 * frac))


def pruned_decoding(adapter, clips: list[torch.Tensor], cfg: dict, device: str, gate: HeadGate,
                    progress: Callable[[list[dict]], None] | None = None) -> list[dict]:
    """Per-step decoding time of the dense, gated and pruned model, variants interleaved run by run;
    ``progress`` gets the rows so far after each batch size."""
    n, reps, shape = cfg["new_tokens"], cfg["reps"], (adapter.num_layers, adapter.num_heads)
    rows: list[dict] = []
    for batch_size in cfg["batches"]:
        audios = [clips[i % len(clips)] for i in range(batch_size)]
        batch = to_device(adapter.collate(audios, [None] * batch_size), device)
        variants: dict[str, tuple] = {"dense": (None, None)}
        checks = {}
        dense_tokens = greedy_tokens(adapter, batch, n)
        for frac in cfg.get("fractions", FRACTIONS):
            active, mask = fraction_mask(shape, frac)
            mask = mask.to(device)
            blocks, _ = pruned_copies(adapter, mask)
            variants[f"gated{frac}"] = (mask, None)
            variants[f"pruned{frac}"] = (None, blocks)
            with gate.apply(mask):
                gated = greedy_tokens(adapter, batch, n)
            with use_blocks(adapter, blocks):
                pruned = greedy_tokens(adapter, batch, n)
            checks[frac] = (active, torch.equal(gated, pruned), not torch.equal(gated, dense_tokens),
                            weight_bound(adapter, blocks))
        per_run: dict[str, list[float]] = {name: [] for name in variants}  # median step of each run
        for r in range(1 + reps):  # round 0 warms up
            for name, (mask, blocks) in variants.items():
                with _variant(adapter, gate, mask, blocks):
                    steps = decoding_steps(adapter, batch, n, device)
                if r:
                    per_run[name].append(statistics.median(steps))
        _log(f"pruned decoding, batch {batch_size}: done")
        dense = per_run["dense"]
        for frac, (active, identical, differs, bound) in checks.items():
            gated, pruned = per_run[f"gated{frac}"], per_run[f"pruned{frac}"]
            rows.append({
                "batch": batch_size, "active_fraction": frac, "active_heads": active,
                "dense_ms_per_step": 1000 * statistics.median(dense),
                "gated_ms_per_step": 1000 * statistics.median(gated),
                "pruned_ms_per_step": 1000 * statistics.median(pruned),
                "dense_tokens_per_s": batch_size / statistics.median(dense),
                "gated_tokens_per_s": batch_size / statistics.median(gated),
                "pruned_tokens_per_s": batch_size / statistics.median(pruned),
                "speedup_pruned_vs_dense": statistics.median(dense) / statistics.median(pruned),
                "speedup_pruned_vs_dense_paired": statistics.median(d / p for d, p in zip(dense, pruned)),
                "speedup_pruned_vs_dense_paired_range": [min(d / p for d, p in zip(dense, pruned)),
                                                         max(d / p for d, p in zip(dense, pruned))],
                "speedup_pruned_vs_gated": statistics.median(gated) / statistics.median(pruned),
                "speedup_pruned_vs_gated_paired": statistics.median(g / p for g, p in zip(gated, pruned)),
                "weight_bound_speedup": bound,
                "identical_tokens_pruned_vs_gated": identical, "mask_changes_tokens": differs,
            })
        variants = None  # the pruned copies of this batch size freed
        if progress:
            progress(rows)
    return rows


def _linear_weights(modules) -> int:
    return sum(m.weight.numel() for block in modules for m in block.modules() if isinstance(m, torch.nn.Linear))


def weight_bound(adapter, blocks: Sequence[torch.nn.Module]) -> float:
    """Dense / pruned multiply-adds per decoded token in the LLM's linear layers and lm_head, with
    ``blocks`` the pruned copies of the adapter's attention blocks (``pruned_copies``).

    The most that removing heads can save per token when the step is bound by its matmuls (or by
    reading their weights, at batch 1). Attention over the short KV cache and per-step overhead
    are left out. The pruned q/k/v/o are counted as pruning left them, so the heads it keeps
    beyond the mask's (one zeroed head in a layer with every head off, padding heads of a grouped
    KV group) count too; a measured speed-up under this is expected.
    """
    originals = adapter.gated_attentions()
    if len(blocks) != len(originals):
        raise ValueError(f"{len(blocks)} pruned blocks for {len(originals)} attention layers")
    attention_weights = {id(p) for block in originals for p in block.parameters()}
    audio_side = ("audio", "encoder", "projector", "whisper", "beats", "qformer")
    attention = other = 0
    for name, module in adapter.named_modules():
        if isinstance(module, torch.nn.Linear) and not any(word in name.lower() for word in audio_side):
            if id(module.weight) in attention_weights:
                attention += module.weight.numel()
            else:
                other += module.weight.numel()
    pruned = _linear_weights(blocks)
    return (attention + other) / (pruned + other)


def fraction_bound(adapter, frac: float) -> float:
    """:func:`weight_bound` for the serving rows' random mask at ``frac`` (works on the meta device too)."""
    _, mask = fraction_mask((adapter.num_layers, adapter.num_heads), frac)
    return weight_bound(adapter, pruned_copies(adapter, mask)[0])


def mixed_task(adapter, clips: list[torch.Tensor], cfg: dict, device: str, gate: HeadGate) -> dict:
    n, reps, shape = cfg["new_tokens"], cfg["reps"], (adapter.num_layers, adapter.num_heads)
    masks = [random_mask(shape, shape[0] * shape[1] // 2, seed=s).to(device) for s in range(cfg["masks"])]
    per_mask = cfg["mixed_batch"] // len(masks)
    audios = clips[:per_mask]
    # one batch: clip-major, each sample with its own mask
    mixed_audios = [a for a in audios for _ in masks]
    mixed_masks = torch.stack([m for _ in audios for m in masks])
    mixed_batch = to_device(adapter.collate(mixed_audios, [None] * len(mixed_audios)), device)
    alone_batch = to_device(adapter.collate(audios, [None] * len(audios)), device)
    blocks = [pruned_copies(adapter, m)[0] for m in masks]

    def one_batch() -> None:
        _run_fn(adapter, mixed_batch, n, gate, mixed_masks)()

    def by_mask() -> None:
        for m in masks:
            _run_fn(adapter, alone_batch, n, gate, m)()

    def pruned_by_mask() -> None:
        for b in blocks:
            _run_fn(adapter, alone_batch, n, gate, None, b)()

    with gate.apply(mixed_masks):
        together = greedy_tokens(adapter, mixed_batch, n)
    separate = []
    for m in masks:
        with gate.apply(m):
            separate.append(greedy_tokens(adapter, alone_batch, n))
    # reorder mask-by-mask rows (mask-major) to the mixed batch's clip-major order
    reordered = torch.stack([separate[j][i] for i in range(len(audios)) for j in range(len(masks))])
    res = interleaved({"one_batch": one_batch, "by_mask": by_mask, "pruned_by_mask": pruned_by_mask}, reps, device)
    samples = len(mixed_audios)
    tps = {k: samples * n / v["median_s"] for k, v in res.items()}
    paired = statistics.median(b / a for a, b in zip(res["one_batch"]["times"], res["by_mask"]["times"]))
    return {"masks": len(masks), "samples": samples, "new_tokens": n,
            "one_batch_tokens_per_s": tps["one_batch"], "by_mask_tokens_per_s": tps["by_mask"],
            "pruned_by_mask_tokens_per_s": tps["pruned_by_mask"],
            "speedup_one_batch_vs_by_mask": tps["one_batch"] / tps["by_mask"],
            "speedup_one_batch_vs_by_mask_paired": paired,
            "identical_tokens_one_batch_vs_by_mask": torch.equal(together, reordered),
            "seconds": {k: v["median_s"] for k, v in res.items()}}


def _tiny_lalm(device: str):
    from ahamask_lightning.serving import TINY_DEFAULT, build_adapter, model_spec

    repo = Path(__file__).resolve().parents[1]
    spec = model_spec("tiny", str(repo / TINY_DEFAULT))
    return build_adapter(spec).to(device), {"model": "TinyLALM", "checkpoint": TINY_DEFAULT}


def run(smoke: bool, full_size: str | None, device: str, reps: int | None = None,
        on_progress: Callable[[dict], None] | None = None) -> dict:
    """The serving figures as a JSON-able dict (see the module docstring); ``on_progress``: called with
    the result so far after each batch size and model (a caller that writes it to a file keeps what a
    stopped run measured). ``reps``: timed rounds per
    variant (default per size). ``smoke`` wins over ``full_size``: that model's code path at the
    smoke size (the CPU smoke of bench/gpu.sh)."""
    cfg = dict(SETTINGS["smoke" if smoke else "full" if full_size else "cpu"])
    if reps is not None:
        if reps < 1:
            raise ValueError(f"reps must be >= 1, got {reps}")
        cfg["reps"] = reps
    torch.manual_seed(0)
    models = []
    if full_size:
        size = SIZES["smoke" if smoke else full_size]
        vocab = size["vocabs"][0] if smoke else None
        models.append((full_size, qwen2_audio(size, vocab, device),
                       {"model": "Qwen2-Audio", "size": f"{full_size} at smoke size" if smoke else full_size}))
    else:
        size = SIZES["smoke" if smoke else "cpu"]
        vocab = size["vocabs"][0]
        models.append(("qwen2-audio-random", qwen2_audio(size, vocab, device),
                       {"model": "Qwen2AudioForConditionalGeneration, random weights", "layers": size["layers"],
                        "heads": size["heads"], "hidden": size["hidden"], "vocab": vocab}))
        if not smoke:
            # the same LLM with the 7B's lm_head share of the per-token weights (9 %, vocabulary
            # 5,300 at hidden 512): the 32k vocabulary above makes the lm_head 40 % of a step
            models.append(("qwen2-audio-random-v5k", qwen2_audio(size, PROPORTIONAL_VOCAB, device),
                           {"model": "Qwen2AudioForConditionalGeneration, random weights", "layers": size["layers"],
                            "heads": size["heads"], "hidden": size["hidden"], "vocab": PROPORTIONAL_VOCAB}))
            adapter, info = _tiny_lalm(device)
            models.append(("tiny-lalm-8x16", adapter, info))
            # 30 s clips in a 30 s window (the published models' window): about 750 audio tokens of
            # context, whose attention per decoded token also shrinks with the heads
            long_size = dict(size, window_s=LONG_CLIP_S)
            for name, long_vocab in (("qwen2-audio-random", vocab), ("qwen2-audio-random-v5k", PROPORTIONAL_VOCAB)):
                models.append((f"{name}-{LONG_CLIP_S}s", qwen2_audio(long_size, long_vocab, device),
                               {"model": "Qwen2AudioForConditionalGeneration, random weights",
                                "layers": size["layers"], "heads": size["heads"], "hidden": size["hidden"],
                                "vocab": long_vocab, "clip_s": LONG_CLIP_S}))
    published = qwen2_audio(SIZES["qwen2-audio-7b"], None, "meta")
    clips, source = speech_clips(max(cfg["batches"] + [cfg["mixed_batch"]]), cfg["clip_s"])
    long_clips = speech_clips(max(cfg["batches"]), LONG_CLIP_S)[0] if not smoke and not full_size else []
    out = {"device": device, "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
           "smoke": smoke, "audio": f"{source}, {cfg['clip_s']} s clips (unless a model says clip_s)",
           "settings": cfg, "models": {},
           # what the published model's proportions allow at the rows' masks, for comparison (on the meta device)
           "weight_bound_qwen2_audio_7b": {frac: fraction_bound(published, frac) for frac in FRACTIONS}}
    published = None

    def save() -> None:
        if on_progress:
            on_progress(out)

    for name, adapter, info in models:
        adapter.eval()
        gate = HeadGate(adapter.gated_attentions(), adapter.num_heads, adapter.head_dim)
        _log(f"{name}: {adapter.num_layers} x {adapter.num_heads} heads")
        out["models"][name] = dict(info)
        long = "clip_s" in info
        entry = out["models"][name]

        def rows_so_far(rows: list[dict], entry: dict = entry) -> None:
            entry["pruned_decoding"] = rows
            save()

        with torch.no_grad():
            entry["pruned_decoding"] = pruned_decoding(adapter, long_clips if long else clips, cfg, device, gate,
                                                       rows_so_far)
            save()
            if not long:  # mixed tasks: the short clips only
                entry["mixed_task"] = mixed_task(adapter, clips, cfg, device, gate)
                save()
        gate.remove()
        _log(f"{name}: done")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_serving")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--full-size", default=None, help="a bench.models SIZES name (GPU), e.g. qwen2-audio-7b")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--reps", type=int, default=None, help="timed rounds per variant (default: per size)")
    parser.add_argument("--out", default=None, help="write the JSON here too")
    args = parser.parse_args(argv)
    if args.reps is not None and args.reps < 1:
        parser.error(f"--reps must be >= 1, got {args.reps}")
    if args.full_size is not None and args.full_size not in SIZES:
        parser.error(f"--full-size: unknown {args.full_size}; expected one of {', '.join(SIZES)}")
    def write(result: dict) -> None:  # after each row too: a stopped run keeps what it measured
        if args.out:
            Path(args.out).write_text(json.dumps(result, indent=1) + "\n")

    result = run(args.smoke, args.full_size, args.device, reps=args.reps, on_progress=write)
    write(result)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
